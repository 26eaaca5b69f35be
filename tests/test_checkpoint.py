"""Checkpoints: reference checkpoints against an independent implementation of the spec, strict
key handling, the project's own format, refusing code-carrying files, and ImageNet weights."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import randomise_batchnorms, reference_names
from reference_fakes import pin_generated_files
from reference_impl import random_reference_state, reference_forward

from msrn.checkpoint import read_checkpoint
from msrn.data.apparel import APPAREL_LABELS
from msrn.errors import MSRNError
from msrn.models import create_model, load_checkpoint, model_state
from msrn.models._pretrained import load_pretrained_backbone
from msrn.models._reference_layout import checkpoint_weights, map_reference_state
from msrn.models._state import match_init_state
from msrn.models.resnet import ResNet
from msrn.safe_pickle import load_numpy_pickle

DATASETS = ["voc", "coco", "nuswide", "apparel"]
UNUSED = ["B", "W", "resnet_101.conv_buffer0.bias", "resnet_101.conv_buffer0.weight"]
SEEDS = {"voc": 1, "coco": 2, "nuswide": 3, "apparel": 4}


@pytest.fixture(scope="module")
def key_spec(reference_data: Path) -> dict:
    return json.loads((reference_data / "official-checkpoint-keys.json").read_text())


def _label_files(reference_data: Path, ds: str) -> tuple[Path, Path]:
    return reference_data / ds / f"{ds}_glove_word2vec.pkl", reference_data / ds / f"{ds}_adj.pkl"


def _reference_logits(sd: dict, x: torch.Tensor, reference_data: Path, ds: str, **kw):
    wv_path, adj_path = _label_files(reference_data, ds)
    adj = load_numpy_pickle(adj_path)
    # the model stores its label vectors as float32, so hand the reference the same values
    wv = np.asarray(load_numpy_pickle(wv_path), dtype=np.float32)
    with torch.no_grad():
        return reference_forward(sd, x, wv, adj["adj"], adj["nums"], dtype=torch.float32, **kw)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def _wrap(sd: dict) -> dict:
    return {"epoch": 1, "arch": "resnet101", "state_dict": sd, "best_score": 0}


def _load_reference(source, reference_data: Path, ds: str):
    wv_path, adj_path = _label_files(reference_data, ds)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_checkpoint(source, word_vectors=wv_path, cooccurrence=adj_path).model
    return model, [str(w.message) for w in caught]


# ----------------------------------------------------------------------------- reference parity


@pytest.fixture(scope="module")
def apparel_state(key_spec: dict) -> dict:
    return random_reference_state(key_spec["apparel"]["keys"], seed=SEEDS["apparel"])


def _first_version(sd: dict) -> dict:
    """The reference's first release carries ProjectMs.{weight,bias} (a 512x512 linear) instead of W/B."""
    sd = {k: v for k, v in sd.items() if k not in ("W", "B")}
    g = torch.Generator().manual_seed(99)
    sd["ProjectMs.weight"] = torch.randn(512, 512, generator=g)
    sd["ProjectMs.bias"] = torch.randn(512, generator=g)
    return sd


