"""The heads compared with MSRN (msrn.models.{mlgcn,csra,mldecoder,q2l,addgcn,pooling}): forward and gradients
against the independent implementations of peer_heads_impl, the published checkpoints of ML-GCN and CSRA
(written here in their own key layouts) loading with their logits, and the protocol the rest of msrn relies on
(checkpoint round trip, --init, explanations, training steps, ONNX)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import make_csv, tiny_train_args
from peer_heads_impl import addgcn_logits, csra_logits, mldecoder_logits, mlgcn_logits, q2l_logits

import msrn
from msrn.cli import main as cli
from msrn.errors import MSRNError
from msrn.inference.explain import attention_maps, explained_forward
from msrn.labels.graph import Cooccurrence, adjacency
from msrn.labels.reference_files import LABELS as REFERENCE_LABELS
from msrn.models import create_model, list_models, load_checkpoint, model_state
from msrn.models.resnet import ResNet

FAMILIES = ("mlgcn", "csra", "mldecoder", "q2l", "addgcn", "baseline_max")
LABELS = ["cat", "dog", "car", "tree", "sky"]
pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def _model(family: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return create_model(f"{family}_tiny", labels=LABELS, **kw)


def _fmap(seed: int = 1, b: int = 2, h: int = 3, w: int = 2) -> torch.Tensor:
    return torch.randn(b, 128, h, w, generator=torch.Generator().manual_seed(seed), requires_grad=True)


def q2l_names(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """msrn's Query2Label tensors under Query2Label's own names (the decoder's norm1/norm2 are its norm2/norm3)."""
    out = {"query_embed.weight": p["queries.weight"], "fc.W": p["out_weight"][None], "fc.b": p["out_bias"][None]}
    for key, value in p.items():
        part, _, rest = key.partition(".")
        if part in ("encoder", "decoder"):
            n, module, tail = rest.split(".", 2)
            module = {"attn": "self_attn" if part == "encoder" else "multihead_attn", "ffn": ""}.get(module, module)
            if part == "decoder" and module.startswith("norm"):
                module = {"norm1": "norm2", "norm2": "norm3"}[module]
            name = f"{module}.{tail}" if module else tail  # ffn.linear1.weight -> linear1.weight
            out[f"transformer.{part}.layers.{n}.{name}"] = value
        elif part == "decoder_norm":
            out["transformer.decoder.norm." + rest] = value
    return out


def _reference(family: str, model, fmap: torch.Tensor) -> torch.Tensor:
    p = dict(model.named_parameters()) | dict(model.named_buffers())
    if family == "mlgcn":
        return mlgcn_logits(fmap, p["word_vectors"], p["adjacency"], p["gc1"], p["gc2"])
    if family == "csra":
        temps = [99 if math.isinf(t) else t for t in model.temperatures]
        return csra_logits(fmap, [p[f"heads.{i}.weight"] for i in range(len(temps))], temps, model.lam)
    if family == "mldecoder":
        return mldecoder_logits(fmap, p, model.num_classes, model.settings["heads"])
    if family == "q2l":
        s = model.settings
        return q2l_logits(fmap, q2l_names(p), s["heads"], s["encoder_layers"], s["decoder_layers"])
    return addgcn_logits(fmap, p)


@pytest.mark.parametrize("family", ["mlgcn", "csra", "mldecoder", "q2l", "addgcn"])
def test_head_forward_and_gradients_equal_the_independent_implementation(family: str) -> None:
    kw = {}
    if family == "mlgcn":  # a real graph: two labels linked, the rest alone
        counts = np.array([[5, 4, 0, 0, 0], [4, 6, 0, 1, 0], [0, 0, 3, 0, 0], [0, 1, 0, 4, 0], [0, 0, 0, 0, 2]])
        kw["cooccurrence"] = Cooccurrence(counts.astype(float), np.diag(counts).astype(float))
    model = _model(family, **kw).eval()  # eval: dropout off, batch norm on running statistics
    with torch.no_grad():  # non-trivial batch-norm statistics and biases, so that they are checked too
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.1)
    fmap = _fmap()
    got = model.head(fmap)
    want = _reference(family, model, fmap)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)

    g = torch.randn(got.shape, generator=torch.Generator().manual_seed(3))
    params = [fmap] + [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    grads = torch.autograd.grad((got * g).sum(), params, allow_unused=True)
    expected = torch.autograd.grad((want * g).sum(), params, allow_unused=True)
    for a, b in zip(grads, expected, strict=True):
        if b is None:
            assert a is None or not a.abs().any()
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_csra_temperatures_are_the_papers_and_lambda_weighs_the_attention() -> None:
    torch.manual_seed(0)
    assert [_model("csra", num_heads=n).temperatures[-1] for n in (1, 2)] == [1.0, math.inf]
    model = _model("csra", num_heads=4, lam=0.0)
    fmap = _fmap()
    base = sum(model.scores(c, fmap).mean(-1) for c in model.convs())
    torch.testing.assert_close(model.head(fmap), base)  # lambda 0: the average-pooled scores alone
    with pytest.raises(MSRNError, match="num_heads must be one of"):
        _model("csra", num_heads=3)


def test_ml_decoder_groups_share_queries_and_queries_are_fixed() -> None:
    model = _model("mldecoder", groups=2).eval()  # 5 labels in 2 groups: 3 outputs per group, the last unused
    assert model.queries.shape == (2, 64) and model.group_fc.shape == (2, 64, 3)
    assert "queries" not in dict(model.named_parameters())  # ML-Decoder's queries are not learnt
    fmap = _fmap()
    weights = dict(model.named_parameters()) | {"queries": model.queries}
    torch.testing.assert_close(model.head(fmap), mldecoder_logits(fmap, weights, 5, 4), rtol=1e-4, atol=1e-5)


def test_the_max_pooling_baseline_is_a_linear_layer_on_the_maximum() -> None:
    model = _model("baseline_max")
    fmap = _fmap()
    want = fmap.flatten(2).max(-1).values @ model.fc.weight.t() + model.fc.bias
    torch.testing.assert_close(model.head(fmap), want)


def test_label_representations_are_each_labels_learnt_vector() -> None:
    """What msrn compare measures the cosine of: ML-GCN's classifiers, Query2Label's queries, ML-Decoder's
    group output weights in label order."""
    mlgcn, q2l, dec = _model("mlgcn").eval(), _model("q2l"), _model("mldecoder", groups=2)
    fmap = _fmap()
    torch.testing.assert_close(mlgcn.head(fmap), fmap.flatten(2).max(-1).values @ mlgcn.label_representations().t())
    assert q2l.label_representations() is q2l.queries.weight
    reps = dec.label_representations()
    torch.testing.assert_close(reps[4], dec.group_fc[1, :, 1])  # label 4: group 4 // 3 = 1, output 4 % 3 = 1
    for family in FAMILIES:
        assert _model(family).label_representations().shape[0] == len(LABELS)


def test_every_head_and_size_is_registered() -> None:
    names = set(list_models())
    for family in FAMILIES:
        assert {f"{family}_{s}" for s in ("resnet101", "resnet50", "resnet18", "tiny", "timm")} <= names
    with pytest.raises(MSRNError, match="timm model name"):
        create_model("csra_timm", labels=LABELS)
    with pytest.raises(MSRNError, match="csra_tiny: .*unexpected keyword"):
        create_model("csra_tiny", labels=LABELS, depth=3)


def test_the_resnet101_models_have_the_papers_widths() -> None:
    """ML-GCN 300 -> 1024 -> 2048, Query2Label D = 2048 with FFN 8192, ML-Decoder D = 768, ADD-GCN d' = 1024."""
    model = create_model("mlgcn_resnet101", num_classes=3)
    assert (model.gc1.shape, model.gc2.shape) == ((300, 1024), (1024, 2048))
    q2l = create_model("q2l_resnet101", num_classes=3).settings
    assert (q2l["dim"], q2l["feedforward"], q2l["heads"], q2l["encoder_layers"], q2l["decoder_layers"]) == (
        2048, 8192, 4, 1, 2
    )  # fmt: skip
    assert create_model("mldecoder_resnet101", num_classes=3).settings["dim"] == 768
    assert create_model("addgcn_resnet101", num_classes=3).transform.out_channels == 1024


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_round_trip_keeps_the_logits_and_init_keeps_the_weights(family: str, tmp_path: Path) -> None:
    model = _model(family).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "m.pt"
    torch.save(model_state(model, 64), path)
    loaded = load_checkpoint(path)
    assert loaded.model.labels == LABELS and type(loaded.model) is type(model)
    torch.testing.assert_close(loaded.model(x), model(x))
    # --init into a model of 3 other labels: the label-shaped layers start afresh, the rest is taken
    from msrn.engine.run_start import init_from_checkpoint

    fresh = create_model(f"{family}_tiny", labels=["a", "b", "c"])
    init_from_checkpoint(fresh, str(path))
    torch.testing.assert_close(fresh.backbone.conv1.weight, model.backbone.conv1.weight)


@pytest.mark.parametrize("family", ["csra", "mldecoder", "q2l", "addgcn"])
def test_explanations_are_the_heads_attention_and_sum_to_one(family: str) -> None:
    model = _model(family).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    logits, idx, maps = explained_forward(model, x, 2)
    torch.testing.assert_close(logits, model(x))
    assert len(maps) == 1 and maps[0].shape == (2, 2, 2, 2)
    torch.testing.assert_close(maps[0].sum((2, 3)), torch.ones(2, 2))
    if family == "csra":  # the first head's softmax(T s_c) over positions, T = 1
        fmap = model.features(x)
        w = model.heads[0].weight
        s = (torch.einsum("bdhw,cd->bchw", fmap, w.flatten(1)) / w.flatten(1).norm(dim=1)[:, None, None]).flatten(2)
        want = torch.softmax(s, -1)[torch.arange(2)[:, None], idx].reshape(2, 2, 2, 2)
        torch.testing.assert_close(maps[0], want)
    with pytest.raises(MSRNError, match="head without per-label spatial attention"):
        attention_maps(_model("mlgcn").eval(), x, [0])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_few_training_steps_change_the_head_and_the_backbone(family: str) -> None:
    model = _model(family).train()
    groups = model.param_groups(0.1, 0.01)
    assert [g["name"] for g in groups] == ["backbone", "head"] and all(g["params"] for g in groups)
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 1, 0, 0], [1, 1, 0, 0, 1], [0, 0, 1, 0, 1]], dtype=torch.float32)
    for _ in range(3):
        loss = torch.nn.functional.multilabel_soft_margin_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert math.isfinite(loss.item())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "backbone.conv1.weight" in changed
    assert changed - {n for n in changed if n.startswith("backbone.")}


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_export_matches_pytorch(family: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from msrn.inference.export import export_onnx

    model = _model(family).eval()
    diff = export_onnx(model, tmp_path / "m.onnx", image_size=64)
    assert diff < 1e-3


# -- the peers' published checkpoints, written here in their own key layouts ---------------------------------


def _torchvision_state(arch: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return ResNet(arch).state_dict()


def _voc_graph() -> np.ndarray:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 30, (20, 20)).astype(float)
    counts = counts + counts.T
    nums = counts.max(1) + 10
    np.fill_diagonal(counts, nums)
    return adjacency(Cooccurrence(counts, nums), 0.4).astype(np.float32)


def test_an_ml_gcn_checkpoint_loads_with_its_logits(tmp_path: Path) -> None:
    """ML-GCN's layout: {'epoch','arch','state_dict','best_score'}, `module.features.N.*` from DataParallel,
    gc1.weight (300 x 256 on ResNet-18), gc2.weight, A; the word vectors come from the GloVe file given."""
    sequential = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    backbone = _torchvision_state("resnet18", 0)
    state = {f"module.features.{sequential[k.split('.')[0]]}.{k.split('.', 1)[1]}": v for k, v in backbone.items()}
    g = torch.Generator().manual_seed(1)
    w1, w2, a = torch.randn(300, 256, generator=g) * 0.05, torch.randn(256, 512, generator=g) * 0.05, _voc_graph()
    state.update({"module.gc1.weight": w1, "module.gc2.weight": w2, "module.A": torch.from_numpy(a)})
    path = tmp_path / "voc_checkpoint.pth.tar"
    torch.save({"epoch": 20, "arch": "resnet101", "state_dict": state, "best_score": 93.0}, path)
    vectors = np.random.default_rng(2).standard_normal((20, 300)).astype(np.float32)

    model = load_checkpoint(path, word_vectors=vectors).model
    assert type(model).__name__ == "MLGCN" and model.labels == list(REFERENCE_LABELS["voc2007"])
    x = torch.randn(2, 3, 64, 64, generator=g)
    resnet = ResNet("resnet18").eval()
    resnet.load_state_dict(backbone)
    with torch.no_grad():
        want = mlgcn_logits(resnet.forward_features(x)[-1], torch.from_numpy(vectors), torch.from_numpy(a), w1, w2)
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(MSRNError, match="ML-GCN checkpoint, which holds no label vectors"):
        load_checkpoint(path, dataset="csv")


def test_a_csra_checkpoint_loads_with_coco_s_published_setting_and_names_what_it_drops(tmp_path: Path) -> None:
    """CSRA's layout: a bare state dict of torchvision's ResNet and classifier.multi_head.<h>.head.weight; COCO's
    80 labels give its published 4 heads with lambda 0.5, outputs in COCO's category-id order, and its ResNet sees
    [0, 1] pixels (CSRA normalises with mean 0, std 1) where msrn's input is ImageNet-normalised."""
    backbone = _torchvision_state("resnet18", 0)
    g = torch.Generator().manual_seed(1)
    heads = [torch.randn(80, 512, 1, 1, generator=g) * 0.05 for _ in range(4)]
    state = dict(backbone) | {f"classifier.multi_head.{i}.head.weight": w for i, w in enumerate(heads)}
    state["loss_scale"] = torch.ones(1)  # a key with no place in the model: named, not silently lost
    path = tmp_path / "CSRA_R18_COCO.pth"
    torch.save(state, path)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_checkpoint(path).model
    assert any("loss_scale" in str(w.message) for w in caught)
    assert model.labels[:3] == ["person", "bicycle", "car"] and sorted(model.labels) == sorted(
        REFERENCE_LABELS["coco2014"]
    )
    assert model.settings == {"num_heads": 4, "lam": 0.5, "pixels": "unit"}
    resnet = ResNet("resnet18").eval()
    resnet.load_state_dict(backbone)
    unit = torch.rand(2, 3, 64, 64, generator=g)  # the image as CSRA's code feeds it
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = (unit - mean) / std  # as msrn feeds it
    with torch.no_grad():
        fmap = resnet.forward_features(unit)[-1]
        torch.testing.assert_close(model(x), csra_logits(fmap, heads, [1, 2, 4, 99], 0.5), rtol=1e-4, atol=1e-4)
        overridden = load_checkpoint(path, lam=0.2).model
        torch.testing.assert_close(overridden(x), csra_logits(fmap, heads, [1, 2, 4, 99], 0.2), rtol=1e-4, atol=1e-4)
        # msrn's COCO reader sorts the labels by name: the outputs follow that order, each label keeping its scores
        by_name = sorted(model.labels)
        evaluated = load_checkpoint(path, labels=by_name, dataset="coco2014").model
        assert evaluated.labels == by_name
        column = [model.labels.index(name) for name in by_name]
        torch.testing.assert_close(evaluated(x), model(x)[:, column])


def test_a_peer_checkpoint_gives_its_backbone_to_pretrained(tmp_path: Path) -> None:
    backbone = _torchvision_state("resnet18", 3)
    path = tmp_path / "csra.pth"
    torch.save(dict(backbone) | {"classifier.multi_head.0.head.weight": torch.randn(20, 512, 1, 1)}, path)
    model = create_model("baseline_max_resnet18", labels=LABELS, pretrained=str(path))
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, backbone["layer4.1.conv2.weight"])


