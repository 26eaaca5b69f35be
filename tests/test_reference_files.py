"""The reference's label files by name: the pinned table, fetching into the cache with a SHA-256
check (file:// URLs only, never the network), `reference` as a label source, and the presets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from reference_fakes import pin_generated_files

from msrn.data import build_dataset
from msrn.data.base import MultiLabelData
from msrn.data.voc import VOC_LABELS
from msrn.engine.config import PRESETS, preset_config
from msrn.errors import MSRNError
from msrn.labels.graph import read_cooccurrence
from msrn.labels.labelset import build_label_set
from msrn.labels.reference_files import (
    BASE_URL,
    COMMIT,
    FILES,
    reference_file,
    reference_url,
    resolve,
)
from msrn.labels.wordvec import load_word_vectors


@pytest.fixture
def mirror(tmp_path: Path, reference_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file:// copy of the reference's data/ folder as MSRN_REFERENCE_URL, and an empty cache."""
    folder = tmp_path / "mirror"
    for table in FILES.values():
        for entry in table.values():
            (folder / entry.path).parent.mkdir(parents=True, exist_ok=True)
            (folder / entry.path).write_bytes((reference_data / entry.path).read_bytes())
    pin_generated_files(monkeypatch, reference_data)
    monkeypatch.setenv("MSRN_REFERENCE_URL", folder.as_uri())
    monkeypatch.setenv("MSRN_CACHE", str(tmp_path / "cache"))
    return folder


def _cached(tmp_path: Path) -> list[str]:
    cache = tmp_path / "cache"
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_default_url_is_the_pinned_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSRN_REFERENCE_URL", raising=False)
    assert BASE_URL.startswith("https://raw.githubusercontent.com/chehao2628/MSRN/") and COMMIT in BASE_URL
    assert reference_url("voc2007", "cooccurrence") == f"{BASE_URL}/voc/voc_adj.pkl"


def test_fetched_once_then_served_from_the_cache(mirror: Path, tmp_path: Path) -> None:
    path = reference_file("voc2007", "word_vectors")
    assert path.parent == tmp_path / "cache"
    assert path.read_bytes() == (mirror / "voc" / "voc_glove_word2vec.pkl").read_bytes()
    shutil.rmtree(mirror)  # the second call can only succeed from the cache
    assert reference_file("voc2007", "word_vectors") == path
    assert _cached(tmp_path) == ["voc_glove_word2vec.pkl"]


def test_tampered_file_is_refused_and_not_cached(mirror: Path, tmp_path: Path) -> None:
    target = mirror / "apparel" / "apparel_adj.pkl"
    data = bytearray(target.read_bytes())
    data[-3] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(MSRNError) as err:
        reference_file("apparel", "cooccurrence")
    message = str(err.value)
    assert "SHA-256" in message and "apparel_adj.pkl" in message and "--cooccurrence FILE" in message
    assert "\n" not in message
    assert _cached(tmp_path) == []  # neither the file nor a half-written temporary


def test_wrong_cached_copy_is_replaced(mirror: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "voc_adj.pkl").write_bytes(b"not the reference's file")
    path = reference_file("voc2007", "cooccurrence")
    assert path.read_bytes() == (mirror / "voc" / "voc_adj.pkl").read_bytes()


