"""msrn's peer heads beside the peers' own public code, on the same random weights (issue 31).

For each peer this builds the peer's model from its own checkout (imported through sys.path, never copied:
ML-GCN and ADD-GCN publish no licence, CSRA is AGPL-3.0), draws its weights with a fixed seed, saves them the
way that peer's training code saves a checkpoint, loads that file with `msrn.load_checkpoint` and compares the
logits of both on the same random batch (eval mode). ML-Decoder publishes TResNet checkpoints only, which msrn
does not load, so its head alone is compared: the peer's MLDecoder and msrn's `mldecoder` head on the same
feature map, its weights copied over by the key map below.

No download happens: where a peer's code fetches ImageNet weights (CSRA's `model_zoo.load_url`, torchvision's
`pretrained=True` in ADD-GCN's `get_model` and Query2Label's backbone), the download function is replaced by
one that returns a freshly initialised torchvision ResNet of the depth in the URL (`no_downloads`). Every
tensor a peer's initialisation leaves constant (batch-norm statistics and scales, layer norms, zeroed biases)
is then redrawn (`redraw_constants`), so that a normalisation or bias mistake cannot hide behind 0 and 1, and
the batch norms' statistics are measured on a random batch (`calibrate`), so that activations stay near unit
scale through a ResNet-101 instead of saturating every sigmoid after it.

The cases: ML-GCN's gcn_resnet101 at 448 px (its MaxPool2d(14, 14) needs a 14 x 14 map), in float32 (its
gen_adj casts to float32); CSRA's ResNet_CSRA on ResNet-18 (its arch_settings allow it) with 1, 4 and 6 heads;
ADD-GCN's get_model (ResNet-101, which it hard-codes) at 224 px; Query2Label's build_q2l on ResNet-18 (its
Backbone allows it) at 224 px, with and without --keep_input_proj; ML-Decoder's head with 1, 4 and 5 labels per
group. All but ML-GCN run in float64, batch 2, on one random batch.

The peers' code needs torchvision, which msrn does not depend on (and whose wheels do not import beside
msrn's torch pin), so this runs in a venv of its own:

    mkdir -p peers && cd peers
    git clone https://github.com/megvii-research/ML-GCN
    git clone https://github.com/Kevinz-code/CSRA
    git clone https://github.com/Yejin0111/ADD-GCN
    git clone https://github.com/SlongLiu/query2labels
    git clone https://github.com/Alibaba-MIIL/ML_Decoder
    cd ..
    python3 -m venv /tmp/peer-venv && . /tmp/peer-venv/bin/activate
    pip install torch==2.14.1 torchvision==0.29.1 timm einops scipy addict yapf tqdm && pip install -e .
    python benchmarks/peer_parity.py --peers peers

(timm, einops, scipy, addict and yapf: Query2Label's `models` package imports its Swin and CvT backbones and
its config reader, which need them, even for a ResNet; tqdm: ML-GCN's util.py.) It prints one row per case:
the peer, its code's commit, the backbone, dtype and input size, max |logit difference| and max |logit|, pass
or fail. A peer whose code cannot run here is a row with the reason. Exit status: 1 when a case fails, else 2
when a peer could not run, else 0. About 70 s on two loaded CPU cores; `--only PEER` runs fewer.

Adapters that keep the peer's math, each made where it is used: numpy's removed `np.int` in ML-GCN's gen_A,
torchvision's removed `torchvision.models.utils` that Query2Label's resnet.py imports, and the causal-mask
arguments and attribute torch's TransformerDecoder now asks of ML-Decoder's layer.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pickle
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import torch

import msrn
from msrn import create_model

SEED = 0
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# max |difference| allowed, relative to max(1, max |logit|): float64 runs should agree to rounding, float32
# (ML-GCN, whose gen_adj casts to float32) to float32's rounding over a ResNet-101
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


@dataclass
class Row:
    """One compared case: what ran, how far apart the logits were, or why it could not run."""

    peer: str
    commit: str
    case: str
    diff: float | None = None
    scale: float | None = None
    ok: bool = False
    note: str = ""


def commit_of(checkout: Path) -> str:
    """The checkout's HEAD commit (short), or `not a git checkout`."""
    try:
        out = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short=12", "HEAD"], capture_output=True)
    except OSError:
        return "git missing"
    return out.stdout.decode().strip() if out.returncode == 0 else "not a git checkout"


