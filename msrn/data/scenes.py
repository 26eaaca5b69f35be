"""The built-in benchmark `scenes`: pictograms at many sizes, in clutter, some told apart only by context.

Generated deterministically from a seed into a folder on first use, in the generic CSV format
(`annotations.csv`) plus `objects.csv` (every drawn object with its size and visible share), so
results can be split by object size. It is made to test the paper's two claims: reading several
depths helps with small objects, and label semantics help where appearance is ambiguous and the
co-occurring labels tell the answer. The generator is described in README (written beside the data).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from msrn.data.base import MultiLabelData
from msrn.data.csvfile import read_csv_dataset
from msrn.data.generated import MANIFEST, ensure_generated, read_manifest, write_images
from msrn.errors import MSRNError
from msrn.metrics import subset_metrics

VERSION = 1
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 40), "orange": (245, 135, 25), "yellow": (240, 215, 45), "green": (45, 165, 65),
    "blue": (45, 95, 225), "white": (235, 235, 235),
    # used by clutter only
    "grey": (140, 140, 140), "brown": (130, 85, 45), "pink": (240, 150, 200), "teal": (40, 150, 150),
    "purple": (140, 70, 200),
}  # fmt: skip
SHAPES = ("disc", "ring", "square", "frame", "triangle", "star", "grid", "bar", "diamond", "stripes", "cross", "plus")
# label -> (scene, shape, colour); labels sharing a shape and colour can only be told apart by their scene
LABELS: dict[str, tuple[str, str, str]] = {
    "orange": ("kitchen", "disc", "orange"), "plate": ("kitchen", "ring", "white"),
    "cup": ("kitchen", "square", "red"), "knife": ("kitchen", "bar", "blue"),
    "ball": ("sport", "disc", "orange"), "net": ("sport", "grid", "white"),
    "cone": ("sport", "triangle", "orange"), "flag": ("sport", "stripes", "red"),
    "flower": ("garden", "star", "yellow"), "fence": ("garden", "grid", "white"),
    "leaf": ("garden", "diamond", "green"), "pond": ("garden", "disc", "blue"),
    "star": ("sky", "star", "yellow"), "moon": ("sky", "disc", "white"),
    "rocket": ("sky", "triangle", "red"), "comet": ("sky", "bar", "yellow"),
}  # fmt: skip
SCENES_LABELS = tuple(sorted(LABELS))  # sorted, as the CSV reader orders labels
SCENES: dict[str, tuple[str, ...]] = {  # scene -> its labels, both in LABELS order
    scene: tuple(k for k, v in LABELS.items() if v[0] == scene)
    for scene in dict.fromkeys(v[0] for v in LABELS.values())
}
AMBIGUOUS_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (a, b) for i, a in enumerate(LABELS) for b in list(LABELS)[i + 1 :] if LABELS[a][1:] == LABELS[b][1:]
)
AMBIGUOUS = frozenset(x for pair in AMBIGUOUS_PAIRS for x in pair)
# clutter: every shape and colour pairing that is no label's appearance
CLUTTER = tuple((s, c) for s in SHAPES for c in COLOURS if (s, c) not in {v[1:] for v in LABELS.values()})

IMAGE_SIZE = 128
LABEL_SIDES = (8, 64)  # object side in pixels, drawn log-uniformly
CLUTTER_SIDES = (8, 48)
CLUTTER_COUNT = (1, 3)  # clutter objects per image
# object-size buckets (side in pixels, lower bound inclusive): thirds of the log-uniform range
SIZE_BUCKETS: dict[str, tuple[int, int]] = {"small": (8, 16), "medium": (16, 32), "large": (32, 65)}
P_ONE_SCENE = 0.7  # otherwise two scenes
P_LABEL = 0.6  # each label of a shown scene
P_STRAY = 0.02  # each unambiguous label of a scene not shown
P_OCCLUDER = 0.3  # per label object: a clutter bar laid over part of it
MIN_VISIBLE = 0.6  # share of a label object's pixels that stays visible
SPLITS = ("train", "test")

README = """# scenes: the built-in benchmark of msrn (generated, seed {seed}; not real data)

