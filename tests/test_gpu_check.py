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
    monkeypatch.setattr(
        gpu_check,
        "step_parity",
        lambda sizes: {"ok": True, "device_vs_cpu": 0.0, "device_vs_reference": 0.0, "cpu_vs_reference": 0.0},
    )
    report = gpu_check.run(["train", "parity"], gpu_check.DRY, tmp_path, tmp_path / "g.json")
    assert not report["ok"] and report["steps"]["parity"]["ok"]
    assert "no kernel image" in report["steps"]["train"]["error"]
    assert gpu_check.summary_line("train", report["steps"]["train"]).split()[1] == "FAIL"
    assert list(json.loads((tmp_path / "g.json").read_text())["steps"]) == ["train", "parity"]


def _figures(train_ratio: float, bf16_gain: float, peak_msrn: float) -> dict:
    """Throughput figures as step_throughput reports them: backbone 400 img/s training, 1200 inference."""
    out = {}
    for amp, gain in (("fp32", 1.0), ("bf16", bf16_gain)):
        msrn_train = 400 * train_ratio * gain
        out[amp] = {
            "train": {
                "backbone_img_s": 400 * gain,
                "msrn_img_s": msrn_train,
                "msrn_over_backbone": train_ratio,
                "peak_growth_gb": {"backbone": 16.0, "msrn": peak_msrn},
            },
            "infer": {
                "backbone_img_s": 1200,
                "msrn_img_s": 1140,
                "msrn_over_backbone": 0.95,
                "peak_growth_gb": {"backbone": 2.0, "msrn": 2.2},
            },
        }
    return out


def test_targets_pass_and_fail_on_the_issue_thresholds(gpu_check) -> None:
    good = gpu_check.judge_targets(_figures(train_ratio=0.9, bf16_gain=1.3, peak_msrn=19.0))
    assert len(good) == 9 and all(t["ok"] for t in good.values()), good
    # 0.8x the backbone (< 0.85), 21 GB against 16 (1.31x > 1.25), bf16 only 1.1x fp32; 320 img/s < 2 x 173
    bad = gpu_check.judge_targets(_figures(train_ratio=0.8, bf16_gain=1.1, peak_msrn=21.0))
    failed = {k for k, t in bad.items() if not t["ok"]}
    assert failed == {
        "fp32 training vs backbone",
        "bf16 training vs backbone",
        "fp32 training peak memory, backbone / msrn",
        "bf16 training peak memory, backbone / msrn",
        "bf16 training vs msrn fp32",
        "fp32 training vs reference fp32 (173 img/s)",
    }, failed
    report = {**_figures(0.8, 1.1, 21.0), "targets": bad, "ok": False, "seconds": 1.0}
    for mode in ("train", "infer"):
        for amp in ("fp32", "bf16"):
            report[amp][mode]["tf32"] = "matmul TF32 off, cuDNN TF32 on"
    lines = gpu_check.summary_line("throughput", report).splitlines()
    assert "cuDNN TF32 on" in lines[0] and sum(line.strip().startswith("target FAIL") for line in lines) == 6


def test_dry_run_attention_step_checks_the_fused_form_against_float64(gpu_check) -> None:
    r = gpu_check.step_attention(gpu_check.DRY)
    assert r["ok"] and r["fused_vs_float64"]["fp32"] < 1e-5 and r["fused_vs_float64"]["bf16"] < 2**-5
    assert set(r["timing"]) == {"fused fp32", "fused bf16", "chunked fp32", "naive fp32"}
