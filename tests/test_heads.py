"""The two classifiers (mlp, elementwise) against the independent implementation, their checkpoints
(the reference's W and B, old checkpoints without a head), and the mlp size refusal."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_helpers import reference_names
from reference_impl import elementwise_logits, random_reference_state, reference_forward

from msrn.engine.config import preset_config
from msrn.errors import MSRNError
from msrn.models import create_model, load_checkpoint, model_state
from msrn.safe_pickle import load_numpy_pickle


def _tiny(head: str, num_classes: int = 6, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("msrn_tiny", num_classes=num_classes, num_groups=2, head=head, **kw)


def _attended(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The head's inputs: attended semantics B x (C+K) x SD, and the assignment C x K."""
    semantics = model.semantics()
    sem, feats = semantics.rows(), [m.flatten(2) for m in model.projected_maps(x)]
    attended = torch.cat(
        [
            F.softmax(f[:, :, :, None] * sem.T[None, :, None, :], dim=2).mul(f[:, :, :, None]).sum(2).transpose(1, 2)
            for f in feats
        ],
        -1,
    )
    return attended, sem, semantics.assign


def test_elementwise_head_matches_the_reference_block_forward_and_gradients():
    model = _tiny("elementwise").train()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    logits = model(x)
    c = model.cfg.num_classes
    assert logits.shape == (3, c) and model.head.W.shape == (c, 2 * 3 * 64) and model.head.B.shape == (c,)
    assert not hasattr(model.head, "fc1") and "head.W" in model.state_dict() and "head.B" in model.state_dict()

    attended, _, assign = _attended(model, x)
    want = elementwise_logits(attended[:, :c], attended[:, c:], assign, model.head.W, model.head.B)
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-5)

    # gradients through W, B, the attention and the label graph's group assignment
    g = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    params = [model.head.W, model.head.B, model.group_pool.assign.W, model.project[2].weight]
    got = torch.autograd.grad((logits * g).sum(), params)
    expected = torch.autograd.grad((want * g).sum(), params)
    for a, b in zip(got, expected):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_mlp_head_matches_the_independent_mlp_forward_and_gradients():
    model = _tiny("mlp").train()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    logits = model(x)
    attended, _, _ = _attended(model, x)
    h = F.leaky_relu(F.linear(torch.tanh(attended).reshape(2, -1), model.head.fc1.weight, model.head.fc1.bias), 0.01)
    want = F.linear(h, model.head.fc2.weight, model.head.fc2.bias)
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-5)
    params = [model.head.fc1.weight, model.head.fc2.bias, model.label_gat.layers[0].W]
    for a, b in zip(torch.autograd.grad(logits.sum(), params), torch.autograd.grad(want.sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_elementwise_initialisation_is_the_references_uniform():
    model = _tiny("elementwise", num_classes=50)
    bound = 1 / math.sqrt(model.head.W.shape[1])
    for p in (model.head.W, model.head.B):
        assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound
    assert abs(float(model.head.W.detach().std()) - bound / math.sqrt(3)) < 0.05 * bound  # the uniform's std


def test_elementwise_without_group_semantics_reads_the_labels_alone():
    model = _tiny("elementwise", group_semantics=False).eval()
    assert model.head.W.shape == (6, 3 * 64)
    x = torch.randn(2, 3, 64, 64)
    attended, _, assign = _attended(model, x)
    assert assign is None
    want = (model.head.W * torch.tanh(attended)).sum(-1) + model.head.B
    torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)


def test_head_is_recorded_and_old_checkpoints_load_as_mlp(tmp_path: Path):
    model = _tiny("elementwise").eval()
    state = model_state(model, 64)
    assert state["model"]["config"]["head"] == "elementwise"
    x = torch.randn(1, 3, 64, 64)
    loaded = load_checkpoint(state).model
    assert loaded.cfg.head == "elementwise"
    torch.testing.assert_close(loaded(x), model(x))

    old = model_state(_tiny("mlp").eval(), 64)
    del old["model"]["config"]["head"]  # written before the head was a choice
    again = load_checkpoint(old).model
    assert again.cfg.head == "mlp" and again.head.fc1.in_features == (6 + 2) * 3 * 64


def test_unknown_head_and_baseline_head_are_refused():
    with pytest.raises(MSRNError, match="head must be one of mlp, elementwise"):
        _tiny("linear")
    with pytest.raises(MSRNError, match="--head"):
        preset_config("synthetic", model="baseline_tiny", head="elementwise")
    cfg = preset_config("synthetic", head="elementwise")
    assert cfg.model_switches()["head"] == "elementwise"
    assert preset_config("synthetic").model_switches() == {}  # the paper's model: no switches


def test_mlp_refusal_names_the_elementwise_head():
    with pytest.raises(MSRNError, match="--head elementwise"):
        create_model("msrn_resnet101", num_classes=1000)
    model = create_model("msrn_tiny", num_classes=1000, head="elementwise", pool_ratio=0.05)
    assert sum(p.numel() for p in (model.head.W, model.head.B)) == 1000 * (2 * 3 * 64 + 1)


def test_reference_checkpoint_w_and_b_load_into_the_elementwise_head(reference_data: Path, tmp_path: Path):
    spec = json.loads((reference_data / "official-checkpoint-keys.json").read_text())["voc"]
    sd = random_reference_state(spec["keys"], seed=5)
    assert sd["W"].shape == (20, 2 * 3 * 512)
    path = tmp_path / "voc_checkpoint.pth.tar"
    torch.save({"epoch": 1, "arch": "resnet101", "state_dict": sd, "best_score": 0}, path)
    wv_path, adj_path = reference_data / "voc" / "voc_glove_word2vec.pkl", reference_data / "voc" / "voc_adj.pkl"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_checkpoint(path, word_vectors=wv_path, cooccurrence=adj_path, head="elementwise").model
    dropped = [str(w.message) for w in caught if "dropped" in str(w.message)]
    assert len(dropped) == 1
    assert "fc1.weight" in dropped[0]
    assert "W," not in dropped[0]
    assert model.cfg.head == "elementwise"
    # two statements: assert_close returns None, so `assert_close(W) and assert_close(B)` never checked B
    # (mutation: B left at its initialisation after the load passed that line)
    torch.testing.assert_close(model.head.W, sd["W"])
    torch.testing.assert_close(model.head.B, sd["B"])

    adj = load_numpy_pickle(adj_path)
    wv = np.asarray(load_numpy_pickle(wv_path), dtype=np.float32)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        got = model(x)
        want = reference_forward(sd, x, wv, adj["adj"], adj["nums"], dtype=torch.float32, head="elementwise")
        mlp = reference_forward(sd, x, wv, adj["adj"], adj["nums"], dtype=torch.float32)
    assert want.abs().max() > 0.1 and (want - mlp).abs().max() > 0.1  # the two heads really differ here
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4


def _reference_layout(seed: int) -> dict[str, torch.Tensor]:
    """A small checkpoint in the reference's layout (resnet_101.* backbone and conv_buffers, both classifiers:
    fc1/fc2 and W/B, the unused conv_buffer0 and ProjectMs), from msrn_tiny models of both heads."""
    mlp = reference_names(_tiny("mlp", seed=seed).state_dict())
    elementwise = reference_names(_tiny("elementwise", seed=seed + 1).state_dict())
    state = {}
    for key, value in {**mlp, "W": elementwise["W"], "B": elementwise["B"]}.items():
        if key in ("word_vectors", "adjacency"):
            continue
        state[
            "resnet_101." + key.removeprefix("backbone.") if key.startswith(("backbone.", "conv_buffer")) else key
        ] = value.clone()
    state["resnet_101.conv_buffer0.weight"] = torch.ones(4, 4, 1, 1)
    state["ProjectMs.0.weight"] = torch.ones(4, 4)
    return state


@pytest.mark.parametrize("head", ["elementwise", "mlp"])
def test_init_from_a_reference_checkpoint_keeps_the_models_classifier(
    head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    from msrn.engine import run_start as train

    sd = _reference_layout(seed=3)
    path = tmp_path / "ref.pth.tar"
    torch.save({"epoch": 1, "arch": "resnet101", "state_dict": sd, "best_score": 0}, path)
    # the tiny backbone has no reference name (the reference tells resnet101 and 50 by their layer3 blocks)
    seen = []
    monkeypatch.setattr(train, "require_backbone", lambda arch, model, where: seen.append(arch))
    model = _tiny(head, seed=9)
    with caplog.at_level("INFO", logger=train.log.name):
        train.init_from_checkpoint(model, str(path))
    assert seen == ["resnet with 1 layer3 blocks"]
    kept, dropped = (("W", "B"), ("fc1.weight", "fc2.bias")) if head == "elementwise" else (("fc1.weight",), ("W",))
    for key in kept:
        torch.testing.assert_close(reference_names(model.state_dict())[key], sd[key])
    torch.testing.assert_close(model.backbone.conv1.weight, sd["resnet_101.conv1.weight"])
    torch.testing.assert_close(model.depth_conv[0].weight, sd["resnet_101.conv_buffer1.weight"])
    message = caplog.text.split("unused ")[1]
    assert all(key in message for key in dropped) and not any(key in message.split(", ") for key in kept)
    assert "afresh: none" in caplog.text


def test_the_head_shares_the_models_parameters_through_copies_and_casts():
    import copy

    model = _tiny("elementwise").eval()
    twin = copy.deepcopy(model)  # as the weight EMA copies the model
    assert twin.head.W is not model.head.W
    with torch.no_grad():
        twin.head.W.zero_()
        twin.head.B.fill_(1.0)
        assert torch.equal(twin(torch.randn(1, 3, 64, 64)), torch.ones(1, 6))
    cast = model.to(torch.float64)
    assert cast.head.W.dtype == torch.float64