@pytest.mark.parametrize("ds", DATASETS)
def test_reference_checkpoint_matches_independent_forward(
    ds: str, key_spec: dict, reference_data: Path, tmp_path: Path, request: pytest.FixtureRequest
):
    spec = key_spec[ds]
    if ds == "apparel":  # shared with the error tests below; the first-version variant is checked on it
        sd = request.getfixturevalue("apparel_state")
    else:
        sd = random_reference_state(spec["keys"], seed=SEEDS[ds])
    assert {k: list(v.shape) for k, v in sd.items()} == spec["keys"]
    unused = UNUSED
    if ds == "apparel":
        sd = _first_version(sd)
        unused = ["ProjectMs.bias", "ProjectMs.weight", *UNUSED[2:]]
    if ds in ("voc", "apparel"):
        path = tmp_path / f"{ds}_checkpoint_best.pth.tar"
        torch.save(_wrap(sd), path)
        source = path
    else:
        # COCO and NUS-WIDE hold a 264M-weight fc1 (1 GB): skip the disk round trip to keep the suite fast;
        # load_checkpoint takes the same dict that torch.load returns
        source = _wrap(sd)
    model, msgs = _load_reference(source, reference_data, ds)
    assert not model.training
    assert model.cfg.num_classes == spec["num_classes"] and model.cfg.num_groups == spec["num_groups"]
    # the loader names every dropped unused key, and nothing else is dropped
    drop_msgs = [m for m in msgs if "dropped" in m]
    assert len(drop_msgs) == 1, msgs
    named = drop_msgs[0].split(":")[-1].replace(",", " ").split()
    assert sorted(named) == unused

    shapes = [(1, 3, 64, 64)] + ([(2, 3, 128, 128)] if ds == "voc" else [])
    for i, shape in enumerate(shapes):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(10 + i))
        with torch.no_grad():
            got = model(x)
        want, want_gloss = _reference_logits(sd, x, reference_data, ds, return_group_loss=True)
        assert got.shape == (shape[0], spec["num_classes"])
        assert torch.isfinite(want).all() and want.abs().max() > 0.1  # the random weights stay in a sane range
        assert _rel_err(got, want) <= 1e-4, (ds, shape)
    with torch.no_grad():
        gloss = model.semantics().group_loss
    assert float(gloss) == pytest.approx(float(want_gloss), rel=1e-4)


@pytest.mark.parametrize(
    "key, named",  # the key in the reference's file, and as the message names it (the model's name)
    [
        ("resnet_101.layer3.5.conv2.weight", "backbone.layer3.5.conv2.weight"),
        ("label_embed.layers.1.a", "label_gat.layers.1.a"),
        ("fc2.weight", "fc2.weight"),  # what tells the label count: read before mapping
    ],
)
def test_reference_missing_key_is_an_error(key: str, named: str, apparel_state: dict, reference_data: Path):
    sd = {k: v for k, v in apparel_state.items() if k != key}
    with pytest.raises(MSRNError) as err:
        _load_reference(_wrap(sd), reference_data, "apparel")
    assert named in str(err.value)


@pytest.mark.parametrize(
    "key, named",
    [("resnet_101.conv_buffer3.weight", "conv_buffer3.weight"), ("label_embed.layers.2.W", "label_gat.layers.2.W")],
)
def test_reference_unknown_key_is_an_error(key: str, named: str, apparel_state: dict, reference_data: Path):
    sd = {**apparel_state, key: torch.zeros(4, 4)}
    with pytest.raises(MSRNError) as err:
        _load_reference(_wrap(sd), reference_data, "apparel")
    assert named in str(err.value)
    assert "unexpected" in str(err.value)


@pytest.mark.parametrize("key, shape", [("resnet_101.layer2.1.conv2.weight", (128, 128, 1, 1))])
def test_reference_wrong_shape_is_an_error(key: str, shape: tuple, apparel_state: dict, reference_data: Path):
    sd = {**apparel_state, key: torch.zeros(shape)}
    with pytest.raises(MSRNError) as err:
        _load_reference(_wrap(sd), reference_data, "apparel")
    assert key.removeprefix("resnet_101.") in str(err.value)
    assert str(tuple(shape)) in str(err.value)


def test_reference_checkpoint_needs_label_files(apparel_state: dict, tmp_path: Path, monkeypatch):
    """With a label count no reference dataset has, nothing is fetched and the error names both options."""
    monkeypatch.setenv("MSRN_REFERENCE_URL", (tmp_path / "absent").as_uri())
    sd = {**apparel_state, "fc2.weight": torch.zeros(7, 2048), "fc2.bias": torch.zeros(7)}
    with pytest.raises(MSRNError, match=r"7 labels match no reference files.*--word-vectors FILE.*--cooccurrence FILE"):
        load_checkpoint(_wrap(sd))
    with pytest.raises(MSRNError, match="dataset csv has no reference files"):
        load_checkpoint(_wrap(apparel_state), dataset="csv")