@contextlib.contextmanager
def peer_code(path: Path) -> Iterator[None]:
    """`path` first on sys.path for the block, and the modules imported from it forgotten afterwards: ML-GCN's
    `models.py`, ADD-GCN's `models/` and Query2Label's `lib/models/` share one name."""
    sys.path.insert(0, str(path))
    before = set(sys.modules)
    try:
        yield
    finally:
        sys.path.remove(str(path))
        for name in set(sys.modules) - before:
            if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(path)):
                del sys.modules[name]


def fresh_resnet_state(url: str, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
    """What a download of torchvision's ResNet weights returns, without the download: a ResNet of the depth in
    `url`, initialised by torchvision under the current random state."""
    import torchvision

    depth = re.search(r"resnet(\d+)", url)
    if depth is None:
        raise RuntimeError(f"a download of {url} was asked for, which this benchmark does not stand in for")
    return getattr(torchvision.models, f"resnet{depth[1]}")(weights=None).state_dict()


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """torch.hub's, model_zoo's and torchvision's weight downloads answered by fresh_resnet_state."""
    import torch.hub
    import torch.utils.model_zoo
    import torchvision.models._api as tv_api

    saved = [
        (torch.hub, "load_state_dict_from_url"),
        (torch.utils.model_zoo, "load_url"),
        (tv_api, "load_state_dict_from_url"),
    ]
    originals = [getattr(owner, name) for owner, name in saved]
    for owner, name in saved:
        setattr(owner, name, fresh_resnet_state)
    try:
        yield
    finally:
        for (owner, name), original in zip(saved, originals):
            setattr(owner, name, original)


@torch.no_grad()
def redraw_constants(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Every floating tensor that the peer's initialisation left constant (batch-norm statistics and affine
    values, layer norms, zeroed biases) redrawn: scales and variances in [0.5, 1.5], the rest N(0, 0.1^2)."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for name, t in tensors.items():
        if not t.is_floating_point() or t.numel() < 2 or not bool((t == t.flatten()[0]).all()):
            continue
        if name.endswith("running_var") or float(t.flatten()[0]) == 1.0:
            t.copy_(torch.rand(t.shape, generator=generator) + 0.5)
        else:
            t.copy_(torch.randn(t.shape, generator=generator) * 0.1)


@torch.no_grad()
def calibrate(model: torch.nn.Module, *inputs: torch.Tensor) -> None:
    """torch's batch norms' running statistics measured on one random batch (a train-mode forward, cumulative
    average): a randomly drawn ResNet-101 whose statistics say 0 and 1 grows its activations some 10^8-fold,
    which saturates every sigmoid after it (ADD-GCN's attention) and would hide a mistake there."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()(*inputs)
    model.eval()
    for m in norms:
        m.momentum = 0.1


def images(batch: int, size: int, seed: int = SEED + 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch (float64) as [0, 1] pixels and as ImageNet-normalised pixels (what msrn's data path gives)."""
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x, (x - MEAN.double()) / STD.double()


def compare(peer_logits: torch.Tensor, msrn_logits: torch.Tensor, dtype: torch.dtype) -> tuple[float, float, bool]:
    """max |difference|, max |peer logit|, and whether the difference is within the dtype's tolerance."""
    if peer_logits.shape != msrn_logits.shape:
        raise RuntimeError(f"logit shapes differ: peer {tuple(peer_logits.shape)}, msrn {tuple(msrn_logits.shape)}")
    diff = float((peer_logits.double() - msrn_logits.double()).abs().max())
    scale = float(peer_logits.double().abs().max())
    return diff, scale, diff <= TOLERANCE[dtype] * max(1.0, scale)


def load_msrn(path: Path, notes: list[str], **kwargs: Any) -> torch.nn.Module:
    """msrn.load_checkpoint's model for the peer file, its warnings (the keys it names as dropped) kept."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = msrn.load_checkpoint(path, **kwargs).model
    notes += [str(w.message).split(": ", 1)[-1] for w in caught if "dropped" in str(w.message)]
    return model


# ---------------------------------------------------------------- the peers


def run_mlgcn(root: Path, tmp: Path, batch: int) -> list[Row]:
    """ML-GCN's gcn_resnet101 (its demo's t = 0.4), saved as its engine saves ({'epoch', 'arch', 'state_dict',
    'best_score'}), at 448 px: its MaxPool2d(14, 14) is a global pool only on a 14 x 14 map. float32: its
    gen_adj casts the degree vector to float32, so a float64 model does not run."""
    case = "resnet101, 448 px, float32, C=20 (VOC), t=0.4"
    rows = []
    num_classes, gen = 20, torch.Generator().manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    # the label inputs in the files both sides read: GloVe-like vectors (a pickled C x 300 array, as
    # voc_glove_word2vec.pkl) and the co-occurrence counts ({'adj': C x C, 'nums': C}, as voc_adj.pkl)
    nums = rng.integers(50, 500, num_classes)
    adj = np.minimum(rng.integers(0, 300, (num_classes, num_classes)), nums[:, None]).astype(np.int64)
    np.fill_diagonal(adj, 0)
    words = rng.standard_normal((num_classes, 300)).astype(np.float32)
    (tmp / "adj.pkl").write_bytes(pickle.dumps({"adj": adj, "nums": nums}))
    (tmp / "words.pkl").write_bytes(pickle.dumps(words))
    # ML-GCN's gen_A builds its identity with np.int, which numpy 1.24 removed; the builtin int is what it was
    np.int = int  # type: ignore[attr-defined]
    with peer_code(root), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's notice that pretrained=False is spelt weights=None now
        models = importlib.import_module("models")
        torch.manual_seed(SEED)
        peer = models.gcn_resnet101(num_classes=num_classes, t=0.4, pretrained=False, adj_file=str(tmp / "adj.pkl"))
    del np.int  # type: ignore[attr-defined]
    redraw_constants(peer, gen)
    inp = torch.from_numpy(words)[None].expand(batch, -1, -1)  # what its data loader gives: (B, C, 300)
    calibrate(peer, images(batch, 448, SEED + 2)[1].float(), inp)
    path = tmp / "mlgcn.pth.tar"
    torch.save({"epoch": 1, "arch": "resnet101", "state_dict": peer.state_dict(), "best_score": 0.0}, path)
    notes: list[str] = []
    ours = load_msrn(path, notes, word_vectors=str(tmp / "words.pkl"))
    peer.eval()
    _, x = images(batch, 448)
    with torch.no_grad():
        want, got = peer(x.float(), inp), ours(x.float())
    diff, scale, ok = compare(want, got, torch.float32)
    rows.append(Row("ML-GCN", commit_of(root), case, diff, scale, ok, "; ".join(notes)))
    return rows


def run_csra(root: Path, tmp: Path, batch: int) -> list[Row]:
    """CSRA's ResNet_CSRA (depth 18, which its arch_settings allow) with 1 head (VOC, lambda 0.1), 4 (COCO,
    lambda 0.5) and 6 heads, saved as its main.py does (a bare state dict). Its images are [0, 1] pixels
    (Normalize(0, 1)); msrn's loaded model takes ImageNet-normalised ones and undoes that normalisation."""
    rows = []
    with peer_code(root), no_downloads():
        resnet_csra = importlib.import_module("pipeline.resnet_csra")
        for heads, lam, num_classes, settings in ((1, 0.1, 20, {}), (4, 0.5, 80, {}), (6, 0.3, 80, {"lam": 0.3})):
            case = f"resnet18, 224 px, float64, {heads} head(s), lambda {lam}, C={num_classes}"
            torch.manual_seed(SEED)
            peer = resnet_csra.ResNet_CSRA(heads, lam, num_classes, depth=18, input_dim=512)
            redraw_constants(peer, torch.Generator().manual_seed(SEED))
            calibrate(peer, images(batch, 224, SEED + 2)[0].float())
            path = tmp / f"csra_{heads}.pth"
            torch.save(peer.state_dict(), path)
            notes: list[str] = []
            ours = load_msrn(path, notes, **settings)  # lambda 0.1 / 0.5: msrn's published setting for C=20 / 80
            unit, x = images(batch, 224)
            with torch.no_grad():
                want, got = peer.double().eval()(unit.double()), ours.double()(x.double())
            rows.append(Row("CSRA", commit_of(root), case, *compare(want, got, torch.float64), "; ".join(notes)))
    return rows


