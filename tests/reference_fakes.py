"""Files in the formats the reference implementation publishes, written by the tests themselves.

The reference repository carries no license, so its data files are never copied into msrn. These
writers produce files of the same structure (protocol-3 pickles naming numpy.core.multiarray, the
same Python types and dtypes, the same defects in the NUS-WIDE and Apparel counts) and a checkpoint
key layout built by the reference's naming rules, so every reading and loading path runs on a fresh
clone. Values are random; the published files' own values are checked in test_reference_published_files.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np

from msrn.data.nuswide import NUSWIDE_LABELS
from msrn.labels import reference_files

# folder -> (label count, pool ratio) of the reference's four checkpoints
DATASETS = {"voc": (20, 0.2), "coco": (80, 0.05), "nuswide": (81, 0.05), "apparel": (11, 0.2)}
RESNET101_BLOCKS = (3, 4, 23, 3)
D = 512  # the semantic width


def _dumps(obj: object) -> bytes:
    """Pickle as the reference's files are: protocol 3, arrays rebuilt through numpy.core.multiarray
    (the module path of the numpy that wrote them; numpy 2 writes numpy._core)."""
    return pickle.dumps(obj, protocol=3).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def _bn(prefix: str, ch: int) -> dict[str, list[int]]:
    return {f"{prefix}.{n}": [ch] for n in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": []
    }


def checkpoint_layout(num_classes: int, pool_ratio: float) -> dict[str, list[int]]:
    """Every state_dict key of a reference checkpoint with its shape, in the reference's order."""
    c, k = num_classes, int(pool_ratio * num_classes)
    keys: dict[str, list[int]] = {"W": [c, 6 * D], "B": [c]}  # unused in the reference's forward
    r = "resnet_101."
    keys[r + "conv1.weight"] = [64, 3, 7, 7]
    keys |= _bn(r + "bn1", 64)
    inplanes = 64
    for i, (blocks, planes) in enumerate(zip(RESNET101_BLOCKS, (64, 128, 256, 512), strict=True), start=1):
        for b in range(blocks):
            p = f"{r}layer{i}.{b}."
            keys[p + "conv1.weight"] = [planes, inplanes, 1, 1]
            keys |= _bn(p + "bn1", planes)
            keys[p + "conv2.weight"] = [planes, planes, 3, 3]
            keys |= _bn(p + "bn2", planes)
            keys[p + "conv3.weight"] = [planes * 4, planes, 1, 1]
            keys |= _bn(p + "bn3", planes * 4)
            if b == 0:
                keys[p + "downsample.0.weight"] = [planes * 4, inplanes, 1, 1]
                keys |= _bn(p + "downsample.1", planes * 4)
            inplanes = planes * 4
    for j, ch in enumerate((256, 512, 1024)):
        keys[f"{r}conv_buffer{j}.weight"] = [ch, ch, 1, 1]
        keys[f"{r}conv_buffer{j}.bias"] = [ch]
    keys |= {
        "label_embed.layers.0.W": [256, 300], "label_embed.layers.0.a": [600, 1],
        "label_embed.layers.1.W": [300, D], "label_embed.layers.1.a": [2 * D, 1],
        "group_embed.layers.0.embed.W": [D, D], "group_embed.layers.0.embed.a": [2 * D, 1],
        "group_embed.layers.0.assign_mat.W": [D, k], "group_embed.layers.0.assign_mat.a": [2 * k, 1],
    }  # fmt: skip
    for j, ch in enumerate((512, 1024, 2048)):
        keys[f"ProjectM.{j}.weight"] = [D, ch, 1, 1]
        keys[f"ProjectM.{j}.bias"] = [D]
    keys |= {"fc_label.weight": [256, 300], "fc_label.bias": [256], "fc1.weight": [2048, (c + k) * 3 * D],
             "fc1.bias": [2048], "fc2.weight": [c, 2048], "fc2.bias": [c]}  # fmt: skip
    return keys


