"""The restricted unpickler: the reference's numpy pickles load, anything that could run code does not."""

from __future__ import annotations

import builtins
import collections
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from msrn.errors import MSRNError
from msrn.safe_pickle import load_numpy_pickle

# file -> (python type, shape, dtype) as the reference-data README describes them
WORD_VECTORS = {
    "voc": (np.ndarray, (20, 300), np.float32),
    "coco": (np.ndarray, (80, 300), np.float32),
    "nuswide": (list, (81, 300), np.float64),
    "apparel": (list, (11, 300), np.float64),
}
ADJ = {"voc": (20, np.int64), "coco": (80, np.int64), "nuswide": (81, np.float64), "apparel": (11, np.float64)}


@pytest.mark.parametrize("ds", sorted(WORD_VECTORS))
def test_reference_word_vector_pickles(ds: str, reference_data: Path):
    kind, shape, dtype = WORD_VECTORS[ds]
    obj = load_numpy_pickle(reference_data / ds / f"{ds}_glove_word2vec.pkl")
    assert isinstance(obj, kind)
    arr = np.asarray(obj)
    assert arr.shape == shape and arr.dtype == dtype and np.isfinite(arr).all()
    if kind is list:
        assert all(isinstance(row, list) and len(row) == 300 for row in obj)


@pytest.mark.parametrize("ds", sorted(ADJ))
def test_reference_adj_pickles(ds: str, reference_data: Path):
    c, dtype = ADJ[ds]
    obj = load_numpy_pickle(reference_data / ds / f"{ds}_adj.pkl")
    assert isinstance(obj, dict) and set(obj) == {"adj", "nums"}
    assert obj["adj"].shape == (c, c) and obj["nums"].shape == (c,)
    assert obj["adj"].dtype == dtype and obj["nums"].dtype == dtype
    assert (obj["adj"] >= 0).all() and (obj["nums"] >= 0).all()
    if ds == "nuswide":  # README: nums = 1 + column sums of adj
        np.testing.assert_allclose(obj["nums"], 1 + obj["adj"].sum(0))


def test_apparel_image_labels(reference_data: Path):
    obj = load_numpy_pickle(reference_data / "apparel" / "image_label.pkl")
    assert isinstance(obj, dict) and len(obj) > 0
    name, labels = next(iter(obj.items()))
    assert isinstance(name, str) and len(labels) == 11 and set(np.asarray(labels).tolist()) <= {0, -1}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_numpy_data_round_trips(protocol: int, tmp_path: Path):
    data = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "i64": np.array([[1, -2], [3, 4]], dtype=np.int64),
        "bool": np.array([True, False]),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "scalar": np.float64(2.5),
        "nested": [[1.0, 2.0], (3, "x"), {"k": None}],
        "ordered": collections.OrderedDict(a=1),
        "text": "héllo",
        "raw": b"\x00\x01",
    }
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    got = load_numpy_pickle(path)
    assert got.keys() == data.keys()
    for key in ("f32", "i64", "bool", "fortran"):
        assert got[key].dtype == data[key].dtype
        np.testing.assert_array_equal(got[key], data[key])
    assert got["scalar"] == 2.5 and got["nested"] == data["nested"] and got["ordered"] == data["ordered"]
    assert got["text"] == "héllo" and got["raw"] == b"\x00\x01"


class _System:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


class _Open:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


class _Custom:
    """An ordinary class instance: not numpy data either."""


@pytest.mark.parametrize("payload", [_System, _Eval, _Open])
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_code_carrying_pickles_are_refused(payload, protocol: int, tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    # hidden among real data, as an attacker would
    path.write_bytes(pickle.dumps({"adj": np.zeros((2, 2)), "nums": [payload(marker)]}, protocol=protocol))
    with pytest.raises(MSRNError, match="refusing"):
        load_numpy_pickle(path)
    assert not marker.exists()


def _short_str(text: str) -> bytes:
    """SHORT_BINUNICODE opcode."""
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def test_hand_written_global_opcodes_are_refused(tmp_path: Path):
    marker = tmp_path / "pwned"
    streams = [
        f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(),  # protocol 0 GLOBAL
        f"cposix\nsystem\n(S'touch {marker}'\ntR.".encode(),
        f'cbuiltins\nexec\n(S\'open("{marker}", "w")\'\ntR.'.encode(),
        # protocol 4: STACK_GLOBAL subprocess.Popen, then Popen(["touch", marker])
        b"\x80\x04"
        + _short_str("subprocess")
        + _short_str("Popen")
        + b"\x93]("
        + _short_str("touch")
        + _short_str(str(marker))
        + b"e\x85R.",
    ]
    for i, data in enumerate(streams):
        path = tmp_path / f"evil{i}.pkl"
        path.write_bytes(data)
        with pytest.raises(MSRNError):
            load_numpy_pickle(path)
        assert not marker.exists(), i
    path = tmp_path / "custom.pkl"
    path.write_bytes(pickle.dumps(_Custom()))
    with pytest.raises(MSRNError, match="refusing"):
        load_numpy_pickle(path)


def test_truncated_empty_and_missing_pickles(tmp_path: Path):
    data = pickle.dumps({"adj": np.ones((4, 4)), "nums": np.ones(4)}, protocol=2)
    for cut in (1, len(data) // 3, len(data) - 1):
        path = tmp_path / f"cut{cut}.pkl"
        path.write_bytes(data[:cut])
        with pytest.raises(MSRNError):
            load_numpy_pickle(path)
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(MSRNError):
        load_numpy_pickle(empty)
    (tmp_path / "text.pkl").write_text("not a pickle at all\n")
    with pytest.raises(MSRNError):
        load_numpy_pickle(tmp_path / "text.pkl")
    with pytest.raises(MSRNError, match="cannot read"):
        load_numpy_pickle(tmp_path / "absent.pkl")