@pytest.fixture
def reference_mirror(tmp_path: Path, reference_data: Path, monkeypatch) -> Path:
    """The reference's label files served from a file:// folder (MSRN_REFERENCE_URL), fetched into an empty cache."""
    folder = tmp_path / "mirror"
    for ds in DATASETS:
        (folder / ds).mkdir(parents=True)
        for path in _label_files(reference_data, ds):
            (folder / ds / path.name).write_bytes(path.read_bytes())
    pin_generated_files(monkeypatch, reference_data)
    monkeypatch.setenv("MSRN_REFERENCE_URL", folder.as_uri())
    monkeypatch.setenv("MSRN_CACHE", str(tmp_path / "cache"))
    return folder


@pytest.mark.filterwarnings("ignore:.*dropped unused reference parameters")
def test_reference_checkpoint_takes_the_reference_files(apparel_state: dict, reference_data: Path, reference_mirror):
    """No files given: the dataset follows from the label count (11: apparel), its pickles are fetched and
    the outputs named; the model is the one built from the explicit pickles."""
    explicit, _ = _load_reference(_wrap(apparel_state), reference_data, "apparel")
    fetched = load_checkpoint(_wrap(apparel_state)).model
    assert fetched.labels == explicit.labels == list(APPAREL_LABELS)
    want, got = explicit.state_dict(), fetched.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert sorted(p.name for p in (reference_mirror.parent / "cache").iterdir()) == [
        "apparel_adj.pkl",
        "apparel_glove_word2vec.pkl",
    ]


@pytest.mark.filterwarnings("ignore:.*dropped unused reference parameters")
def test_reference_checkpoint_saved_under_data_parallel_loads(apparel_state: dict, reference_data: Path):
    """A reference checkpoint saved from a DataParallel/DDP-wrapped model (every key `module.resnet_101...`,
    as peers' DDP checkpoints carry) loads as the plain one does. It used to be refused as "neither an msrn
    checkpoint nor a reference MSRN checkpoint" before the mapping's removeprefix("module.") could run;
    mutation: drop that removeprefix (reference_layout.reference_state), and this load fails again."""
    wrapped = _wrap({f"module.{k}": v for k, v in apparel_state.items()})
    model, msgs = _load_reference(wrapped, reference_data, "apparel")
    assert any("dropped" in m for m in msgs), msgs
    got = model.state_dict()
    assert torch.equal(got["backbone.conv1.weight"], apparel_state["resnet_101.conv1.weight"])
    assert torch.equal(got["depth_conv.0.weight"], apparel_state["resnet_101.conv_buffer1.weight"])
    assert torch.equal(got["head.fc2.weight"], apparel_state["fc2.weight"])
    plain, _ = _load_reference(_wrap(apparel_state), reference_data, "apparel")
    want = plain.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    # the --pretrained / --init path reads the same weights
    mapped, arch, dropped = checkpoint_weights(wrapped, "ddp.pth.tar")
    assert arch == "resnet101"
    assert "resnet_101.conv_buffer0.weight" in dropped
    assert torch.equal(mapped["backbone.layer4.2.conv3.weight"], apparel_state["resnet_101.layer4.2.conv3.weight"])


def test_reference_checkpoint_refuses_another_datasets_labels(apparel_state: dict, reference_mirror):
    with pytest.raises(MSRNError, match="11 labels, voc2007 20"):
        load_checkpoint(_wrap(apparel_state), dataset="voc2007")
    swapped = list(APPAREL_LABELS[1::-1] + APPAREL_LABELS[2:])  # the data's labels in another order
    with pytest.raises(MSRNError, match="label 0 is 'blue'"):
        load_checkpoint(_wrap(apparel_state), labels=swapped, dataset="apparel")
    assert not (reference_mirror.parent / "cache").exists()  # refused before anything was fetched


