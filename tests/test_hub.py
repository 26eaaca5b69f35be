"""Model folders (msrn.hub) and their cards and publishing (msrn.inference.card, msrn.inference.push): the same
logits as the .pt they came from, Hub ids resolved by huggingface_hub from its offline cache, a card whose YAML
and snippet work, every refusal, and `msrn push` up to the upload call."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import pickle
import struct
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from model_helpers import randomise_batchnorms, reference_names
from PIL import Image

import msrn
from msrn.cli import main as cli_main
from msrn.errors import MSRNError
from msrn.hub import CONFIG, WEIGHTS, read_folder, read_source, write_folder
from msrn.inference.card import SHOWN_ROWS, render
from msrn.inference.predictor import Predictor
from msrn.inference.push import NORMALIZATION, export_folder
from msrn.models import create_model, load_checkpoint, model_state

# hf:// ids, the card's YAML and push need the `hub` extra (huggingface_hub, which brings PyYAML); folders do not
needs_hub = pytest.mark.skipif(
    importlib.util.find_spec("huggingface_hub") is None,
    reason="huggingface_hub is not installed: pip install 'msrn[hub]'",
)

LABELS = ["cat", "dog", "sea | shore", "sky", "tree"]


def snippet_of(card: str) -> str:
    """The Python code block of a card's usage section (what a reader would copy)."""
    start = card.index("```python\n") + len("```python\n")
    return card[start : card.index("```", start)]


def _images(n: int = 3, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(5))