def test_offline_names_the_url_and_the_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSRN_REFERENCE_URL", (tmp_path / "absent").as_uri())
    monkeypatch.setenv("MSRN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "coco_glove_word2vec.pkl").write_bytes(b"stale")  # a wrong copy is not used either
    with pytest.raises(MSRNError) as err:
        reference_file("coco2014", "word_vectors")
    message = str(err.value)
    assert reference_url("coco2014", "word_vectors") in message and "--word-vectors FILE" in message
    assert "\n" not in message and _cached(tmp_path) == []


def test_resolve_passes_other_sources_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSRN_REFERENCE_URL", (tmp_path / "absent").as_uri())  # nothing may be fetched
    arr = np.zeros((2, 3))
    for source in (None, "ngram", "train", tmp_path / "reference", arr):
        assert resolve(source, "voc2007", "word_vectors") is source
    for dataset in ("csv", "synthetic"):
        with pytest.raises(MSRNError, match=f"no cooccurrence file for dataset '{dataset}'.*voc2007"):
            resolve("reference", dataset, "cooccurrence")


def _voc_data(labels: list[str], name: str = "voc2007") -> MultiLabelData:
    targets = np.eye(len(labels), dtype=np.int8)[:3]
    return MultiLabelData(name, "trainval", Path("."), [Path(f"{i}.jpg") for i in range(3)], labels, targets)


def test_reference_source_equals_the_explicit_files(mirror: Path) -> None:
    data = _voc_data(list(VOC_LABELS))
    by_name = build_label_set(data, vectors="reference", cooccurrence="reference")
    wv, adj = mirror / "voc" / "voc_glove_word2vec.pkl", mirror / "voc" / "voc_adj.pkl"
    by_path = build_label_set(data, vectors=wv, cooccurrence=adj)
    np.testing.assert_array_equal(by_name.word_vectors, by_path.word_vectors)
    np.testing.assert_array_equal(by_name.cooccurrence.counts, by_path.cooccurrence.counts)
    np.testing.assert_array_equal(by_name.cooccurrence.nums, by_path.cooccurrence.nums)
    assert by_name.num_images is None and by_name.vector_source.startswith("pickle:")
    np.testing.assert_array_equal(by_name.word_vectors, load_word_vectors(wv, list(VOC_LABELS)))


def test_counted_cooccurrence_by_name(mirror: Path) -> None:
    data = _voc_data(list(VOC_LABELS))
    ls = build_label_set(data, vectors="reference", cooccurrence="train")
    assert ls.num_images == 3 and ls.cooccurrence.nums.tolist() == [1.0] * 3 + [0.0] * 17


def test_reference_files_refuse_labels_in_another_order(mirror: Path) -> None:
    swapped = list(VOC_LABELS)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    with pytest.raises(MSRNError, match=f"label 3 is '{swapped[3]}'.*'{VOC_LABELS[3]}'"):
        build_label_set(_voc_data(swapped), vectors="reference")
    with pytest.raises(MSRNError, match="no word-vectors file for dataset 'csv'"):
        build_label_set(_voc_data(list(VOC_LABELS), name="csv"), vectors="reference")


def test_benchmark_presets_default_to_the_reference_files() -> None:
    for dataset in PRESETS:
        cfg = preset_config(dataset, data="x")
        want = "reference" if dataset in FILES else None
        assert (cfg.word_vectors, cfg.cooccurrence) == (want, want), dataset
    own = preset_config("voc2007", data="x", word_vectors="ngram", cooccurrence="train")
    assert (own.word_vectors, own.cooccurrence) == ("ngram", "train")


def test_labels_command_uses_the_presets_sources(mirror: Path, tmp_path: Path, capsys) -> None:
    """`msrn labels` shows what `msrn train` will use: the reference's files on a benchmark dataset,
    unless other sources are named."""
    from PIL import Image

    from msrn.cli import main as cli_main

    data = tmp_path / "apparel"
    for i, folder in enumerate(["black_dress", "blue_pants", "red_shoes", "white_shorts"]):
        (data / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(data / folder / f"{i}.jpg")
    base = ["labels", "--dataset", "apparel", "--data", str(data), "--json"]
    assert cli_main([*base, "--out", str(tmp_path / "ref" / "labels.pt")]) == 0
    ref = json.loads(capsys.readouterr().out)
    adj = read_cooccurrence(mirror / "apparel" / "apparel_adj.pkl")
    assert ref["num_images"] is None and ref["vector_source"].endswith("apparel_glove_word2vec.pkl")
    assert list(ref["counts"].values()) == adj.nums.tolist()
    own = ["--out", str(tmp_path / "own" / "labels.pt"), "--word-vectors", "ngram", "--cooccurrence", "train"]
    assert cli_main([*base, *own]) == 0
    counted = json.loads(capsys.readouterr().out)
    assert counted["num_images"] == len(build_dataset("apparel", data, "train")) and counted["vector_source"] == "ngram"