@pytest.mark.filterwarnings("ignore:.*dropped unused reference parameters")
def test_predict_and_evaluate_on_a_reference_checkpoint_need_only_the_checkpoint(
    apparel_state: dict, reference_mirror, tmp_path: Path, capsys
):
    from PIL import Image

    from msrn.cli import main as cli_main

    ckpt = tmp_path / "apparel_checkpoint.pth.tar"
    torch.save(_wrap(apparel_state), ckpt)
    data = tmp_path / "apparel"
    for i, folder in enumerate(["black_dress", "blue_pants", "red_shoes", "white_shorts"]):
        (data / folder).mkdir(parents=True)
        Image.new("RGB", (40, 30), (60 * i, 90, 200 - 40 * i)).save(data / folder / f"{i}.jpg")
    argv = [
        "predict",
        "--checkpoint",
        str(ckpt),
        "--cooccurrence",
        "reference",
        str(data / "red_shoes"),
        "--threshold",
        "0",
        "--image-size",
        "64",
    ]
    assert cli_main(argv) == 0
    records = json.loads(capsys.readouterr().out)
    assert sorted(x["label"] for x in records[0]["labels"]) == sorted(APPAREL_LABELS)
    out = tmp_path / "metrics.json"
    argv = [
        "evaluate",
        "--dataset",
        "apparel",
        "--data",
        str(data),
        "--checkpoint",
        str(ckpt),
        "--image-size",
        "64",
        "--workers",
        "0",
        "--json",
        str(out),
    ]
    assert cli_main(argv) == 0
    assert json.loads(out.read_text())["labels"] == list(APPAREL_LABELS)


@pytest.mark.parametrize("ds", DATASETS)
def test_reference_keys_map_onto_every_model_parameter(ds: str, key_spec: dict):
    """Nothing is silently ignored: apart from the allowed unused keys, the reference keys are exactly
    the model's state (less the label buffers), with the same shapes."""
    spec = key_spec[ds]
    state = {k: torch.empty(v, device="meta") for k, v in spec["keys"].items()}
    mapped, dropped = map_reference_state(state)
    assert sorted(dropped) == UNUSED
    with torch.device("meta"):
        # K comes from pool_ratio alone: int(pool_ratio * C) reproduces every reference checkpoint
        model = create_model("msrn_resnet101", num_classes=spec["num_classes"], pool_ratio=spec["pool_ratio"])
    assert model.cfg.num_groups == spec["num_groups"] == int(spec["pool_ratio"] * spec["num_classes"])
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in ("word_vectors", "adjacency")}
    assert set(model.state_dict()) - set(own) == {"word_vectors", "adjacency"}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == own


# ----------------------------------------------------------------------------- project checkpoints


def _tiny(num_classes: int = 5, seed: int = 0, **kw):
    torch.manual_seed(seed)
    labels = [f"label{i}" for i in range(num_classes)]
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 6, (num_classes, num_classes))
    counts = np.triu(counts, 1) + np.triu(counts, 1).T
    nums = counts.sum(1) // 2 + 3
    return create_model(
        "msrn_tiny",
        labels=labels,
        word_vectors=rng.standard_normal((num_classes, 300)),
        cooccurrence=(counts, nums),
        **kw,
    )


