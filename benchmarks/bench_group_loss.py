"""The label side of MSRN alone under the presets' optimiser: does the group loss descend or diverge, at the
reference's fixed weight 1e-4 and at the weight msrn gives the label count (msrn.models.gat.group_loss_weight)?

The label semantics, group semantics and group loss depend on the weights only, not on images, so SGD (momentum
0.9, weight decay 1e-4, lr 0.1: the presets' head rate, which the label side trains at) runs on the group loss
alone. Per setting: labels C, groups K, the initial gradient norm over the label-side weights, the initial and
the largest group loss, the largest group's column sum of the assignment at the end (C when every label has
collapsed into one group), and whether the loss stays below twice its start for --steps steps.

Settings: the reference's four data sets with their own GloVe vectors and co-occurrence graphs (read from
--reference-data; skipped when it is absent) at their pool ratios, and the family vocabulary of
msrn.data.synthetic at 1,000 and 5,000 labels (n-gram label vectors, a graph counted from family-structured
label sets), for msrn_tiny's label dimensions and, with --paper, the paper's (256, 300, 512).

    python benchmarks/bench_group_loss.py --steps 60
    python benchmarks/bench_group_loss.py --steps 60 --paper --only coco nuswide
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from msrn.labels.graph import adjacency, count_cooccurrence, read_cooccurrence
from msrn.labels.labelset import label_vectors
from msrn.labels.wordvec import load_word_vectors
from msrn.models.gat import GROUP_LOSS_WEIGHT, GATStack, GroupStack, group_loss, group_loss_weight

TINY = ((64, 64), 64)  # msrn_tiny: fc_label 300 -> 64, GAT 64 -> 64 -> D = 64
PAPER = ((256, 300), 512)
REFERENCE = {"apparel": 0.2, "voc": 0.2, "coco": 0.05, "nuswide": 0.05}  # folder -> the reference's pool ratio


def reference_inputs(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference's word vectors and adjacency for one data set (read with msrn's checked readers)."""
    co = read_cooccurrence(folder / name / f"{name}_adj.pkl")
    names = [str(i) for i in range(co.num_classes)]
    return load_word_vectors(folder / name / f"{name}_glove_word2vec.pkl", names), adjacency(co)


def family_inputs(c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n-gram vectors of `fNNNN-shape`-like names and the graph of 3C label sets of 4 members of one family of 12."""
    rng = np.random.default_rng(seed)
    members = rng.integers(0, c // 12, size=(3 * c, 1)) * 12 + rng.integers(0, 12, size=(3 * c, 4))
    targets = np.zeros((3 * c, c), np.int8)
    np.put_along_axis(targets, members, 1, axis=1)
    vectors, _ = label_vectors([f"f{k // 12:04d}-s{k % 12}" for k in range(c)], None, None)
    return vectors, adjacency(count_cooccurrence(targets))


class LabelSide(torch.nn.Module):
    """fc_label, the two label GAT layers and the group pooling, as MSRN builds them."""

    def __init__(self, vectors: np.ndarray, adj: np.ndarray, dims: tuple[int, int], d: int, k: int):
        super().__init__()
        self.vectors, self.mask = torch.as_tensor(vectors), torch.as_tensor(adj) > 0
        self.fc_label = torch.nn.Linear(vectors.shape[1], dims[0])
        self.label_embed = GATStack((*dims, d))
        self.group_embed = GroupStack(d, k)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        local = self.label_embed(self.fc_label(self.vectors), self.mask)
        groups, assign = self.group_embed(F.relu(local), self.mask)
        return local, groups, assign


def descend(vectors: np.ndarray, adj: np.ndarray, dims: tuple, ratio: float, weight: float | None, steps: int) -> dict:
    """SGD on the group loss alone; weight None: the label count's (group_loss_weight)."""
    torch.manual_seed(0)
    c = vectors.shape[0]
    k = max(1, int(ratio * c))
    w = group_loss_weight(c, k) if weight is None else weight
    side = LabelSide(vectors, adj, *dims, k)
    opt = torch.optim.SGD(side.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    losses, grad0, column = [], 0.0, 0.0
    for step in range(steps):
        local, groups, assign = side()
        loss = group_loss(local, groups, assign, w)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            grad0 = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in side.parameters() if p.grad is not None))
        losses.append(float(loss.detach()))
        column = float(assign.detach().sum(0).max())
        if not math.isfinite(losses[-1]) or losses[-1] > 1e6:
            break
        opt.step()
    stable = len(losses) == steps and losses[-1] <= 2 * losses[0]
    return {"C": c, "K": k, "weight": w, "grad0": grad0, "loss0": losses[0], "max": max(losses),
            "column": column, "steps": len(losses), "stable": stable}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--paper", action="store_true", help="the paper's label dimensions instead of msrn_tiny's")
    p.add_argument("--reference-data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/reference-data")
    p.add_argument("--only", nargs="+", default=None, help="settings by name: apparel voc coco nuswide family1000 ...")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    settings: list[tuple[str, float, tuple[np.ndarray, np.ndarray]]] = []
    if args.reference_data.is_dir():
        settings += [(n, r, reference_inputs(args.reference_data, n)) for n, r in REFERENCE.items()]
    for c, ratio in ((1000, 0.2), (1000, 0.05), (5000, 0.2)):
        settings.append((f"family{c}", ratio, family_inputs(c)))
    dims = PAPER if args.paper else TINY
    print(f"label dims {dims}, {args.steps} steps of SGD lr 0.1 momentum 0.9 on the group loss alone\n")
    print("| setting | C | K | weight | initial grad norm | initial loss | largest loss | largest group | result |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, ratio, (vectors, adj) in settings:
        if args.only and name not in args.only:
            continue
        for weight in (GROUP_LOSS_WEIGHT, None):
            r = descend(vectors, adj, dims, ratio, weight, args.steps)
            if r["stable"]:
                result = "descends"
            elif r["steps"] < args.steps:
                result = f"diverges (past 1e6 at step {r['steps']})"
            else:
                result = "grows"
            print(f"| {name} | {r['C']} | {r['K']} | {r['weight']:.3g} | {r['grad0']:.3g} | {r['loss0']:.3g} | "
                  f"{r['max']:.3g} | {r['column']:.0f} | {result} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