def official_keys() -> dict[str, dict]:
    """The content of official-checkpoint-keys.json: per dataset its counts and key layout."""
    return {
        ds: {"num_classes": c, "pool_ratio": ratio, "num_groups": int(ratio * c), "keys": checkpoint_layout(c, ratio)}
        for ds, (c, ratio) in DATASETS.items()
    }


def _true_counts(rng: np.random.Generator, c: int, images: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Co-occurrence as defined (diagonal 0, symmetric) from random multi-hot targets with some
    strongly linked pairs, so the graph has edges."""
    t = rng.random((images, c)) < 0.12
    t[:, 1::4] |= t[:, 0::4][:, : t[:, 1::4].shape[1]]  # label 4i+1 follows label 4i
    t = t.astype(np.int64)
    m = t.T @ t
    np.fill_diagonal(m, 0)
    return m, t.sum(0)


def apparel_image_labels(rng: np.random.Generator, n: int) -> dict[str, list[int]]:
    """file name -> 11 ints, 0 = present, -1 = absent: one colour and one garment per image."""
    table = {}
    for i in range(n):
        row = [-1] * 11
        row[int(rng.integers(6))] = 0
        row[6 + int(rng.integers(5))] = 0
        table[f"{hashlib.sha1(str(i).encode()).hexdigest()}.jpg"] = row
    return table


def write_reference_data(folder: Path, seed: int = 0, apparel_images: int = 60) -> Path:
    """Write a reference-data folder (the layout of ../shared/reference-data) with random values."""
    rng = np.random.default_rng(seed)
    files: dict[str, object] = {}
    for ds in ("voc", "coco"):
        c = DATASETS[ds][0]
        files[f"{ds}/{ds}_glove_word2vec.pkl"] = rng.standard_normal((c, 300)).astype(np.float32)
        m, n = _true_counts(rng, c)
        files[f"{ds}/{ds}_adj.pkl"] = {"nums": n, "adj": m}  # the key order of those two files
    # NUS-WIDE: vectors as a list of lists; counts with a non-zero diagonal and nums = 1 + column sums
    c = DATASETS["nuswide"][0]
    files["nuswide/nuswide_glove_word2vec.pkl"] = rng.standard_normal((c, 300)).tolist()
    m = rng.integers(0, 40, (c, c)).astype(np.float64)
    m = m + m.T
    files["nuswide/nuswide_adj.pkl"] = {"adj": m, "nums": 1 + m.sum(0)}
    # Apparel: only colour -> garment pairs counted (not symmetric), nums = 1 + column sums
    files["apparel/apparel_glove_word2vec.pkl"] = rng.standard_normal((11, 300)).tolist()
    m = np.zeros((11, 11))
    m[:6, 6:] = rng.integers(0, 30, (6, 5))
    files["apparel/apparel_adj.pkl"] = {"adj": m, "nums": 1 + m.sum(0)}
    files["apparel/image_label.pkl"] = apparel_image_labels(rng, apparel_images)
    for path, obj in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(_dumps(obj))
    (folder / "nuswide" / "labels.txt").write_text("\n".join(NUSWIDE_LABELS) + "\n")
    (folder / "coco" / "category.json").write_text(json.dumps({str(i): i for i in range(1, 81)}))
    (folder / "official-checkpoint-keys.json").write_text(json.dumps(official_keys()))
    return folder


def pin_generated_files(monkeypatch, folder: Path) -> None:
    """Point msrn's pinned table of the reference's files (size, SHA-256) at the generated copies in
    `folder`, so fetching them through MSRN_REFERENCE_URL passes the same checks the real ones pass."""
    for dataset, table in reference_files.FILES.items():
        for kind, entry in table.items():
            data = (folder / entry.path).read_bytes()
            pinned = reference_files.ReferenceFile(entry.path, len(data), hashlib.sha256(data).hexdigest())
            monkeypatch.setitem(reference_files.FILES[dataset], kind, pinned)