def test_project_checkpoint_round_trip(tmp_path: Path):
    model = _tiny().eval()
    path = tmp_path / "best.pt"
    torch.save(model_state(model, image_size=64), path)
    loaded = load_checkpoint(path).model
    assert type(loaded) is type(model) and not loaded.training
    assert load_checkpoint(path).image_size == 64
    assert loaded.labels == model.labels == [f"label{i}" for i in range(5)]
    assert torch.equal(loaded.adjacency, model.adjacency) and torch.equal(loaded.word_vectors, model.word_vectors)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_project_checkpoint_keeps_its_own_vectors(tmp_path: Path):
    model = _tiny().eval()
    path = tmp_path / "best.pt"
    torch.save(model_state(model, image_size=64), path)
    other = np.ones((5, 300), dtype=np.float32)
    with pytest.warns(UserWarning, match="ignored"):
        loaded = load_checkpoint(path, word_vectors=other).model
    assert torch.equal(loaded.word_vectors, model.word_vectors)
    with pytest.raises(MSRNError, match="labels"):
        load_checkpoint(path, labels=["a", "b", "c", "d", "e"])


def test_baseline_checkpoint_round_trip(tmp_path: Path):
    model = create_model("baseline_tiny", labels=["a", "b", "c"]).eval()
    path = tmp_path / "baseline.pt"
    torch.save(model_state(model, image_size=32), path)
    loaded = load_checkpoint(path).model
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.labels == ["a", "b", "c"] and load_checkpoint(path).image_size == 32


def test_baseline_checkpoint_refuses_other_label_names(tmp_path: Path):
    """Same count, other names: a baseline is checked like MSRN, not evaluated silently."""
    path = tmp_path / "baseline.pt"
    torch.save(model_state(create_model("baseline_tiny", labels=["a", "b", "c"]), image_size=32), path)
    assert load_checkpoint(path, labels=["a", "b", "c"]).model.labels == ["a", "b", "c"]
    with pytest.raises(MSRNError, match="trained on labels"):
        load_checkpoint(path, labels=["cat", "dog", "bird"])


def test_project_checkpoint_with_a_missing_weight_is_an_error(tmp_path: Path):
    ckpt = model_state(_tiny(), image_size=64)
    del ckpt["state_dict"]["word_proj.bias"]
    torch.save(ckpt, tmp_path / "c.pt")
    with pytest.raises(MSRNError, match="word_proj.bias"):
        load_checkpoint(tmp_path / "c.pt")


