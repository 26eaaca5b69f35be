"""Read the reference's `.pkl` files without running code: only numpy arrays and plain data pass.

A pickle can call any importable function while it loads. The reference ships its word
vectors and co-occurrence statistics as pickles, so we admit exactly the globals numpy needs
to rebuild arrays and refuse everything else before it runs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from msrn.errors import MSRNError

# (module, name) pairs a numpy-data pickle may reference; nothing here has side effects.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def load_numpy_pickle(path: str | Path) -> Any:
    """Unpickle a file that may hold only numpy arrays, numbers, strings, lists, tuples and dicts."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MSRNError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise MSRNError(f"{path} is not a plain numpy-data pickle ({e}); refusing to load it") from None
    except Exception as e:  # truncated or garbled streams raise many kinds of errors
        raise MSRNError(f"{path} is not a readable pickle: {type(e).__name__}: {e}") from None
