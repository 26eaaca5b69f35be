"""The label graph (docs/design.md §2) and label word vectors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from reference_impl import reference_adjacency

from msrn.errors import MSRNError
from msrn.labels.graph import Cooccurrence, adjacency, count_cooccurrence, edges, read_cooccurrence
from msrn.labels.wordvec import label_words, load_word_vectors, read_name_map, read_text_vectors
from msrn.safe_pickle import load_numpy_pickle

DATASETS = ["voc", "coco", "nuswide", "apparel"]


# ----------------------------------------------------------------------------- adjacency


def test_adjacency_by_hand():
    # 4 labels; n = images holding each label, M = images holding both
    counts = np.array([[0, 2, 3, 1], [2, 0, 2, 0], [3, 2, 0, 1], [1, 0, 1, 0]])
    nums = np.array([10, 4, 5, 2])
    # 1. P = M / n[i]:  row 0: 0 .2 .3 .1 | row 1: .5 0 .5 0 | row 2: .6 .4 0 .2 | row 3: .5 0 .5 0
    # 2. P >= 0.4 (2/5 is exactly 0.4 and passes):
    #    A = [[0,0,0,0], [1,0,1,0], [1,1,0,0], [1,0,1,0]];  column sums 3, 1, 2, 0
    # 3. A * 0.25 / colsum, + I:
    #    A = [[1,0,0,0], [1/12,1,1/8,0], [1/12,1/4,1,0], [1/12,0,1/8,1]]
    #    row sums r = 1, 29/24, 4/3, 29/24
    # 4. A_hat[i, j] = A[j, i] / sqrt(r_i r_j)
    r = np.array([1, 29 / 24, 4 / 3, 29 / 24])
    expected = np.array(
        [
            [1, (1 / 12) / np.sqrt(r[1]), (1 / 12) / np.sqrt(r[2]), (1 / 12) / np.sqrt(r[3])],
            [0, 1 / r[1], (1 / 4) / np.sqrt(r[1] * r[2]), 0],
            [0, (1 / 8) / np.sqrt(r[1] * r[2]), 1 / r[2], (1 / 8) / np.sqrt(r[2] * r[3])],
            [0, 0, 0, 1 / r[3]],
        ]
    )
    got = adjacency(Cooccurrence(counts, nums))
    assert got.dtype == np.float32 and got.shape == (4, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reference_adjacency(counts, nums), expected, rtol=1e-5, atol=1e-6)
    # the edges i -> j with P(j | i) >= tau, strongest first
    # stable sort: ties keep row-major order
    found = edges(Cooccurrence(counts, nums))
    assert [e[:2] for e in found] == [(2, 0), (1, 0), (1, 2), (3, 0), (3, 2), (2, 1)]
    assert [e[2] for e in found] == pytest.approx([0.6, 0.5, 0.5, 0.5, 0.5, 0.4])
    # a higher threshold keeps only 0.6
    strict = adjacency(Cooccurrence(counts, nums), tau=0.55)
    assert set(zip(*np.nonzero(strict > 0), strict=True)) == {(0, 0), (1, 1), (2, 2), (3, 3), (0, 2)}


@pytest.mark.parametrize("ds", DATASETS)
def test_reference_pickles_follow_steps_1_to_4_literally(ds: str, reference_data: Path):
    co = read_cooccurrence(reference_data / ds / f"{ds}_adj.pkl")
    raw = load_numpy_pickle(reference_data / ds / f"{ds}_adj.pkl")
    np.testing.assert_array_equal(co.counts, raw["adj"])  # nothing replaced, zeroed or symmetrised
    np.testing.assert_array_equal(co.nums, raw["nums"])
    got = adjacency(co)
    want = reference_adjacency(raw["adj"], raw["nums"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got > 0, want > 0)


def test_defective_pickles_are_not_repaired(reference_data: Path):
    """docs/design.md §2: NUS-WIDE's non-zero diagonal and Apparel's one-way counts are applied as stored."""
    nus = read_cooccurrence(reference_data / "nuswide" / "nuswide_adj.pkl")
    assert np.diag(nus.counts).sum() > 0  # the non-zero diagonal is kept
    apparel = read_cooccurrence(reference_data / "apparel" / "apparel_adj.pkl")
    assert not np.array_equal(apparel.counts, apparel.counts.T)  # not symmetrised
    mask = adjacency(apparel) > 0
    garment_to_colour = {(int(i), int(j)) for i, j in zip(*np.nonzero(mask), strict=True) if i != j}
    assert garment_to_colour and all(i >= 6 > j for i, j in garment_to_colour)  # A_hat is A^T: garments attend


def test_count_cooccurrence_treats_difficult_as_absent():
    # 1 present, 0 absent, -1 difficult
    targets = np.array(
        [
            [1, 1, -1],
            [1, 0, 1],
            [-1, 1, 1],
            [1, 1, 0],
            [0, -1, -1],
        ]
    )
    co = count_cooccurrence(targets)
    np.testing.assert_array_equal(co.nums, [3, 3, 2])
    np.testing.assert_array_equal(co.counts, [[0, 2, 1], [2, 0, 1], [1, 1, 0]])
    assert co.num_classes == 3


def test_labels_never_seen_give_no_nan():
    targets = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [0, 0, 1, -1]])  # labels 1 and 3 never present
    co = count_cooccurrence(targets)
    np.testing.assert_array_equal(co.nums, [2, 0, 2, 0])
    a = adjacency(co)
    assert np.isfinite(a).all()
    assert (np.diag(a) > 0).all()
    # P(2|0) = 1/2, P(0|2) = 1/2: one edge each way between 0 and 2; the unseen labels stand alone
    assert {(int(i), int(j)) for i, j in zip(*np.nonzero(a > 0), strict=True) if i != j} == {(0, 2), (2, 0)}
    assert a[1, 1] == pytest.approx(1.0) and a[3, 3] == pytest.approx(1.0)
    assert edges(co) == [(0, 2, 0.5), (2, 0, 0.5)]


def test_cooccurrence_shapes_and_bad_pickles(tmp_path: Path):
    with pytest.raises(MSRNError, match="shape"):
        Cooccurrence(np.zeros((3, 4)), np.ones(3))
    bad = tmp_path / "adj.pkl"
    bad.write_bytes(pickle.dumps({"counts": np.zeros((2, 2))}))
    with pytest.raises(MSRNError, match="adj"):
        read_cooccurrence(bad)
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps({"adj": np.array([[0, 1], [1, 0]]), "nums": np.array([2, 1])}))
    co = read_cooccurrence(good)
    assert co.counts.dtype == np.float64 and co.num_classes == 2


# ----------------------------------------------------------------------------- word vectors


def _glove(path: Path, words: dict[str, np.ndarray], header: str | None = None) -> Path:
    lines = ([header] if header else []) + [f"{w} {' '.join(f'{x:.9g}' for x in v)}" for w, v in words.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_text_vectors_average_multi_word_labels(tmp_path: Path):
    rng = np.random.default_rng(0)
    vocab = ("the", "dining", "table", "person", "tv", "monitor")
    words = {w: rng.standard_normal(6).astype(np.float32) for w in vocab}
    path = _glove(tmp_path / "glove.6d.txt", words)
    got = load_word_vectors(path, ["dining table", "person", "tv_monitor"])
    assert got.shape == (3, 6) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], (words["dining"] + words["table"]) / 2, rtol=1e-6)
    np.testing.assert_allclose(got[1], words["person"], rtol=1e-6)
    np.testing.assert_allclose(got[2], (words["tv"] + words["monitor"]) / 2, rtol=1e-6)
    # fastText .vec files start with "count dim"
    vec = _glove(tmp_path / "wiki.vec", words, header=f"{len(words)} 6")
    np.testing.assert_allclose(load_word_vectors(vec, ["person"]), words["person"][None], rtol=1e-6)
    # a mapping file renames labels before the lookup
    mapping = tmp_path / "names.txt"
    mapping.write_text("# VOC names\ndiningtable=dining table\ntvmonitor\ttv monitor\n", encoding="utf-8")
    name_map = read_name_map(mapping)
    assert name_map == {"diningtable": "dining table", "tvmonitor": "tv monitor"}
    assert label_words("diningtable", name_map) == ["dining", "table"]
    np.testing.assert_allclose(read_text_vectors(path, ["diningtable", "tvmonitor"], name_map), got[[0, 2]], rtol=1e-6)


def test_text_vectors_missing_word_is_named(tmp_path: Path):
    words = {"person": np.ones(4), "dining": np.zeros(4)}
    path = _glove(tmp_path / "glove.txt", words)
    with pytest.raises(MSRNError) as err:
        load_word_vectors(path, ["person", "dining table", "sofa"])
    msg = str(err.value)
    assert "table" in msg and "sofa" in msg and "person" not in msg
    with pytest.raises(MSRNError, match="no words"):
        load_word_vectors(path, ["person", "---"])
    bad = tmp_path / "bad.txt"
    bad.write_text("person 1 2 3\ndining 1 2\n", encoding="utf-8")
    with pytest.raises(MSRNError, match="2 values"):
        load_word_vectors(bad, ["person", "dining"])


def test_vectors_from_arrays_and_files(tmp_path: Path):
    arr = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.testing.assert_array_equal(load_word_vectors(arr, ["a", "b", "c"]), arr.astype(np.float32))
    np.testing.assert_array_equal(load_word_vectors(arr.tolist(), ["a", "b", "c"]), arr.astype(np.float32))
    np.save(tmp_path / "v.npy", arr)
    np.testing.assert_array_equal(load_word_vectors(tmp_path / "v.npy", ["a", "b", "c"]), arr.astype(np.float32))
    (tmp_path / "v.pkl").write_bytes(pickle.dumps(arr.tolist()))
    np.testing.assert_array_equal(load_word_vectors(tmp_path / "v.pkl", ["a", "b", "c"]), arr.astype(np.float32))
    with pytest.raises(MSRNError, match="shape"):
        load_word_vectors(arr, ["a", "b"])
    with pytest.raises(MSRNError, match="non-finite"):
        load_word_vectors(np.array([[1.0, np.nan]]), ["a"])
    with pytest.raises(MSRNError, match="does not exist"):
        load_word_vectors(tmp_path / "absent.txt", ["a"])


@pytest.mark.parametrize("ds, count", [("voc", 20), ("coco", 80), ("nuswide", 81), ("apparel", 11)])
def test_reference_word_vectors(ds: str, count: int, reference_data: Path):
    vecs = load_word_vectors(reference_data / ds / f"{ds}_glove_word2vec.pkl", [str(i) for i in range(count)])
    assert vecs.shape == (count, 300) and vecs.dtype == np.float32
    assert np.isfinite(vecs).all() and (np.abs(vecs).sum(1) > 0).all()
    assert len({v.tobytes() for v in vecs}) == count  # one distinct vector per label