{num_train} train and {num_test} test RGB PNG images of {size}x{size} pixels, made by
`msrn.data.scenes` (version {version}) from numpy's RandomState({seed}). Each of the {num_labels}
labels is a flat pictogram (a shape in a colour) that belongs to one of {num_scenes} scenes:

{table}

How an image is made:
1. Scenes: one scene (p {p_one}) or two different scenes, uniformly. Each label of a shown scene
   is present with p {p_label}; every shown scene keeps at least one label that has an appearance
   of its own. Each such unambiguous label of a scene not shown is present with p {p_stray}.
2. Ambiguous pairs: {pairs} look exactly alike (same shape, same colour distribution). Only the
   labels around them tell them apart, and an ambiguous label never appears without an
   unambiguous label of its own scene.
3. Background: a random dark tint, 2-6 thin random lines, then {clutter[0]}-{clutter[1]} clutter objects: shapes in
   shape/colour pairings that are no label's (shared colours and shapes, so neither colour nor
   shape alone identifies a label).
4. Label objects, one per present label, in random order; side log-uniform in
   {label_sides[0]}-{label_sides[1]} px (clutter {clutter_sides[0]}-{clutter_sides[1]} px), colour jittered by up to
   +-20 per channel. A position is redrawn (up to 30 times) while it would leave an earlier
   label object less than {min_visible:.0%} visible.
5. Occlusion: each label object, with p {p_occ}, gets a clutter-coloured bar laid over part of it,
   kept only if every label object stays at least {min_visible:.0%} visible.
6. Gaussian pixel noise (sigma 8) over everything.

Object-size buckets (side in px): {buckets}. At 128 px input the feature maps MSRN reads
(msrn_tiny, after its 2x2 pooling) have cells of 16, 32 and 64 px: a small object is at most one
cell of the finest map and a quarter of a cell of the deepest; a large one up to a whole
deepest cell.

Files: annotations.csv (image,labels,split; labels separated by |), objects.csv (every drawn
object: image,label (empty for clutter),shape,colour,x,y,side,visible), labels.txt, images/<split>/.
{manifest} is written last; delete this folder to regenerate it.
"""


def sample_labels(rng: np.random.RandomState) -> list[str]:
    """Draw one image's label set: one or two scenes, ambiguous labels only with a partner of their scene."""
    names = list(SCENES)
    shown = [names[k] for k in rng.choice(len(names), size=1 if rng.rand() < P_ONE_SCENE else 2, replace=False)]
    present: set[str] = set()
    for scene in shown:
        members = SCENES[scene]
        plain = [m for m in members if m not in AMBIGUOUS]
        chosen = {m for m in members if rng.rand() < P_LABEL}
        if not chosen & set(plain):
            chosen.add(plain[rng.randint(len(plain))])
        present |= chosen
    for label in LABELS:
        if label not in AMBIGUOUS and LABELS[label][0] not in shown and rng.rand() < P_STRAY:
            present.add(label)
    return [label for label in SCENES_LABELS if label in present]


