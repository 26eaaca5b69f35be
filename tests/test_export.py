"""msrn export: ONNX graphs that onnxruntime runs with PyTorch's logits, for any batch size, and tagging
from the ONNX file alone, without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from image_helpers import sideways_jpeg
from PIL import Image

from msrn.cli import main as cli
from msrn.errors import MSRNError
from msrn.inference.export import export_onnx
from msrn.inference.predictor import load
from msrn.models import attention, create_model, model_state
from msrn.models.attention import label_attention, traceable_attention

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install 'msrn[export]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'msrn[export]')")

LABELS = ["cat", "dog", "car", "tree", "sky"]
ROOT = Path(__file__).resolve().parents[1]


def _run(path, x: torch.Tensor) -> np.ndarray:
    """Logits from onnxruntime."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]


def test_traceable_attention_is_the_formula() -> None:
    torch.manual_seed(0)
    feats, sem = torch.randn(2, 8, 12), torch.randn(37, 8)
    torch.testing.assert_close(traceable_attention(feats, sem, chunk=5), label_attention(feats, sem))


def _softmaxes(feats: torch.Tensor, sem: torch.Tensor) -> int:
    """Softmax nodes in the traced graph of the traceable attention: one per block of semantics."""
    graph = torch.jit.trace(traceable_attention, (feats, sem)).graph
    return sum(node.kind() == "aten::softmax" for node in graph.nodes())


def test_traceable_blocks_scale_with_the_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    feats = torch.randn(2, 16, 4)
    many = torch.randn(5016, 16)  # 5,000 labels and 16 groups at D = 16 on a 2 x 2 map: one block
    assert _softmaxes(feats, many) == 1
    monkeypatch.setattr(attention, "TRACE_ELEMENTS", 16 * 4 * 100)  # a budget of 100 semantics per block
    assert _softmaxes(feats, many) == 51
    assert attention.trace_chunk(16, 4) == 100 and attention.trace_chunk(10**6, 10**3) == 1
    feats, sem = torch.randn(2, 8, 12), torch.randn(37, 8)
    monkeypatch.setattr(attention, "TRACE_ELEMENTS", 8 * 12 * 5)  # blocks of 5 that do not divide 37
    torch.testing.assert_close(traceable_attention(feats, sem), label_attention(feats, sem))


@pytest.mark.parametrize("name", ["msrn_tiny", "baseline_tiny"])
def test_onnx_matches_pytorch_for_any_batch(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model(name, labels=LABELS).eval()
    path = tmp_path / "model.onnx"
    assert export_onnx(model, path, image_size=64) <= 1e-4
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["labels"]) == LABELS and meta["image_size"] == "64"
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 4):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            expected = model(x).numpy()
        got = _run(path, x)
        assert got.shape == (batch, len(LABELS))
        assert np.abs(got - expected).max() <= 1e-4


def test_cli_export_and_bad_input(tmp_path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(1)
    ckpt = tmp_path / "m.pt"
    torch.save(model_state(create_model("msrn_tiny", labels=LABELS), image_size=64), ckpt)
    out = tmp_path / "m.onnx"
    assert cli(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    assert "match PyTorch" in capsys.readouterr().err and out.is_file()
    assert _run(out, torch.zeros(2, 3, 64, 64)).shape == (2, 5)
    assert cli(["export", "--checkpoint", str(out), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint" in err[0] and str(out) in err[0]
    assert not (tmp_path / "x.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.pt"]  # no temporary files left


def test_missing_onnx_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    model = create_model("baseline_tiny", labels=LABELS).eval()
    with pytest.raises(MSRNError, match=r"pip install 'msrn\[export\]'"):
        export_onnx(model, tmp_path / "m.onnx", image_size=64)


TORCH_FREE = """
import json, sys
sys.modules["torch"] = None  # any import of torch now fails: the ONNX path must not need it
from msrn.inference.onnx_predict import load_onnx
predictor = load_onnx(sys.argv[1])
records = predictor.predict(sys.argv[2:], threshold=0.0)
print(json.dumps({"records": records, "labels": predictor.labels, "thresholds": predictor.thresholds.tolist(),
                  "image_size": predictor.image_size, "torch": sys.modules["torch"] is not None}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A checkpoint with per-label thresholds, its ONNX export, and images: plain, sideways, broken."""
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(2)
    state = model_state(create_model("msrn_tiny", labels=LABELS), image_size=64)
    state["thresholds"] = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.45])
    torch.save(state, root / "m.pt")
    assert cli(["export", "--checkpoint", str(root / "m.pt"), "--out", str(root / "m.onnx")]) == 0
    rng = np.random.default_rng(0)
    images = []
    for i, size in enumerate([(90, 70), (64, 64), (200, 120)]):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / f"{i}.png")
        images.append(root / f"{i}.png")
    (root / "phone.jpg").write_bytes(sideways_jpeg(Image.open(images[2])))
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return {
        "root": root,
        "ckpt": root / "m.pt",
        "onnx": root / "m.onnx",
        "images": [*images, root / "phone.jpg", root / "broken.jpg"],
    }


def _scores(records: list[dict]) -> list[dict]:
    """label -> score per record (None for an unreadable image)."""
    return [None if "error" in r else {x["label"]: x["score"] for x in r["labels"]} for r in records]


def test_onnx_file_alone_tags_like_the_torch_path_without_torch(exported: dict) -> None:
    meta = {p.key: p.value for p in onnx.load(str(exported["onnx"])).metadata_props}
    assert json.loads(meta["thresholds"]) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.45])
    assert json.loads(meta["exif_orientation"]) is True and meta["image_size"] == "64"
    out = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, str(exported["onnx"]), *map(str, exported["images"])],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["labels"] == LABELS and got["image_size"] == 64 and not got["torch"]
    assert got["thresholds"] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.45])
    want = load(exported["ckpt"]).predict(exported["images"], threshold=0.0)  # the default torch path
    for g, w in zip(_scores(got["records"]), _scores(want), strict=True):
        if w is None:
            assert g is None
            continue
        assert g.keys() == w.keys() and max(abs(g[k] - w[k]) for k in w) <= 1e-4
    assert "cannot decode" in got["records"][-1]["error"]  # phone.jpg above: EXIF orientation applied alike


def test_cli_predict_with_onnx(exported: dict, capsys: pytest.CaptureFixture, tmp_path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, exported["images"][:3])) + "\n\n")
    assert cli(["predict", "--onnx", str(exported["onnx"]), "--list", str(listing)]) == 0
    from_onnx = json.loads(capsys.readouterr().out)
    assert cli(["predict", "--checkpoint", str(exported["ckpt"]), *map(str, exported["images"][:3])]) == 0
    from_torch = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in from_onnx] == [r["image"] for r in from_torch]
    for g, w in zip(_scores(from_onnx), _scores(from_torch), strict=True):  # the stored thresholds apply
        assert g.keys() == w.keys() and max(abs(g[k] - w[k]) for k in w) <= 1e-4
    for args, words in (
        (["--onnx", str(exported["onnx"]), "--explain", str(tmp_path)], "--explain"),
        (["--onnx", str(exported["onnx"]), "--checkpoint", str(exported["ckpt"])], "either"),
        ([], "either"),
        (["--onnx", str(exported["ckpt"])], "not a readable ONNX model"),
    ):
        assert cli(["predict", *args, str(exported["images"][0])]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