def test_a_voc_csra_checkpoint_takes_one_head_and_lambda_0_1(tmp_path: Path) -> None:
    state = dict(_torchvision_state("resnet18", 0))
    state["classifier.multi_head.0.head.weight"] = torch.randn(20, 512, 1, 1)
    model = load_checkpoint(state).model
    assert model.settings == {"num_heads": 1, "lam": 0.1, "pixels": "unit"} and model.labels[0] == "aeroplane"
    three = dict(state) | {"classifier.multi_head.0.head.weight": torch.randn(3, 512, 1, 1)}
    with pytest.raises(MSRNError, match="does not record lambda"):
        load_checkpoint(three)


def test_an_add_gcn_checkpoint_loads_with_its_logits() -> None:
    """ADD-GCN's layout: features.N, fc (the SAM conv), conv_transform, gcn.* as 1x1 Conv1d, last_linear, mask_mat."""
    sequential = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    backbone = _torchvision_state("resnet18", 0)
    state = {f"features.{sequential[k.split('.')[0]]}.{k.split('.', 1)[1]}": v for k, v in backbone.items()}
    c, d, h = 20, 512, 256
    g = torch.Generator().manual_seed(4)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.05

    shapes = {
        "fc.weight": (c, d, 1, 1), "conv_transform.weight": (h, d, 1, 1), "conv_transform.bias": (h,),
        "gcn.static_adj.0.weight": (c, c, 1), "gcn.static_weight.0.weight": (h, h, 1),
        "gcn.static_weight.0.bias": (h,), "gcn.conv_global.weight": (h, h, 1), "gcn.conv_global.bias": (h,),
        "gcn.bn_global.bias": (h,), "gcn.bn_global.running_mean": (h,), "gcn.conv_create_co_mat.weight": (c, 2 * h, 1),
        "gcn.conv_create_co_mat.bias": (c,), "gcn.dynamic_weight.weight": (h, h, 1), "gcn.dynamic_weight.bias": (h,),
        "last_linear.weight": (c, h, 1), "last_linear.bias": (c,),
    }  # fmt: skip
    state |= {k: r(*shape) for k, shape in shapes.items()}
    state |= {
        "gcn.bn_global.weight": 1 + r(h),
        "gcn.bn_global.running_var": 1 + r(h).abs(),
        "gcn.bn_global.num_batches_tracked": torch.tensor(7),
        "mask_mat": torch.eye(c),
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_checkpoint({"epoch": 1, "model_name": "ADD_GCN", "state_dict": state, "best_score": 0}).model
    assert any("mask_mat" in str(w.message) for w in caught)
    resnet = ResNet("resnet18").eval()
    resnet.load_state_dict(backbone)
    x = torch.randn(2, 3, 64, 64, generator=g)
    # the independent implementation's names for ADD-GCN's tensors (its 1x1 Conv1d kernels without the last axis)
    names = {
        "fc.weight": "sam.weight", "conv_transform.weight": "transform.weight", "conv_transform.bias": "transform.bias",
        "gcn.static_adj.0.weight": "static_adj.weight", "gcn.static_weight.0.weight": "static_weight.weight",
        "gcn.static_weight.0.bias": "static_weight.bias", "gcn.conv_global.weight": "global_fc.weight",
        "gcn.conv_global.bias": "global_fc.bias", "gcn.conv_create_co_mat.weight": "adj_fc.weight",
        "gcn.conv_create_co_mat.bias": "adj_fc.bias", "gcn.dynamic_weight.weight": "dynamic_weight.weight",
        "gcn.dynamic_weight.bias": "dynamic_weight.bias", "last_linear.weight": "last.weight",
        "last_linear.bias": "last.bias", "gcn.bn_global.weight": "global_bn.weight",
        "gcn.bn_global.bias": "global_bn.bias",
        "gcn.bn_global.running_mean": "global_bn.running_mean", "gcn.bn_global.running_var": "global_bn.running_var",
    }  # fmt: skip
    p = {new: state[old][..., 0] if state[old].dim() == 3 else state[old] for old, new in names.items()}
    with torch.no_grad():
        torch.testing.assert_close(model(x), addgcn_logits(resnet.forward_features(x)[-1], p), rtol=1e-4, atol=1e-4)


def test_a_query2label_checkpoint_loads_with_its_logits() -> None:
    """Query2Label's layout: backbone.0.body.* with frozen batch norms (no num_batches_tracked), backbone.1.pe,
    query_embed, fc.W / fc.b, DETR's encoder and self-attention-free decoder layers, the decoder norm."""
    resnet = ResNet("resnet18").eval()
    backbone = {k: v for k, v in _torchvision_state("resnet18", 0).items() if not k.endswith("num_batches_tracked")}
    resnet.load_state_dict(backbone, strict=False)
    d, ff, c = 512, 64, 80
    g = torch.Generator().manual_seed(5)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.05

    state = {f"module.backbone.0.body.{k}": v for k, v in backbone.items()}
    state |= {"module.backbone.1.pe": r(1, d, 2, 2), "module.query_embed.weight": r(c, d), "module.fc.W": r(1, c, d)}
    state |= {"module.fc.b": r(1, c)}

    def layer(prefix: str, attention: str, norms: tuple[str, ...]) -> None:
        state.update({
            f"{prefix}{attention}.in_proj_weight": r(3 * d, d), f"{prefix}{attention}.in_proj_bias": r(3 * d),
            f"{prefix}{attention}.out_proj.weight": r(d, d), f"{prefix}{attention}.out_proj.bias": r(d),
            f"{prefix}linear1.weight": r(ff, d), f"{prefix}linear1.bias": r(ff),
            f"{prefix}linear2.weight": r(d, ff), f"{prefix}linear2.bias": r(d),
        })  # fmt: skip
        for norm in norms:
            state.update({f"{prefix}{norm}.weight": 1 + r(d), f"{prefix}{norm}.bias": r(d)})

    layer("module.transformer.encoder.layers.0.", "self_attn", ("norm1", "norm2"))
    for n in range(2):
        layer(f"module.transformer.decoder.layers.{n}.", "multihead_attn", ("norm2", "norm3"))
    state |= {"module.transformer.decoder.norm.weight": 1 + r(d), "module.transformer.decoder.norm.bias": r(d)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_checkpoint({"epoch": 80, "state_dict": state, "best_mAP": 84.9}).model
    assert any("backbone.1.pe" in str(w.message) for w in caught)
    assert type(model).__name__ == "Query2Label" and model.labels[0] == "person"
    x = torch.randn(2, 3, 64, 64, generator=g)
    plain = {k.removeprefix("module."): v for k, v in state.items()}
    with torch.no_grad():
        want = q2l_logits(resnet.forward_features(x)[-1], plain, heads=4, enc=1, dec=2)
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)


# -- the whole pipeline by name ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_msrn_train_resume_predict_explain_and_folder_by_name(family: str, tmp_path: Path) -> None:
    data = make_csv(tmp_path / "data", n_train=12, n_test=4)
    out = tmp_path / "run"
    assert cli(tiny_train_args(data, out, "--model", f"{family}_tiny", "--ema", "0.9", batch_size=4, epochs=1)) == 0
    assert cli(tiny_train_args(data, out, "--model", f"{family}_tiny", "--resume", batch_size=4, epochs=2)) == 0
    folder = tmp_path / "folder"
    assert cli(["export", "--checkpoint", str(out / "best.pt"), "--format", "hub", "--out", str(folder)]) == 0
    predictor = msrn.load(str(folder))
    image = str(sorted(data.parent.rglob("*.png"))[0])
    assert len(predictor.predict([image])) == 1
    if predictor.model.explainable:
        explanation = predictor.explain([image], k=2)[0]
        assert (explanation.depths, explanation.model) == ((3,), predictor.model.title)