def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean side x side mask of one pictogram shape."""
    im = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(im)
    s, w = side - 1, max(2, side // 5)
    c = s / 2
    if shape == "disc":
        d.ellipse((0, 0, s, s), fill=255)
    elif shape == "ring":
        d.ellipse((0, 0, s, s), outline=255, width=w)
    elif shape == "square":
        d.rectangle((0, 0, s, s), fill=255)
    elif shape == "frame":
        d.rectangle((0, 0, s, s), outline=255, width=w)
    elif shape == "triangle":
        d.polygon([(c, 0), (s, s), (0, s)], fill=255)
    elif shape == "star":
        r = np.where(np.arange(10) % 2 == 0, side / 2, side / 5)
        a = np.arange(10) * np.pi / 5 - np.pi / 2
        d.polygon(list(zip(c + r * np.cos(a), c + r * np.sin(a), strict=True)), fill=255)
    elif shape == "grid":
        lw = max(1, side // 8)
        for k in range(4):
            p = round(k * (s - lw + 1) / 3)
            d.rectangle((p, 0, p + lw - 1, s), fill=255)
            d.rectangle((0, p, s, p + lw - 1), fill=255)
    elif shape == "bar":
        d.polygon([(0, s - w), (s - w, 0), (s, w), (w, s)], fill=255)
    elif shape == "diamond":
        d.polygon([(c, 0), (s, c), (c, s), (0, c)], fill=255)
    elif shape == "stripes":
        lw = max(1, side // 5)
        for k in range(3):
            p = round(k * (s - lw + 1) / 2)
            d.rectangle((0, p, s, p + lw - 1), fill=255)
    elif shape == "cross":
        d.line((0, 0, s, s), fill=255, width=w)
        d.line((0, s, s, 0), fill=255, width=w)
    elif shape == "plus":
        d.rectangle((c - w / 2, 0, c + w / 2, s), fill=255)
        d.rectangle((0, c - w / 2, s, c + w / 2), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(im) > 127


def _log_uniform_side(rng: np.random.RandomState, sides: tuple[int, int]) -> int:
    return int(round(np.exp(rng.uniform(np.log(sides[0]), np.log(sides[1])))))


def _colour(rng: np.random.RandomState, name: str) -> np.ndarray:
    return np.clip(np.array(COLOURS[name]) + rng.randint(-20, 21, size=3), 0, 255).astype(np.float32)


class _Canvas:
    """An image under construction and, per pixel, which object is on top (-1: background)."""

    def __init__(self, base: np.ndarray) -> None:
        self.pixels = base.astype(np.float32)
        self.owner = np.full(base.shape[:2], -1, dtype=np.int16)
        self.areas: list[int] = []
        self.labelled: list[int] = []  # ids of label objects, whose visibility is protected

    def visible(self, k: int) -> int:
        """Pixels of object k still on top."""
        return int((self.owner == k).sum())

    def kept_after(self, mask: np.ndarray, x: int, y: int) -> float:
        """The lowest visible share any label object would keep if `mask` were drawn at (x, y)."""
        region = self.owner[y : y + mask.shape[0], x : x + mask.shape[1]][mask]
        covered = np.bincount(region[region >= 0], minlength=len(self.areas))
        return min((self.visible(k) - covered[k]) / self.areas[k] for k in self.labelled) if self.labelled else 1.0

    def draw(self, mask: np.ndarray, x: int, y: int, colour: np.ndarray, label: bool) -> int:
        """Paint `mask` at (x, y) over everything drawn so far; returns the new object's id."""
        k = len(self.areas)
        h, w = mask.shape
        self.pixels[y : y + h, x : x + w][mask] = colour
        self.owner[y : y + h, x : x + w][mask] = k
        self.areas.append(int(mask.sum()))
        if label:
            self.labelled.append(k)
        return k