def test_truncated_and_garbage_checkpoints_are_errors(tmp_path: Path):
    model = _tiny()
    good = tmp_path / "good.pt"
    torch.save(model_state(model, image_size=64), good)
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 100):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(MSRNError):
            load_checkpoint(bad)
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(MSRNError):
        read_checkpoint(noise)
    with pytest.raises(MSRNError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(MSRNError, match="dict"):
        read_checkpoint(tmp_path / "list.pt")
    torch.save({"state_dict": {"x": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(MSRNError, match="neither"):
        load_checkpoint(tmp_path / "other.pt")


class _SystemPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _OpenPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import builtins

        return builtins.open, (str(self.marker), "w")


@pytest.mark.parametrize("payload", [_SystemPayload, _OpenPayload])
def test_code_carrying_checkpoint_is_refused_without_running_it(payload, tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"fc1.weight": torch.zeros(2)}, "extra": payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(MSRNError, match="refusing"):
        read_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(MSRNError):
        load_checkpoint(path)
    assert not marker.exists()
    # a plain pickle (not torch's zip format) with the same payload is refused too
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(pickle.dumps(payload(marker), protocol=2))
    with pytest.raises(MSRNError):
        read_checkpoint(legacy)
    assert not marker.exists()


# ----------------------------------------------------------------------------- ImageNet weights


def _fake_imagenet(tmp_path: Path, seed: int = 0) -> tuple[Path, dict]:
    torch.manual_seed(seed)
    src = ResNet("resnet_tiny")
    for name, buf in src.named_buffers():
        if name.endswith("running_mean") or name.endswith("running_var"):
            buf.copy_(torch.rand_like(buf) + 0.5)
    state = dict(src.state_dict())
    state["fc.weight"] = torch.randn(1000, src.channels[-1])
    state["fc.bias"] = torch.randn(1000)
    raw = tmp_path / "raw.pth"
    torch.save(state, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    path = tmp_path / "src" / f"resnet18-{digest[:8]}.pth"
    path.parent.mkdir()
    raw.rename(path)
    return path, state


def _assert_backbone_equals(model, state: dict) -> None:
    own = model.backbone.state_dict()
    assert set(own) == {k for k in state if not k.startswith("fc.")}
    for k, v in own.items():
        assert torch.equal(v, state[k]), k


def test_pretrained_from_path(tmp_path: Path):
    path, state = _fake_imagenet(tmp_path)
    model = create_model("msrn_tiny", num_classes=3, pretrained=path)
    _assert_backbone_equals(model, state)


def test_pretrained_from_url_uses_the_cache(tmp_path: Path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MSRN_CACHE", str(cache))
    path, state = _fake_imagenet(tmp_path)
    model = create_model("msrn_tiny", num_classes=3, pretrained=path.as_uri())
    _assert_backbone_equals(model, state)
    assert [p.name for p in cache.iterdir()] == [path.name]
    path.unlink()  # the second call can only succeed from the cache
    again = create_model("msrn_tiny", num_classes=3, pretrained=path.as_uri())
    _assert_backbone_equals(again, state)


def test_pretrained_hash_mismatch_leaves_nothing_in_cache(tmp_path: Path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MSRN_CACHE", str(cache))
    path, _ = _fake_imagenet(tmp_path)
    real = path.name.split("-")[1][:8]
    wrong = path.with_name(f"resnet18-{'0' if real[0] != '0' else '1'}{real[1:]}.pth")
    path.rename(wrong)
    with pytest.raises(MSRNError, match="SHA-256"):
        create_model("msrn_tiny", num_classes=3, pretrained=wrong.as_uri())
    assert not cache.exists() or list(cache.iterdir()) == []


def test_pretrained_missing_key_is_an_error(tmp_path: Path):
    _, state = _fake_imagenet(tmp_path)
    del state["layer2.0.bn1.running_var"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(MSRNError, match=r"layer2\.0\.bn1\.running_var"):
        create_model("msrn_tiny", num_classes=3, pretrained=path)
    state["layer2.0.bn1.running_var"] = torch.ones(7)
    torch.save(state, path)
    with pytest.raises(MSRNError, match=r"layer2\.0\.bn1\.running_var"):
        create_model("msrn_tiny", num_classes=3, pretrained=path)


# ----------------------------------------------------------------------------- backbones of checkpoints


def _reference_layout(spec: dict, seed: int) -> dict:
    """A reference checkpoint in the exact layout; its fc1 is a broadcast zero view (right shape, no memory),
    as only the backbone is read from it."""
    keys = dict(spec["keys"])
    fc1 = keys.pop("fc1.weight")
    sd = random_reference_state(keys, seed=seed)
    sd["fc1.weight"] = torch.zeros(()).expand(*fc1)
    return _wrap(sd)


def test_pretrained_takes_the_backbone_of_a_reference_checkpoint(key_spec: dict, tmp_path: Path):
    """The paper's VOC recipe: the COCO model's backbone, conv_buffer1/2 included, into a new ResNet-101 MSRN."""
    ckpt = _reference_layout(key_spec["coco"], seed=5)
    path = tmp_path / "coco_checkpoint.pth.tar"
    torch.save(ckpt, path)
    sd = ckpt["state_dict"]
    model = create_model("msrn_resnet101", num_classes=3)
    fresh = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("backbone.", "depth_conv"))}
    taken = load_pretrained_backbone(model, path)
    assert "resnet101 backbone (624 tensors) and conv_buffer1/2 of the reference MSRN" in taken
    for key, value in reference_names(model.state_dict()).items():
        if key.startswith("backbone."):
            assert torch.equal(value, sd["resnet_101." + key.removeprefix("backbone.")]), key
        elif key.startswith("conv_buffer"):
            assert torch.equal(value, sd["resnet_101." + key]), key
        else:  # the label layers and projections are not taken
            assert torch.equal(value, reference_names(fresh)[key]), key
    with pytest.raises(MSRNError, match="resnet101 backbone but the model's is resnet_tiny"):
        create_model("msrn_tiny", num_classes=3, pretrained=path)


def test_pretrained_takes_the_backbone_of_an_msrn_checkpoint(tmp_path: Path):
    source = _tiny(num_classes=5, seed=1)
    randomise_batchnorms(source, seed=1)
    path = tmp_path / "best.pt"
    torch.save(model_state(source, image_size=64), path)
    model = create_model("msrn_tiny", num_classes=3, pretrained=path)
    own, src = model.state_dict(), source.state_dict()
    for key in own:
        if key.startswith(("backbone.", "depth_conv")):
            assert torch.equal(own[key], src[key]), key
    assert not torch.equal(own["project.0.weight"], src["project.0.weight"])  # only the backbone is taken

    baseline = create_model("baseline_tiny", num_classes=2)
    assert "not used: the model has none" in load_pretrained_backbone(baseline, path)
    assert torch.equal(baseline.backbone.conv1.weight, src["backbone.conv1.weight"])
    torch.save(model_state(baseline, image_size=64), tmp_path / "baseline.pt")
    assert "start afresh" in load_pretrained_backbone(model, tmp_path / "baseline.pt")

    broken = model_state(source, image_size=64)
    del broken["state_dict"]["backbone.layer1.0.bn1.running_var"]
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(MSRNError, match=r"1 missing: layer1\.0\.bn1\.running_var"):
        create_model("msrn_tiny", num_classes=3, pretrained=tmp_path / "broken.pt")
    with pytest.raises(MSRNError, match="resnet_tiny backbone but the model's is resnet18"):
        create_model("msrn_resnet18", num_classes=3, pretrained=path)


# ----------------------------------------------------------------------------- --init


def test_init_state_keeps_what_fits_and_starts_label_layers_afresh():
    """10 labels (2 groups) onto 5 labels (1 group) with 50-wide vectors: word_proj, fc1, fc2 and the group
    assignment start afresh, the label inputs stay the new model's, every other weight is the checkpoint's."""
    given = _tiny(num_classes=10, seed=1).state_dict()
    model = create_model("msrn_tiny", labels=list("abcde"), word_vectors=np.ones((5, 50), np.float32))
    own = model.state_dict()
    state, fresh = match_init_state(own, given, "--init x")
    assert fresh == ["group_pool.assign", "head.fc1", "head.fc2", "word_proj"]
    for key, value in state.items():
        layer = key.rsplit(".", 1)[0]
        expected = own[key] if layer in fresh or key in ("word_vectors", "adjacency") else given[key]
        assert value is expected, key
    model.load_state_dict(state, strict=True)

    same, fresh = match_init_state(_tiny(num_classes=10, seed=2).state_dict(), given, "--init x")
    assert fresh == [] and all(same[k] is given[k] for k in same if k not in ("word_vectors", "adjacency"))


def test_init_state_refuses_what_does_not_belong():
    given = _tiny(num_classes=5, seed=1).state_dict()
    own = _tiny(num_classes=3, seed=2).state_dict()
    with pytest.raises(MSRNError, match="1 unexpected: extra.weight"):
        match_init_state(own, {**given, "extra.weight": torch.zeros(1)}, "--init x")
    with pytest.raises(MSRNError, match=r"1 missing: label_gat\.layers\.0\.a"):
        match_init_state(own, {k: v for k, v in given.items() if k != "label_gat.layers.0.a"}, "--init x")
    # a shape that does not follow the label set means another architecture: an error, not a fresh layer
    with pytest.raises(MSRNError, match=r"wrong shape: project\.1\.weight"):
        match_init_state(own, {**given, "project.1.weight": torch.zeros(64, 1, 1, 1)}, "--init x")
    with pytest.raises(MSRNError, match="missing: fc.weight"):
        match_init_state(create_model("baseline_tiny", num_classes=3).state_dict(), given, "--init x")


@pytest.mark.parametrize("head", ["mlp", "elementwise"])
@pytest.mark.parametrize("labels", [20, 7])
def test_init_state_from_a_reference_layout(labels: int, head: str, key_spec: dict):
    """The VOC checkpoint onto VOC's 20 labels takes every weight; onto 7 labels (1 group) the head starts
    afresh. The reference holds both classifiers: the model's head keeps its own (mlp: fc1/fc2,
    elementwise: W/B), the other and the unused conv_buffer0 are dropped (shapes only: meta tensors)."""
    spec = key_spec["voc"]
    given, arch, dropped = checkpoint_weights(
        _wrap({k: torch.empty(v, device="meta") for k, v in spec["keys"].items()}), "voc.pth.tar", head
    )
    classifier = ["head"] if head == "elementwise" else ["head.fc1", "head.fc2"]  # W, B are the head's own
    other = ("fc1.", "fc2.") if head == "elementwise" else ("B", "W")
    conv_buffer0 = [k for k in UNUSED if k not in ("B", "W")]
    assert arch == "resnet101"
    assert sorted(dropped) == sorted(conv_buffer0 + [k for k in spec["keys"] if k.startswith(other)])
    with torch.device("meta"):
        model = create_model("msrn_resnet101", num_classes=labels, pool_ratio=spec["pool_ratio"], head=head)
    _, fresh = match_init_state(model.state_dict(), given, "--init voc.pth.tar")
    assert fresh == ([] if labels == 20 else ["group_pool.assign", *classifier])


# an msrn_tiny version-1 state's keys outside the backbone, as that format wrote them (mlp head)
VERSION_1_TINY_KEYS = [
    "word_vectors", "adjacency", "conv_buffer1.weight", "conv_buffer1.bias", "conv_buffer2.weight",
    "conv_buffer2.bias", "ProjectM.0.weight", "ProjectM.0.bias", "ProjectM.1.weight", "ProjectM.1.bias",
    "ProjectM.2.weight", "ProjectM.2.bias", "fc_label.weight", "fc_label.bias", "label_embed.layers.0.W",
    "label_embed.layers.0.a", "label_embed.layers.1.W", "label_embed.layers.1.a", "group_embed.layers.0.embed.W",
    "group_embed.layers.0.embed.a", "group_embed.layers.0.assign_mat.W", "group_embed.layers.0.assign_mat.a",
    "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
]  # fmt: skip


def _as_version_1(ckpt: dict) -> dict:
    """A current checkpoint dict rewritten as version 1 wrote it: the old key names, no model name."""
    arch = {k: v for k, v in ckpt["model"].items() if k != "name"}
    state = reference_names(ckpt["state_dict"])
    return {**ckpt, "version": 1, "model": arch, "state_dict": state}


@pytest.mark.parametrize("head", ["mlp", "elementwise"])
def test_version_1_checkpoints_load_into_the_new_layout_with_identical_logits(tmp_path: Path, head: str) -> None:
    torch.manual_seed(0)
    model = create_model("msrn_tiny", labels=["cat", "dog", "person"], head=head).eval()
    randomise_batchnorms(model)
    old = _as_version_1(model_state(model, image_size=64))
    if head == "mlp":
        assert [k for k in old["state_dict"] if not k.startswith("backbone.")] == VERSION_1_TINY_KEYS
    torch.save(old, tmp_path / "v1.pt")
    loaded = load_checkpoint(tmp_path / "v1.pt").model
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.model_name == "msrn_tiny"


def test_checkpoints_are_written_as_version_2_with_the_model_name() -> None:
    ckpt = model_state(create_model("baseline_tiny", num_classes=2), image_size=64)
    assert (ckpt["version"], ckpt["model"]["name"]) == (2, "baseline_tiny")
