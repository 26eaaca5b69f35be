"""Label vectors: the word embeddings that the label graph starts from (docs/design.md §2).

Sources: a GloVe or fastText text file (multi-word names averaged), the reference's
pickles, or an array. Words missing from a text file are an error that names them: a
silently zeroed vector would quietly disconnect a label from the graph.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from msrn.errors import MSRNError
from msrn.safe_pickle import load_numpy_pickle

VectorSource = str | Path | np.ndarray | list


def label_words(name: str, name_map: dict[str, str] | None = None) -> list[str]:
    """Split a label name into the words looked up in the vector file (after any mapping)."""
    name = (name_map or {}).get(name, name)
    return [w for w in re.split(r"[\s_\-/]+", name.strip().lower()) if w]


def read_name_map(path: str | Path) -> dict[str, str]:
    """Read `label<TAB or =>replacement words` lines, e.g. `diningtable=dining table`."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = re.split(r"\t|=", line, maxsplit=1)
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise MSRNError(f"{path}:{lineno}: expected 'label=words', got {line!r}")
        out[parts[0].strip()] = parts[1].strip()
    return out


def read_text_vectors(path: str | Path, labels: list[str], name_map: dict[str, str] | None = None) -> np.ndarray:
    """Average the GloVe/fastText vectors of each label's words; streams the file once."""
    path = Path(path)
    wanted = {w for lab in labels for w in label_words(lab, name_map)}
    found: dict[str, np.ndarray] = {}
    dim = None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                word, _, rest = line.rstrip("\n").partition(" ")
                if lineno == 1 and re.fullmatch(r"\d+ \d+", line.strip()):
                    continue  # fastText .vec header: "count dim"
                if word.lower() not in wanted or word.lower() in found:
                    continue
                try:
                    vec = np.asarray(rest.split(), dtype=np.float32)
                except ValueError:
                    raise MSRNError(f"{path}:{lineno}: expected a word followed by numbers") from None
                if dim is None:
                    dim = vec.shape[0]
                elif vec.shape[0] != dim:
                    raise MSRNError(f"{path}:{lineno}: vector has {vec.shape[0]} values, expected {dim}")
                found[word.lower()] = vec
                if len(found) == len(wanted):
                    break
    except OSError as e:
        raise MSRNError(f"cannot read word vectors {path}: {e.strerror or e}") from None
    missing = {lab: [w for w in label_words(lab, name_map) if w not in found] for lab in labels}
    missing = {lab: ws for lab, ws in missing.items() if ws or not label_words(lab, name_map)}
    if missing:
        shown = ", ".join(f"{lab} ({' '.join(ws) or 'no words'})" for lab, ws in list(missing.items())[:10])
        raise MSRNError(
            f"{path}: no vector for {len(missing)} label(s): {shown}; give a name-mapping file "
            "(label=words) or another vector source"
        )
    return np.stack([np.mean([found[w] for w in label_words(lab, name_map)], axis=0) for lab in labels])


def load_word_vectors(source: VectorSource, labels: list[str], name_map: dict[str, str] | None = None) -> np.ndarray:
    """Label vectors (C x dim, float32) from an array, a reference `.pkl`, or a text vector file."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise MSRNError(f"word-vector file {path} does not exist")
        if path.suffix == ".pkl":
            arr = load_numpy_pickle(path)
        elif path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            arr = read_text_vectors(path, labels, name_map)
        where = str(path)
    else:
        arr, where = source, "word vectors"
    try:
        arr = np.asarray(arr, dtype=np.float32)
    except (TypeError, ValueError):
        raise MSRNError(f"{where}: expected a C x dim array of numbers") from None
    if arr.ndim != 2 or arr.shape[0] != len(labels):
        raise MSRNError(f"{where}: shape {arr.shape}, expected ({len(labels)}, dim) for {len(labels)} labels")
    if not np.isfinite(arr).all():
        raise MSRNError(f"{where}: holds non-finite values")
    return arr