def render_scene(labels: list[str], size: int, rng: np.random.RandomState) -> tuple[Image.Image, list[dict]]:
    """Render one image (steps 3-6 of the README) and return it with one record per drawn object."""
    scale = size / IMAGE_SIZE
    base = Image.new("RGB", (size, size), tuple(int(v) for v in rng.randint(30, 110) + rng.randint(-20, 21, size=3)))
    draw = ImageDraw.Draw(base)
    for _ in range(rng.randint(2, 7)):
        x0, y0, x1, y1 = (int(v) for v in rng.randint(0, size, size=4))
        draw.line((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.randint(60, 180, size=3)), width=1)
    canvas = _Canvas(np.asarray(base))
    records: list[dict] = []

    def side_of(sides: tuple[int, int]) -> int:
        return max(4, min(size, round(_log_uniform_side(rng, sides) * scale)))

    for _ in range(rng.randint(CLUTTER_COUNT[0], CLUTTER_COUNT[1] + 1)):
        shape, colour = CLUTTER[rng.randint(len(CLUTTER))]
        side = side_of(CLUTTER_SIDES)
        x, y = (int(v) for v in rng.randint(0, size - side + 1, size=2))
        canvas.draw(shape_mask(shape, side), x, y, _colour(rng, colour), label=False)
        records.append(dict(label="", shape=shape, colour=colour, x=x, y=y, side=side))
    for label in rng.permutation(labels):
        _, shape, colour = LABELS[label]
        side = side_of(LABEL_SIDES)
        mask = shape_mask(shape, side)
        best = (-1.0, 0, 0)
        for _ in range(30):
            x, y = (int(v) for v in rng.randint(0, size - side + 1, size=2))
            kept = canvas.kept_after(mask, x, y)
            best = max(best, (kept, x, y))
            if kept >= MIN_VISIBLE:
                break
        _, x, y = best
        k = canvas.draw(mask, x, y, _colour(rng, colour), label=True)
        records.append(dict(label=str(label), shape=shape, colour=colour, x=x, y=y, side=side, id=k))
    for rec in [r for r in records if r["label"]]:
        if rng.rand() >= P_OCCLUDER:
            continue
        paint = _colour(rng, list(COLOURS)[6 + rng.randint(len(COLOURS) - 6)])
        for _ in range(10):  # a bar across the object, a third to two thirds of its side thick
            side, thick = rec["side"], max(2, int(rec["side"] * rng.uniform(0.33, 0.67)))
            horizontal = rng.rand() < 0.5
            h, w = (min(thick, size), min(side + 4, size)) if horizontal else (min(side + 4, size), min(thick, size))
            x = int(np.clip(rec["x"] - 2 + (0 if horizontal else rng.randint(-thick // 2, side)), 0, size - w))
            y = int(np.clip(rec["y"] - 2 + (rng.randint(-thick // 2, side) if horizontal else 0), 0, size - h))
            bar = np.ones((h, w), dtype=bool)
            if canvas.kept_after(bar, x, y) >= MIN_VISIBLE:
                canvas.draw(bar, x, y, paint, label=False)
                records.append(dict(label="", shape="occluder", colour="clutter", x=x, y=y, side=max(h, w)))
                break
    for rec in records:
        k = rec.pop("id", None)
        rec["visible"] = round(canvas.visible(k) / canvas.areas[k], 3) if k is not None else None
    noisy = canvas.pixels + rng.normal(0.0, 8.0, size=canvas.pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB"), records


def _expected_manifest(seed: int, num_train: int, num_test: int, image_size: int) -> dict:
    """The manifest content that marks a complete generation with these settings."""
    return {
        "kind": "scenes", "version": VERSION, "seed": seed, "num_train": num_train, "num_test": num_test,
        "image_size": image_size, "labels": list(SCENES_LABELS),
    }  # fmt: skip


def _readme(seed: int, num_train: int, num_test: int, image_size: int) -> str:
    rows = ["| label | scene | shape | colour |", "|---|---|---|---|"]
    rows += [f"| {k} | {s} | {sh} | {c} |" for k, (s, sh, c) in sorted(LABELS.items(), key=lambda kv: kv[1][0])]
    return README.format(
        seed=seed, num_train=num_train, num_test=num_test, size=image_size, version=VERSION,
        num_labels=len(LABELS), num_scenes=len(SCENES), table="\n".join(rows), p_one=P_ONE_SCENE,
        p_label=P_LABEL, p_stray=P_STRAY, pairs=", ".join(f"{a}/{b}" for a, b in AMBIGUOUS_PAIRS),
        label_sides=LABEL_SIDES, clutter_sides=CLUTTER_SIDES, clutter=CLUTTER_COUNT, min_visible=MIN_VISIBLE,
        p_occ=P_OCCLUDER,
        buckets=", ".join(f"{k} {lo}-{hi - 1}" for k, (lo, hi) in SIZE_BUCKETS.items()), manifest=MANIFEST,
    )  # fmt: skip


def _read_manifest(root: Path) -> dict | None:
    found = read_manifest(root)
    ok = found is not None and found.get("kind") == "scenes" and found.get("version") == VERSION
    return found if ok and (root / "annotations.csv").is_file() and (root / "objects.csv").is_file() else None


def ensure_scenes(
    root: Path, seed: int = 0, num_train: int = 2000, num_test: int = 600, image_size: int = IMAGE_SIZE
) -> Path:
    """Generate the scenes data set into root unless a matching complete generation is there."""
    expected = _expected_manifest(seed, num_train, num_test, image_size)

    def write(folder: Path) -> dict[str, str]:
        rng = np.random.RandomState(seed)

        def draw() -> tuple[Image.Image, list[str], list[dict]]:
            labels = sample_labels(rng)
            img, records = render_scene(labels, image_size, rng)
            return img, labels, records

        rows, objects = ["image,labels,split"], ["image,label,shape,colour,x,y,side,visible"]
        for name, split, labels, records in write_images(folder, {"train": num_train, "test": num_test}, draw):
            rows.append(f"{name},{'|'.join(labels)},{split}")
            objects += [f"{name},{r['label']},{r['shape']},{r['colour']},{r['x']},{r['y']},{r['side']},"
                        f"{'' if r['visible'] is None else r['visible']}" for r in records]  # fmt: skip
        return {"annotations.csv": "\n".join(rows) + "\n", "objects.csv": "\n".join(objects) + "\n",
                "labels.txt": "\n".join(SCENES_LABELS) + "\n",
                "README.md": _readme(seed, num_train, num_test, image_size)}  # fmt: skip

    return ensure_generated(root, "scenes", expected, lambda folder: _read_manifest(folder) == expected, write)


def read_scenes(data: Path, split: str) -> MultiLabelData:
    """A split of the scenes data in folder `data`: the generation found there (any seed or size),
    or the default one, generated on first use."""
    if split not in SPLITS:
        raise MSRNError(f"scenes has no split '{split}' (choose from {', '.join(SPLITS)})")
    root = Path(data)
    if _read_manifest(root) is None:
        ensure_scenes(root)
    result = read_csv_dataset(root / "annotations.csv", split, name="scenes")
    if tuple(result.labels) != SCENES_LABELS:
        raise MSRNError(f"{root}: annotations.csv does not hold all {len(SCENES_LABELS)} scenes labels")
    return result


def object_sides(data: MultiLabelData) -> np.ndarray:
    """N x C side of each present label's object in a scenes split (0 where absent), in pixels of a
    128 px image whatever size the data was generated at, so the size buckets apply."""
    path = Path(data.root) / "objects.csv"
    found = _read_manifest(Path(data.root))
    scale = IMAGE_SIZE / found["image_size"] if found else 1.0
    row = {str(p.relative_to(data.root)): i for i, p in enumerate(data.images)}
    col = {label: j for j, label in enumerate(data.labels)}
    sides = np.zeros(data.targets.shape, dtype=np.float32)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for rec in csv.DictReader(f):
                if rec["label"] and rec["image"] in row:
                    sides[row[rec["image"]], col[rec["label"]]] = float(rec["side"]) * scale
    except (OSError, KeyError, ValueError) as e:
        raise MSRNError(f"{path}: cannot read object sizes ({type(e).__name__}: {e})") from None
    if ((sides > 0) != (data.targets == 1)).any():
        raise MSRNError(f"{path} does not match annotations.csv (an object per present label)")
    return sides


def size_buckets(sides: np.ndarray) -> dict[str, np.ndarray]:
    """Bucket name -> N x C mask of the present labels whose object falls in that size bucket."""
    return {name: (sides >= lo) & (sides < hi) for name, (lo, hi) in SIZE_BUCKETS.items()}


def scenes_metrics(logits: np.ndarray, data: MultiLabelData) -> dict:
    """mAP, CF1 and OF1 of a scenes split per object-size bucket and for ambiguous / distinct labels (the
    benchmark's slices, shared by `msrn demo`, the ablation and `msrn compare`)."""
    positive = data.targets == 1
    ambiguous = np.array([label in AMBIGUOUS for label in data.labels])
    keeps = {**size_buckets(object_sides(data)), "ambiguous": positive & ambiguous, "distinct": positive & ~ambiguous}
    return {name: subset_metrics(logits, data.targets, keep, scores_are_logits=True) for name, keep in keeps.items()}