def _save_run(folder: Path, name: str = "msrn_tiny", epoch: int = 4, seed: int = 0) -> Path:
    """A run folder as `msrn train` leaves it: best.pt (weights, thresholds, training config) and metrics.json."""
    torch.manual_seed(seed)
    model = create_model(name, labels=LABELS)
    randomise_batchnorms(model, seed)
    ckpt = model_state(model, image_size=64, exif_orientation=False)
    ckpt.update(
        thresholds=torch.tensor([0.3, 0.5, 0.6, 0.4, 0.7]),
        epoch=epoch,
        config={"dataset": "scenes", "model": name, "epochs": 5, "lr": 0.1, "image_size": 64, "data": "x"},
    )
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, folder / "best.pt")
    ap = [91.25, 80.0, 55.5, None, 70.0]
    metrics = {
        "mAP": 74.19,
        "CP": 70.0,
        "CR": 60.0,
        "CF1": 64.62,
        "OP": 72.0,
        "OR": 61.0,
        "OF1": 66.05,
        "epoch": epoch,
        "split": "test",
        "dataset": "scenes",
        "num_images": 40,
        "selected_by": "validation mAP",
        "labels": LABELS,
        "ap_by_label": dict(zip(LABELS, ap)),
        "per_label_thresholds": {"CF1": 67.5, "OF1": 69.0},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder / "best.pt"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_run(tmp_path_factory.mktemp("run") / "msrn")


@pytest.fixture(scope="module")
def folder(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "scenes-msrn"
    export_folder(run, out)
    return out


def _same_probabilities(a: str | Path, b: str | Path, fast: bool) -> None:
    x = _images()
    pa, pb = Predictor.from_checkpoint(a, fast=fast), Predictor.from_checkpoint(b, fast=fast)
    assert pa.labels == pb.labels and pa.image_size == pb.image_size
    assert np.array_equal(pa.thresholds, pb.thresholds) and pa.exif_orientation == pb.exif_orientation
    assert np.array_equal(pa.run(x)[0], pb.run(x)[0])


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fast", [True, False])
def test_msrn_folder_gives_the_checkpoints_logits(run: Path, folder: Path, fast: bool):
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", CONFIG, WEIGHTS]
    _same_probabilities(run, folder, fast)


def test_folder_keeps_vectors_graph_thresholds_and_decoding(run: Path, folder: Path):
    a, b = load_checkpoint(run), load_checkpoint(folder)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b.model.labels == LABELS and b.image_size == 64 and b.exif_orientation is False
    assert np.allclose(b.thresholds, [0.3, 0.5, 0.6, 0.4, 0.7])
    config = json.loads((folder / CONFIG).read_text())
    assert config["labels"] == LABELS and config["normalization"]["mean"] == NORMALIZATION["mean"]
    assert config["training"]["dataset"] == "scenes" and config["msrn_version"] == msrn.__version__
    assert config["weights_sha256"] == hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()
    from safetensors import safe_open

    with safe_open(folder / WEIGHTS, "pt") as f:  # the label inputs are plain named tensors
        assert f.get_tensor("word_vectors").shape == (5, 300) and f.get_tensor("adjacency").shape == (5, 5)


@pytest.mark.parametrize("fast", [True, False])
def test_baseline_round_trip(tmp_path: Path, fast: bool):
    ckpt = _save_run(tmp_path / "base", "baseline_mlp_tiny")
    export_folder(ckpt, tmp_path / "folder")
    _same_probabilities(ckpt, tmp_path / "folder", fast)


def test_folder_of_a_folder_is_the_same_model(folder: Path, tmp_path: Path):
    export_folder(folder, tmp_path / "again")
    assert (tmp_path / "again" / WEIGHTS).read_bytes() == (folder / WEIGHTS).read_bytes()
    again, first = (json.loads((p / CONFIG).read_text()) for p in (tmp_path / "again", folder))
    assert again == first


@pytest.mark.filterwarnings("ignore:.*dropped unused reference parameters")
def test_reference_checkpoint_becomes_a_folder_that_loads_without_pickles(
    tmp_path: Path, reference_data: Path, monkeypatch
):
    from reference_impl import random_reference_state

    from msrn.data.apparel import APPAREL_LABELS

    spec = json.loads((reference_data / "official-checkpoint-keys.json").read_text())["apparel"]
    ckpt = tmp_path / "apparel_checkpoint.pth.tar"
    torch.save(
        {"epoch": 1, "arch": "resnet101", "state_dict": random_reference_state(spec["keys"], seed=4), "best_score": 0},
        ckpt,
    )
    files = {
        "word_vectors": reference_data / "apparel" / "apparel_glove_word2vec.pkl",
        "cooccurrence": reference_data / "apparel" / "apparel_adj.pkl",
    }
    out = tmp_path / "apparel-msrn"
    assert (
        cli_main(
            [
                "export",
                "--format",
                "hub",
                "--checkpoint",
                str(ckpt),
                "--out",
                str(out),
                "--word-vectors",
                str(files["word_vectors"]),
                "--cooccurrence",
                str(files["cooccurrence"]),
            ]
        )
        == 0
    )
    x = _images(2)
    with torch.no_grad():
        want = load_checkpoint(ckpt, **files).model(x)

    def no_pickles(*args, **kwargs):
        raise AssertionError("a pickle was opened while loading the folder")

    monkeypatch.setattr(torch, "load", no_pickles)
    monkeypatch.setattr(pickle, "load", no_pickles)
    monkeypatch.setattr("msrn.labels.wordvec.load_numpy_pickle", no_pickles, raising=False)
    monkeypatch.setattr("msrn.labels.graph.load_numpy_pickle", no_pickles, raising=False)
    loaded = load_checkpoint(out)
    with torch.no_grad():
        got = loaded.model(x)
    assert loaded.model.labels == list(APPAREL_LABELS) and loaded.image_size == 448
    assert torch.equal(got, want)
    card = (out / "README.md").read_text()
    assert "No test figures came with this model" in card and "No training configuration" in card


# ----------------------------------------------------------------------------- hf:// through huggingface_hub


def populate_cache(cache: Path, repo: str, folder: Path, commit: str = "a" * 40, ref: str = "main") -> None:
    """A Hub download as huggingface_hub caches it: models--OWNER--NAME/{blobs, refs/<ref>, snapshots/<commit>}."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        data = path.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / path.name).symlink_to(os.path.relpath(blob, snap))


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch) -> Path:
    """huggingface_hub in offline mode with an empty cache of the test's own."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once at import: set where the library looks
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@needs_hub
def test_hub_id_loads_from_the_offline_cache(run: Path, folder: Path, offline_hub: Path):
    populate_cache(offline_hub, "alice/scenes-msrn", folder)
    x = _images()
    want = Predictor.from_checkpoint(run).run(x)[0]
    assert np.array_equal(msrn.load("hf://alice/scenes-msrn").run(x)[0], want)


@needs_hub
def test_hub_revision_and_missing_models(run: Path, folder: Path, tmp_path: Path, offline_hub: Path):
    other = tmp_path / "baseline"
    export_folder(_save_run(tmp_path / "b", "baseline_tiny"), other)
    populate_cache(offline_hub, "alice/m", folder, commit="b" * 40)
    populate_cache(offline_hub, "alice/m", other, commit="c" * 40, ref="v2")
    assert type(load_checkpoint("hf://alice/m").model).__name__ == "MSRN"
    assert type(load_checkpoint("hf://alice/m@v2").model).__name__ == "PlainClassifier"
    assert type(load_checkpoint("hf://alice/m@" + "c" * 40).model).__name__ == "PlainClassifier"
    with pytest.raises(MSRNError, match=r"hf://alice/absent is not in the Hugging Face cache .*offline"):
        load_checkpoint("hf://alice/absent")
    with pytest.raises(MSRNError, match="hf://alice/m@v3 is not in the Hugging Face cache"):
        load_checkpoint("hf://alice/m@v3")
    card_only = tmp_path / "card-only"
    card_only.mkdir()
    (card_only / "README.md").write_text("# not a model")
    populate_cache(offline_hub, "alice/card", card_only)
    with pytest.raises(MSRNError, match="hf://alice/card is not an msrn model: its repository has no model.safe"):
        load_checkpoint("hf://alice/card")
    for bad in ("hf://alice", "hf://alice/m/x", "hf://../m", "hf://alice/m@"):
        with pytest.raises(MSRNError, match="is not a Hub model id"):
            load_checkpoint(bad)


@needs_hub
def test_hub_id_on_the_command_line(run: Path, folder: Path, offline_hub: Path, tmp_path: Path, capsys):
    populate_cache(offline_hub, "alice/scenes-msrn", folder)
    image = tmp_path / "photo.png"
    Image.new("RGB", (50, 40), (200, 30, 30)).save(image)
    for source in (str(run), "hf://alice/scenes-msrn", str(folder)):
        assert cli_main(["predict", "--checkpoint", source, str(image), "--threshold", "0"]) == 0
        records = json.loads(capsys.readouterr().out)
        assert sorted(t["label"] for t in records[0]["labels"]) == sorted(LABELS)
        if source == str(run):
            want = records
        assert records == want


def test_init_and_pretrained_take_a_folder(folder: Path, run: Path):
    from msrn.engine.run_start import init_from_checkpoint
    from msrn.models._pretrained import load_pretrained_backbone

    fresh = create_model("msrn_tiny", labels=list("abcdefg"))
    init_from_checkpoint(fresh, str(folder))
    trained = load_checkpoint(run).model.state_dict()
    own = fresh.state_dict()
    assert all(
        torch.equal(own[k], trained[k]) for k in ("backbone.conv1.weight", "project.0.weight", "label_gat.layers.0.W")
    )
    assert own["head.fc2.weight"].shape == (7, 256)  # the label layer stays the new label set's
    base = create_model("baseline_tiny", num_classes=3)
    assert "backbone" in load_pretrained_backbone(base, folder)
    assert torch.equal(base.state_dict()["backbone.conv1.weight"], trained["backbone.conv1.weight"])


# ----------------------------------------------------------------------------- the card


@needs_hub
def test_card_front_matter_follows_the_hub_convention(folder: Path):
    import yaml
    from huggingface_hub import ModelCard

    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "msrn" and meta["license"] == "other"
    assert {"multi-label-classification", "msrn", "arxiv:2106.11596"} <= set(meta["tags"])
    assert meta["datasets"] == ["scenes"]
    result = meta["model-index"][0]["results"][0]
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"mAP": 74.19, "CF1": 64.62, "OF1": 66.05}
    card = ModelCard(text)  # the Hub library's own parser of the same block
    assert card.data.library_name == "msrn" and card.data.eval_results[0].metric_value == 74.19


def test_card_body_shows_the_runs_figures(folder: Path):
    text = (folder / "README.md").read_text()
    assert "| 74.19 | 70.00 | 60.00 | 64.62 | 72.00 | 61.00 | 66.05 |" in text
    assert "| 1 | cat | 91.25 |" in text and "| 3 | tree | 70.00 |" in text
    assert "| 4 | sea \\| shore | 55.50 |" in text  # a pipe in a label does not break the table
    assert "1 label has no positive test image and no AP: sky" in text
    assert "CF1 67.50, OF1 69.00" in text and "| epochs | 5 |" in text
    assert "`cat`, `dog`, `sea | shore`, `sky`, `tree`" in text and "## Known limits" in text


def test_card_of_thousands_of_labels_stays_short():
    labels = [f"label{i:04d}" for i in range(3000)]
    config = {
        "architecture": {"kind": "msrn", "config": {"backbone": "resnet101"}},
        "labels": labels,
        "image_size": 448,
        "thresholds": None,
        "training": None,
    }
    metrics = {"mAP": 50.0, "labels": labels, "ap_by_label": {n: float(i % 997) / 10 for i, n in enumerate(labels)}}
    text = render(config, metrics)
    table = [line for line in text.splitlines() if line.startswith("| ") and "label" in line]
    assert len(table) == 2 * SHOWN_ROWS + 2  # header, the top and bottom rows, the gap
    assert f"*{3000 - 2 * SHOWN_ROWS} labels between*" in text and "(2800 more: `labels` in config.json)" in text
    assert len(text) < 20_000


@needs_hub
def test_card_snippet_runs(folder: Path, offline_hub: Path, tmp_path: Path, monkeypatch, capsys):
    """The snippet as the card prints it, for the exported folder and for its Hub id."""
    Image.new("RGB", (30, 30), (10, 120, 240)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    want = msrn.load(folder).predict(["photo.jpg"])[0]["labels"]
    assert want  # the tuned thresholds leave something to print
    export_folder(folder, tmp_path / "pushed", model_id="hf://alice/scenes-msrn")
    pushed = (tmp_path / "pushed" / "README.md").read_text()
    assert "msrn.load('hf://alice/scenes-msrn')" in pushed
    populate_cache(offline_hub, "alice/scenes-msrn", tmp_path / "pushed")
    for card in ((folder / "README.md").read_text(), pushed):
        exec(snippet_of(card), {})
        name, printed = capsys.readouterr().out.strip().split(" ", 1)
        assert name == "photo.jpg"
        assert ast.literal_eval(printed) == [(t["label"], round(t["score"], 3)) for t in want]


def test_metrics_of_another_model_are_refused_or_left_out(run: Path, tmp_path: Path):
    wrong = tmp_path / "metrics.json"
    metrics = json.loads((run.parent / "metrics.json").read_text())
    wrong.write_text(json.dumps({**metrics, "labels": LABELS[::-1]}))
    with pytest.raises(MSRNError, match="does not describe this model: its labels are not the model's"):
        export_folder(run, tmp_path / "a", metrics=wrong)
    later = _save_run(tmp_path / "later", epoch=9)
    (later.parent / "metrics.json").write_text(json.dumps({**metrics, "epoch": 4}))
    _, note = export_folder(later, tmp_path / "b")  # last.pt beside best.pt's metrics: no figures
    assert "left out (it is epoch 4's, the checkpoint epoch 9's)" in note
    assert "No test figures came with this model" in (tmp_path / "b" / "README.md").read_text()


# ----------------------------------------------------------------------------- refusals


def _copy(folder: Path, dest: Path) -> Path:
    dest.mkdir()
    for p in folder.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


def _header(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _write_weights(folder: Path, header: dict, body: bytes) -> None:
    """model.safetensors rewritten with another header, and config.json's SHA-256 made to agree (a careful forger)."""
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", len(raw)) + raw + body
    (folder / WEIGHTS).write_bytes(data)
    config = json.loads((folder / CONFIG).read_text())
    config["weights_sha256"] = hashlib.sha256(data).hexdigest()
    (folder / CONFIG).write_text(json.dumps(config))


def _refused(folder: Path, pattern: str) -> None:
    with pytest.raises(MSRNError, match=pattern) as err:
        load_checkpoint(folder)
    assert "\n" not in str(err.value)


def test_altered_weights_are_refused(folder: Path, tmp_path: Path):
    bad = _copy(folder, tmp_path / "bad")
    data = bytearray((bad / WEIGHTS).read_bytes())
    data[-3] ^= 0xFF  # one weight's bytes, header intact
    (bad / WEIGHTS).write_bytes(bytes(data))
    _refused(bad, "does not match the weights_sha256 of its config.json")


def test_lying_header_is_refused(folder: Path, tmp_path: Path):
    header, body = _header(folder / WEIGHTS)
    cases = {
        "offsets": lambda h: h["head.fc2.bias"].update(data_offsets=[0, len(body) + 400]),
        "shape": lambda h: h["head.fc2.bias"].update(shape=[7]),  # the bytes hold 5 numbers
        "dtype": lambda h: h["head.fc2.bias"].update(dtype="F64"),
    }
    for name, lie in cases.items():
        bad = _copy(folder, tmp_path / name)
        h = json.loads(json.dumps(header))
        lie(h)
        _write_weights(bad, h, body)
        _refused(bad, "is not a readable safetensors file")
    bad = _copy(folder, tmp_path / "length")
    forged = struct.pack("<Q", 10**9) + (bad / WEIGHTS).read_bytes()[8:]  # a header longer than the file
    (bad / WEIGHTS).write_bytes(forged)
    config = json.loads((bad / CONFIG).read_text())
    (bad / CONFIG).write_text(json.dumps({**config, "weights_sha256": hashlib.sha256(forged).hexdigest()}))
    _refused(bad, "is not a readable safetensors file")


def _rewrite(folder: Path, dest: Path, change) -> Path:
    """A folder whose weights were changed by `change(tensors)` and rewritten consistently (a valid file)."""
    from safetensors.torch import load_file, save_file

    bad = _copy(folder, dest)
    tensors = load_file(bad / WEIGHTS)
    change(tensors)
    save_file(tensors, bad / WEIGHTS)
    config = json.loads((bad / CONFIG).read_text())
    config["weights_sha256"] = hashlib.sha256((bad / WEIGHTS).read_bytes()).hexdigest()
    (bad / CONFIG).write_text(json.dumps(config))
    return bad


def test_wrong_shapes_missing_and_foreign_tensors_are_refused(folder: Path, tmp_path: Path):
    _refused(_rewrite(folder, tmp_path / "a", lambda t: t.pop("head.fc1.weight")), "1 missing: head.fc1.weight")
    _refused(_rewrite(folder, tmp_path / "b", lambda t: t.pop("word_vectors")), "lacks word_vectors")
    _refused(
        _rewrite(folder, tmp_path / "c", lambda t: t.update({"head.fc1.weight": torch.zeros(3, 3)})),
        r"wrong shape: head.fc1.weight \(3, 3\)",
    )
    _refused(
        _rewrite(folder, tmp_path / "d", lambda t: t.update({"extra.weight": torch.zeros(2)})),
        "1 unexpected: extra.weight",
    )
    _refused(
        _rewrite(folder, tmp_path / "e", lambda t: t.update({"head.fc1.bias": torch.zeros(256, dtype=torch.int32)})),
        r"tensors of a type no msrn model has: head.fc1.bias \(torch.int32\)",
    )
    _refused(
        _rewrite(folder, tmp_path / "f", lambda t: t.update({"adjacency": torch.zeros(4, 4)})),
        r"does not match its config.json: adjacency is \(4, 4\) for 5 labels",
    )


def _edit_config(folder: Path, dest: Path, **changes) -> Path:
    bad = _copy(folder, dest)
    config = json.loads((bad / CONFIG).read_text())
    config.update(changes)
    (bad / CONFIG).write_text(json.dumps(config))
    return bad


def test_config_that_does_not_match_the_weights_is_refused(folder: Path, tmp_path: Path):
    config = json.loads((folder / CONFIG).read_text())
    arch = config["architecture"]
    cases = [
        ({"labels": LABELS[:4]}, "has 5 thresholds for 4 labels"),
        ({"labels": LABELS[:4], "thresholds": None}, "declares 5 classes but names 4 labels"),
        (
            {
                "labels": LABELS[:4],
                "thresholds": None,
                "architecture": {**arch, "config": {**arch["config"], "num_classes": 4}},
            },
            "does not match its config.json: word_vectors is \\(5, 300\\) for 4 labels",
        ),
        ({"labels": [*LABELS[:4], "cat"]}, "names a label twice"),
        ({"thresholds": [0.5] * 4}, "has 4 thresholds for 5 labels"),
        ({"thresholds": [0.5, 0.5, 0.5, 0.5, 1.5]}, r"threshold outside \[0, 1\]"),
        ({"image_size": "448"}, "image_size '448'"),
        ({"format_version": 99}, "format 99, written by a newer msrn"),
        ({"library_name": "transformers"}, "not an msrn model config"),
        ({"architecture": {**arch, "config": {**arch["config"], "num_groups": 3}}}, "wrong shape: group_pool"),
        (
            {"architecture": {**arch, "config": {**arch["config"], "num_classes": 6}}},
            "declares 6 classes but names 5 labels",
        ),
        ({"architecture": {"kind": "baseline", "backbone": "tiny", "num_classes": 5}}, "lacks fc.weight"),
        ({"weights_sha256": None}, "has no weights_sha256"),
    ]
    for i, (change, pattern) in enumerate(cases):
        _refused(_edit_config(folder, tmp_path / f"c{i}", **change), pattern)
    (tmp_path / "c0" / CONFIG).write_text("{not json")
    _refused(tmp_path / "c0", "config.json is not a readable JSON file")


def test_pickles_in_a_folder_are_never_opened(folder: Path, tmp_path: Path, monkeypatch):
    """A folder is read from model.safetensors and config.json alone; a .pt beside them loads only when named."""
    bad = _copy(folder, tmp_path / "mixed")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    for name in ("best.pt", "labels.pkl"):
        (bad / name).write_bytes(pickle.dumps(Payload()))
    real_load = torch.load
    opened: list[str] = []

    def spy(f, *args, **kwargs):
        opened.append(str(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert load_checkpoint(bad).model.labels == LABELS
    (bad / WEIGHTS).unlink()
    _refused(
        bad,
        r"no model.safetensors; it holds best.pt, labels.pkl, which may be a checkpoint: pickle-based "
        r"files are loaded only when named, e.g. --checkpoint .*best.pt",
    )
    assert opened == [] and not marker.exists()
    with pytest.raises(MSRNError, match="not a tensors-only checkpoint"):  # named: read, weights-only, refused
        read_source(bad / "best.pt")
    assert opened == [str(bad / "best.pt")] and not marker.exists()


def test_writer_refuses_nothing_it_wrote(run: Path, tmp_path: Path):
    """write_folder's own output always reads back (shared buffers and non-contiguous views included)."""
    ckpt = dict(torch.load(run, weights_only=True))
    ckpt["state_dict"] = {
        **ckpt["state_dict"],
        "head.fc2.weight": ckpt["state_dict"]["head.fc2.weight"].t().contiguous().t(),
    }
    write_folder(tmp_path / "f", ckpt, NORMALIZATION, "0")
    back = read_folder(tmp_path / "f")
    assert torch.equal(back["state_dict"]["head.fc2.weight"], ckpt["state_dict"]["head.fc2.weight"])


# ----------------------------------------------------------------------------- push


class FakeHub:
    """HfApi's network calls, answered from a dict of the repository's files; records create and upload calls."""

    def __init__(self, files: dict[str, bytes] | None = None):
        self.files = files or {}
        self.created: list[tuple] = []
        self.uploads: list[dict] = []

    def install(self, monkeypatch, tmp_path: Path) -> None:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RemoteEntryNotFoundError

        hub = self

        def file_exists(self, repo_id, filename, **kw):
            return filename in hub.files

        def hf_hub_download(self, repo_id, filename, **kw):
            if filename not in hub.files:
                # the Hub's answer to a missing file (the error reads a response's headers)
                raise RemoteEntryNotFoundError(
                    "404", response=SimpleNamespace(headers={}, status_code=404, request=None)
                )
            path = tmp_path / "downloaded" / filename
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(hub.files[filename])
            return str(path)

        def create_repo(self, repo_id, **kw):
            hub.created.append((repo_id, kw))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kw):
            folder = Path(kw["folder_path"])
            hub.uploads.append({**kw, "files": {p.name: p.read_bytes() for p in folder.iterdir()}})
            return "https://huggingface.co/commit"

        for name, fn in (
            ("file_exists", file_exists),
            ("hf_hub_download", hf_hub_download),
            ("create_repo", create_repo),
            ("upload_folder", upload_folder),
        ):
            monkeypatch.setattr(HfApi, name, fn)


@needs_hub
def test_push_uploads_the_folder_and_prints_the_url(run: Path, tmp_path: Path, monkeypatch, capsys):
    hub = FakeHub()
    hub.install(monkeypatch, tmp_path)
    assert (
        cli_main(
            ["push", "--checkpoint", str(run), "--repo", "alice/scenes-msrn", "--license", "apache-2.0", "--private"]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert out.strip() == "https://huggingface.co/alice/scenes-msrn"
    assert "test figures from" in err
    assert hub.created == [("alice/scenes-msrn", {"private": True, "exist_ok": True})]
    (upload,) = hub.uploads
    assert upload["repo_id"] == "alice/scenes-msrn" and sorted(upload["allow_patterns"]) == sorted(
        ["README.md", CONFIG, WEIGHTS]
    )
    files = upload["files"]
    assert sorted(files) == ["README.md", CONFIG, WEIGHTS]
    card = files["README.md"].decode()
    assert "msrn.load('hf://alice/scenes-msrn')" in card and 'license: "apache-2.0"' in card
    assert "| 74.19 |" in card
    config = json.loads(files[CONFIG])
    assert config["weights_sha256"] == hashlib.sha256(files[WEIGHTS]).hexdigest()


@needs_hub
def test_push_refuses_another_models_card(run: Path, folder: Path, tmp_path: Path, monkeypatch):
    other = tmp_path / "other"
    export_folder(_save_run(tmp_path / "o", seed=3), other)
    cases = [
        ({"README.md": b"# a card", CONFIG: (other / CONFIG).read_bytes()}, "the card of a different model"),
        ({"README.md": b"---\nlibrary_name: timm\n---\n"}, "a card msrn did not write"),
        ({"README.md": b"# x", CONFIG: b'{"library_name": "transformers"}'}, "a card msrn did not write"),
    ]
    for files, pattern in cases:
        hub = FakeHub(files)
        hub.install(monkeypatch, tmp_path)
        with pytest.raises(MSRNError, match=pattern + ".*pass --force to replace it"):
            msrn.inference.push.push(run, "alice/scenes-msrn")
        assert hub.uploads == [] and hub.created == []
        msrn.inference.push.push(run, "alice/scenes-msrn", force=True)
        assert len(hub.uploads) == 1
    same = FakeHub({"README.md": b"old card", CONFIG: (folder / CONFIG).read_bytes()})  # the same weights
    same.install(monkeypatch, tmp_path)
    msrn.inference.push.push(run, "alice/scenes-msrn", out=tmp_path / "kept")
    assert len(same.uploads) == 1 and (tmp_path / "kept" / WEIGHTS).is_file()


@needs_hub
def test_push_refuses_a_bad_repo_id_before_anything(run: Path, tmp_path: Path, monkeypatch):
    hub = FakeHub()
    hub.install(monkeypatch, tmp_path)
    for repo in ("alice", "alice/x/y", "../x", "alice/"):
        with pytest.raises(MSRNError, match="is not a Hub repository id"):
            msrn.inference.push.push(run, repo)
    assert hub.created == [] and hub.uploads == []


def test_export_options_for_onnx_are_refused(run: Path, tmp_path: Path, capsys):
    assert cli_main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "m.onnx"), "--license", "mit"]) == 2
    assert "--license: for --format hub only" in capsys.readouterr().err


def test_export_hub_on_the_command_line(run: Path, tmp_path: Path, capsys):
    out = tmp_path / "cli"
    assert cli_main(["export", "--format", "hub", "--checkpoint", str(run), "--out", str(out)]) == 0
    assert "5 labels, input 64px" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _same_probabilities(run, out, fast=True)


def test_folder_loads_without_huggingface_hub(folder: Path, monkeypatch):
    """The core install (safetensors, no huggingface_hub) loads a local folder; a Hub id says what to install."""
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub now raises ImportError
    assert load_checkpoint(folder).model.labels == LABELS
    with pytest.raises(MSRNError, match=r"hf://alice/m needs huggingface_hub: pip install 'msrn\[hub\]'"):
        load_checkpoint("hf://alice/m")
    with pytest.raises(MSRNError, match=r"msrn push needs huggingface_hub"):
        msrn.inference.push.push(folder, "alice/m")


@needs_hub
def test_a_demo_model_becomes_a_folder_whose_card_shows_its_figures(tmp_path: Path, capsys):
    """msrn demo's MSRN run (one short epoch), exported from its run folder: the card carries metrics.json's figures."""
    import yaml

    from msrn import demo

    demo.run_demo(tmp_path, epochs=1, workers=0, data_size=(40, 24, 64), baseline=False, jobs=1)
    run_folder = tmp_path / "msrn"
    out = tmp_path / "scenes-msrn"
    assert (
        cli_main(
            [
                "export",
                "--format",
                "hub",
                "--checkpoint",
                str(run_folder / "best.pt"),
                "--out",
                str(out),
                "--license",
                "mit",
            ]
        )
        == 0
    )
    assert "test figures from" in capsys.readouterr().err
    metrics = json.loads((run_folder / "metrics.json").read_text())
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    figures = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert figures == {k: round(metrics[k], 2) for k in ("mAP", "CF1", "OF1")}
    assert meta["license"] == "mit" and meta["datasets"] == ["scenes"]
    assert "| " + " | ".join(f"{metrics[k]:.2f}" for k in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")) + " |" in card
    best = max((v, k) for k, v in metrics["ap_by_label"].items() if v is not None)
    assert f"| 1 | {best[1]} | {best[0]:.2f} |" in card
    assert f"{metrics['num_images']} images), epoch {metrics['epoch']}" in card
    assert "| model | msrn_tiny |" in card and "| dataset | scenes |" in card and "| seed | 0 |" in card
    assert "| pretrained | none (the backbone trained from scratch) |" in card
    x = _images(2)
    assert np.array_equal(
        Predictor.from_checkpoint(out).run(x)[0], Predictor.from_checkpoint(run_folder / "best.pt").run(x)[0]
    )


def test_a_version_1_folder_with_the_references_module_names_still_loads(folder: Path, tmp_path: Path):
    """Folders written before the model's modules got the paper's names (format_version 1) keep loading."""
    from safetensors.torch import load_file

    old = _rewrite(folder, tmp_path / "v1", lambda t: t.update(reference_names({k: t.pop(k) for k in list(t)})))
    config = json.loads((old / CONFIG).read_text())
    config["format_version"] = 1
    config["architecture"].pop("name", None)
    (old / CONFIG).write_text(json.dumps(config))
    assert {"fc1.weight", "ProjectM.0.weight"} <= set(load_file(old / WEIGHTS))  # the old names, as written then
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(old).model(x), load_checkpoint(folder).model(x), rtol=0, atol=0)
