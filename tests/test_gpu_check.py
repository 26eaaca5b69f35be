"""benchmarks/gpu_check.py's dry run: the GPU check's in-process steps on the CPU at tiny sizes."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # its dataclass looks its module up there
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules["gpu_check"]


def test_dry_run_parity_and_training_steps(gpu_check, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:
        code = gpu_check.main(["--dry-run", "--steps", "parity", "train", "--json", str(tmp_path / "g.json")])
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "g.json").read_text())
    assert code == 0 and report["ok"] and report["dry_run"] and "ALL PASS" in capsys.readouterr().out
    parity = report["steps"]["parity"]
    # the loaded reference-layout checkpoint against tests/reference_impl.py in float64
    assert parity["cpu_vs_reference"] < 1e-4 and parity["device_vs_reference"] < 1e-4
    assert parity["max_abs_logit"] > 0.1
    train = report["steps"]["train"]
    for precision in ("fp32", "bf16", "fp16"):
        losses = train[precision]["losses"]
        assert len(losses) == gpu_check.DRY.train_steps and all(0 < v < 10 for v in losses)
        assert losses[-1] < losses[0] and train[precision]["finite"]
    assert train["bf16"]["losses"][0] != train["fp32"]["losses"][0]  # autocast really changed the arithmetic


def test_a_failing_step_is_reported_and_the_others_still_run(
    gpu_check, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(sizes):
        raise RuntimeError("no kernel image is available")

    monkeypatch.setattr(gpu_check, "step_train", broken)
    monkeypatch.setattr(gpu_check, "step_parity", lambda sizes: {"ok": True, "device_vs_cpu": 0.0,
                                                                 "device_vs_reference": 0.0, "cpu_vs_reference": 0.0})
    report = gpu_check.run(["train", "parity"], gpu_check.DRY, tmp_path, tmp_path / "g.json")
    assert not report["ok"] and report["steps"]["parity"]["ok"]
    assert "no kernel image" in report["steps"]["train"]["error"]
    assert gpu_check.summary_line("train", report["steps"]["train"]).split()[1] == "FAIL"
    assert list(json.loads((tmp_path / "g.json").read_text())["steps"]) == ["train", "parity"]