def run_addgcn(root: Path, tmp: Path, batch: int) -> list[Row]:
    """ADD-GCN from its own get_model (torchvision's resnet101, ImageNet weights answered by no_downloads),
    saved as its trainer does ({'epoch', 'model_name', 'state_dict', 'best_score'}); its score is the trainer's
    (out1 + out2) / 2."""
    case = "resnet101, 224 px, float64, C=20 (VOC)"
    with peer_code(root), no_downloads(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's notice that pretrained=True is spelt weights= now
        models = importlib.import_module("models")
        torch.manual_seed(SEED)
        peer = models.get_model(20, SimpleNamespace(model_name="ADD_GCN"))
    redraw_constants(peer, torch.Generator().manual_seed(SEED))
    calibrate(peer, images(batch, 224, SEED + 2)[1].float())
    path = tmp / "addgcn.pth"
    torch.save({"epoch": 1, "model_name": "ADD_GCN", "state_dict": peer.state_dict(), "best_score": 0.0}, path)
    notes: list[str] = []
    ours = load_msrn(path, notes)
    _, x = images(batch, 224)
    with torch.no_grad():
        out1, out2 = peer.double().eval()(x.double())
        want, got = (out1 + out2) / 2, ours.double()(x.double())
    return [Row("ADD-GCN", commit_of(root), case, *compare(want, got, torch.float64), "; ".join(notes))]


def q2l_args(num_classes: int, hidden: int, keep_input_proj: bool, size: int) -> SimpleNamespace:
    """main_mlc.py's arguments for build_q2l: its defaults (1 encoder and 2 decoder layers, 4 heads, sine
    encoding, decoder self-attention removed) at a ResNet-18's width."""
    return SimpleNamespace(
        backbone="resnet18",
        pretrained=True,
        hidden_dim=hidden,
        dim_feedforward=4 * hidden,  # its ResNet-101 default 8192 is 4 x 2048
        nheads=4,
        enc_layers=1,
        dec_layers=2,
        dropout=0.1,
        pre_norm=False,
        position_embedding="sine",
        img_size=size,
        keep_other_self_attn_dec=False,
        keep_first_self_attn_dec=False,
        keep_input_proj=keep_input_proj,
        num_class=num_classes,
    )


def run_q2l(root: Path, tmp: Path, batch: int) -> list[Row]:
    """Query2Label's build_q2l on ResNet-18 (its Backbone takes resnet18; frozen batch norms; ImageNet weights
    answered by no_downloads), with D = 512 at 224 px (input_proj the identity, its default) and D = 256 at 256 px
    (--keep_input_proj; its sine encoding is a buffer built for --img_size, msrn's is computed for the map it
    gets), saved as main_mlc.py does: {'epoch', 'arch', 'state_dict', 'best_mAP', 'optimizer'}, the state dict of its
    DistributedDataParallel model (`module.` keys)."""
    rows = []
    # its models package imports its own resnet.py, which imports load_state_dict_from_url from
    # torchvision.models.utils, a module torchvision 0.13 removed: the same function, from torch.hub, stands in
    # (its resnet.py is not what Backbone builds on: that is torchvision's ResNet)
    shim = ModuleType("torchvision.models.utils")
    shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url  # type: ignore[attr-defined]
    added = sys.modules.setdefault("torchvision.models.utils", shim) is shim
    with peer_code(root / "lib"), no_downloads(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        query2label = importlib.import_module("models.query2label")
        for hidden, keep, size in ((512, False, 224), (256, True, 256)):
            case = f"resnet18, {size} px, float64, D={hidden}{', input_proj' if keep else ''}, C=80"
            torch.manual_seed(SEED)
            peer = query2label.build_q2l(q2l_args(80, hidden, keep, size))
            redraw_constants(peer, torch.Generator().manual_seed(SEED))
            state = {"module." + k: v for k, v in peer.state_dict().items()}
            optimizer = torch.optim.AdamW(peer.parameters())
            path = tmp / f"q2l_{hidden}.pth.tar"
            ckpt = {"epoch": 1, "arch": "Q2L-R18", "state_dict": state, "best_mAP": 0.0}
            torch.save({**ckpt, "optimizer": optimizer.state_dict()}, path)
            notes: list[str] = []
            ours = load_msrn(path, notes)
            _, x = images(batch, size)
            with torch.no_grad():
                want, got = peer.double().eval()(x.double()), ours.double()(x.double())
            rows.append(Row("Query2Label", commit_of(root), case, *compare(want, got, torch.float64), "; ".join(notes)))
    if added:
        del sys.modules["torchvision.models.utils"]
    return rows


# ML-Decoder's MLDecoder keys -> msrn's mldecoder head (read from its ml_decoder.py: the decoder layer's norms,
# cross-attention and feed-forward, the embedding `embed_standart`, the fixed queries, the group FC and its bias)
MLDECODER_KEYS = {
    "decoder.embed_standart.": "embed.",
    "decoder.query_embed.weight": "queries",
    "decoder.layers.0.norm1.": "norm1.",
    "decoder.layers.0.norm2.": "norm2.",
    "decoder.layers.0.norm3.": "norm3.",
    "decoder.layers.0.multihead_attn.": "cross.",
    "decoder.layers.0.linear1.": "ffn1.",
    "decoder.layers.0.linear2.": "ffn2.",
    "decoder.duplicate_pooling_bias": "group_bias",
    "decoder.duplicate_pooling": "group_fc",
}


def mldecoder_state(peer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The peer MLDecoder's weights under msrn's head names (the longest matching prefix wins)."""
    out = {}
    for key, value in peer.items():
        prefix = max((p for p in MLDECODER_KEYS if key.startswith(p)), key=len, default=None)
        if prefix is None:
            raise RuntimeError(f"ML-Decoder key {key} has no place in msrn's head")
        out[MLDECODER_KEYS[prefix] + key.removeprefix(prefix)] = value
    return out


def run_mldecoder(root: Path, tmp: Path, batch: int) -> list[Row]:
    """ML-Decoder's MLDecoder head (D = 768, 8 heads, FFN 2048) against msrn's on one random 512 x 7 x 7 feature
    map (a ResNet-18's at 224 px): msrn loads no ML-Decoder checkpoint (only TResNet models are published), so
    the weights go over by MLDECODER_KEYS. Its decoder layer predates two things torch's TransformerDecoder
    now asks of a layer, both about causal masks (ML-Decoder uses none): `layer.self_attn.batch_first`, read to
    detect a causal mask (its layer has no self-attention; False is its sequence-first layout), and the
    tgt_is_causal and memory_is_causal arguments, which the adapter drops."""
    rows = []
    with peer_code(root):
        ml_decoder = importlib.import_module("src_files.ml_decoder.ml_decoder")
        layer = ml_decoder.TransformerDecoderLayerOptimal
        original: Callable[..., torch.Tensor] = layer.forward

        def forward(self: Any, tgt: Any, memory: Any, *args: Any, tgt_is_causal: bool = False,
                    memory_is_causal: bool = False, **kwargs: Any) -> torch.Tensor:  # fmt: skip
            return original(self, tgt, memory, *args, **kwargs)

        layer.forward = forward
        layer.self_attn = SimpleNamespace(batch_first=False)
        try:
            for num_classes, groups in ((80, 100), (80, 20), (81, 20)):
                per = -(-num_classes // min(groups, num_classes))
                case = f"head only, 512x7x7 map, float64, C={num_classes}, {groups} groups ({per} per group)"
                torch.manual_seed(SEED)
                peer = ml_decoder.MLDecoder(num_classes, num_of_groups=groups, initial_num_features=512)
                redraw_constants(peer, torch.Generator().manual_seed(SEED))
                ours = create_model("mldecoder_resnet18", num_classes=num_classes, groups=groups)
                ours.load_state_dict({**ours.state_dict(), **mldecoder_state(peer.state_dict())}, strict=True)
                fmap = torch.randn(batch, 512, 7, 7, generator=torch.Generator().manual_seed(SEED + 1)).double()
                with torch.no_grad():
                    want, got = peer.double().eval()(fmap.clone()), ours.double().eval().head(fmap.clone())
                rows.append(Row("ML-Decoder", commit_of(root), case, *compare(want, got, torch.float64)))
        finally:
            layer.forward = original
            del layer.self_attn
    return rows


PEERS: dict[str, tuple[str, Callable[[Path, Path, int], list[Row]]]] = {
    "ML-GCN": ("ML-GCN", run_mlgcn),
    "CSRA": ("CSRA", run_csra),
    "ADD-GCN": ("ADD-GCN", run_addgcn),
    "Query2Label": ("query2labels", run_q2l),
    "ML-Decoder": ("ML_Decoder", run_mldecoder),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=Path, required=True, help="the folder holding the five clones")
    parser.add_argument("--only", choices=sorted(PEERS), action="append", help="these peers alone")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for peer, (folder, run) in PEERS.items():
            if args.only and peer not in args.only:
                continue
            root = (args.peers / folder).resolve()
            start = time.perf_counter()
            if not root.is_dir():
                rows.append(Row(peer, "-", "-", note=f"not run: {root} does not exist"))
                continue
            try:
                rows += run(root, Path(tmp), args.batch)
            except Exception as e:  # a peer whose code cannot run here is reported with its reason
                traceback.print_exc()
                rows.append(Row(peer, commit_of(root), "-", note=f"could not run: {type(e).__name__}: {e}"))
            print(f"{peer}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(f"torch {torch.__version__}, torchvision {importlib.import_module('torchvision').__version__}")
    print("| peer | commit | case | max abs diff | max abs logit | result | notes |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        diff = "-" if r.diff is None else f"{r.diff:.1e}"
        scale = "-" if r.scale is None else f"{r.scale:.3g}"
        result = "pass" if r.ok else ("FAIL" if r.diff is not None else "not run")
        print(f"| {r.peer} | {r.commit} | {r.case} | {diff} | {scale} | {result} | {r.note} |")
    if any(r.diff is not None and not r.ok for r in rows):
        return 1
    return 0 if all(r.ok for r in rows) else 2


if __name__ == "__main__":
    sys.exit(main())
