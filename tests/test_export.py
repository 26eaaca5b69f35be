"""msrn export: ONNX graphs that onnxruntime runs with PyTorch's logits, for any batch size."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from msrn.cli import main as cli
from msrn.errors import MSRNError
from msrn.export import export_onnx, traceable_attention
from msrn.models import create_model
from msrn.models.attention import label_attention
from msrn.models.loading import model_state

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install 'msrn[export]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'msrn[export]')")

LABELS = ["cat", "dog", "car", "tree", "sky"]


def _run(path, x: torch.Tensor) -> np.ndarray:
    """Logits from onnxruntime."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]


def test_traceable_attention_is_the_formula() -> None:
    torch.manual_seed(0)
    feats, sem = torch.randn(2, 8, 12), torch.randn(37, 8)
    torch.testing.assert_close(traceable_attention(feats, sem, chunk=5), label_attention(feats, sem))


@pytest.mark.parametrize("name", ["msrn_tiny", "baseline_tiny"])
def test_onnx_matches_pytorch_for_any_batch(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model(name, labels=LABELS).eval()
    model.image_size = 64
    path = tmp_path / "model.onnx"
    assert export_onnx(model, path) <= 1e-4
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
