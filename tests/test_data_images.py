"""Image decoding (modes, broken files), transforms numerics, ImageDataset and the loader."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msrn.data import ImageDataset, MultiLabelData, open_image
from msrn.data.base import in_memory
from msrn.data.loader import build_loader
from msrn.data.transforms import (
    TestTransform,
    TrainTransform,
    crop_offsets,
    crop_size_pairs,
    multiscale_crop_box,
    to_tensor_normalized,
)
from msrn.engine.sampling import EpochSampler, SeededView
from msrn.errors import MSRNError

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


# ---------------------------------------------------------------- open_image


def check_rgb(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    assert img.mode == "RGB" and img.size == size
    return np.asarray(img)


def test_modes_decode_to_rgb(tmp_path: Path) -> None:
    grey = Image.fromarray(np.full((3, 4), 77, np.uint8), "L")
    grey.save(tmp_path / "l.png")
    assert (check_rgb(open_image(tmp_path / "l.png"), (4, 3)) == 77).all()

    Image.new("CMYK", (4, 3), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    assert check_rgb(open_image(tmp_path / "cmyk.jpg"), (4, 3)).min() > 240  # no ink = white

    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red stays red, transparent black becomes white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    arr = check_rgb(open_image(tmp_path / "rgba.png"), (4, 3))
    assert arr[0, 0].tolist() == [255, 0, 0] and arr[1, 1].tolist() == [255, 255, 255]

    pal = Image.new("P", (4, 3), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert check_rgb(open_image(tmp_path / "p.png"), (4, 3))[2, 3].tolist() == [10, 200, 30]
    pal.save(tmp_path / "p.gif", transparency=1)
    assert check_rgb(open_image(tmp_path / "p.gif"), (4, 3))[0, 0].tolist() == [255, 255, 255]

    Image.new("1", (4, 3), 1).save(tmp_path / "bw.png")
    assert (check_rgb(open_image(tmp_path / "bw.png"), (4, 3)) == 255).all()
    Image.new("LA", (4, 3), (0, 0)).save(tmp_path / "la.png")
    assert (check_rgb(open_image(tmp_path / "la.png"), (4, 3)) == 255).all()


def test_sixteen_bit_is_scaled(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "i16.png")
    with Image.open(tmp_path / "i16.png") as raw:
        assert raw.mode in ("I;16", "I")
    assert check_rgb(open_image(tmp_path / "i16.png"), (3, 1))[0, :, 0].tolist() == [0, 100, 255]
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "i32.tif")
    assert open_image(tmp_path / "i32.tif").getpixel((1, 0)) == (100, 100, 100)


def test_broken_files(tmp_path: Path) -> None:
    noise_image(64, 64).save(tmp_path / "ok.jpg", quality=95)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    for name in ("truncated.jpg", "empty.jpg", "text.png"):
        with pytest.raises(MSRNError, match=f"{name}: cannot decode image"):
            open_image(tmp_path / name)
    with pytest.raises(MSRNError, match="missing.jpg: image file not found"):
        open_image(tmp_path / "missing.jpg")
    assert open_image(tmp_path / "ok.jpg").size == (64, 64)


# ---------------------------------------------------------------- transforms


def reference_normalise(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float64) / 255.0
    return ((arr - MEAN) / STD).transpose(2, 0, 1)


def test_to_tensor_normalized() -> None:
    img = noise_image(5, 3)
    t = to_tensor_normalized(img)
    assert t.dtype == torch.float32 and t.shape == (3, 3, 5) and t.is_contiguous()
    np.testing.assert_allclose(t.numpy(), reference_normalise(img), atol=1e-5)
    white = to_tensor_normalized(Image.new("RGB", (2, 2), (255, 255, 255)))
    np.testing.assert_allclose(white[:, 0, 0].numpy(), (1 - MEAN) / STD, atol=1e-5)


def test_test_transform_is_pil_bilinear() -> None:
    img = noise_image(50, 37)
    out = TestTransform(16)(img)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    expected = reference_normalise(img.resize((16, 16), Image.BILINEAR))
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    grey = Image.fromarray(np.full((7, 9), 128, np.uint8), "L")
    assert TestTransform(4)(grey).shape == (3, 4, 4)


def test_crop_size_pairs_snap() -> None:
    # min side 375: sizes 375, 337, 300, 262, 225 -> 225 snaps to 224 (within 3 px)
    pairs = crop_size_pairs(500, 375, 224, (1.0, 0.9, 0.8, 0.7, 0.6), 2)
    sides = sorted({w for w, _ in pairs})
    assert sides == [224, 262, 300, 337, 375]
    assert len(pairs) == 19  # 5 x 5 index pairs with |i - j| <= 2
    assert (375, 300) in pairs and (375, 262) not in pairs and (224, 300) in pairs
    assert crop_size_pairs(100, 100, 98, (1.0,), 1) == [(98, 98)]  # |100 - 98| < 3 snaps
    assert crop_size_pairs(100, 100, 97, (1.0,), 1) == [(100, 100)]  # |100 - 97| = 3 does not


def test_crop_offsets_are_the_thirteen() -> None:
    w, h = (500 - 224) // 4, (375 - 300) // 4
    assert (w, h) == (69, 18)
    assert crop_offsets(500, 375, 224, 300) == [
        (0, 0), (4 * w, 0), (0, 4 * h), (4 * w, 4 * h), (2 * w, 2 * h),
        (0, 2 * h), (4 * w, 2 * h), (2 * w, 4 * h), (2 * w, 0),
        (w, h), (3 * w, h), (w, 3 * h), (3 * w, 3 * h),
    ]  # fmt: skip


def test_multiscale_crop_box_draws_from_candidates() -> None:
    rng = random.Random(3)
    pairs = set(crop_size_pairs(500, 375, 224, (1.0, 0.9, 0.8, 0.7, 0.6), 2))
    seen_offsets = set()
    for _ in range(400):
        left, top, right, bottom = multiscale_crop_box(500, 375, 224, (1.0, 0.9, 0.8, 0.7, 0.6), 2, rng)
        cw, ch = right - left, bottom - top
        assert (cw, ch) in pairs
        assert (left, top) in crop_offsets(500, 375, cw, ch)
        assert 0 <= left and right <= 500 and 0 <= top and bottom <= 375
        seen_offsets.add(crop_offsets(500, 375, cw, ch).index((left, top)))
    assert seen_offsets == set(range(13))


def test_train_transform_numerics_and_reproducibility() -> None:
    img = noise_image(60, 45)
    t = TrainTransform(32)
    random.seed(11)
    a = t(img)
    random.seed(11)
    b = t(img)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32 and torch.equal(a, b)
    random.seed(11)
    box = multiscale_crop_box(60, 45, 32, t.scales, t.max_distort, random)
    expected = img.crop(box).resize((32, 32), Image.BILINEAR)
    if random.random() < 0.5:
        expected = expected.transpose(Image.FLIP_LEFT_RIGHT)
    np.testing.assert_allclose(a.numpy(), reference_normalise(expected), atol=1e-5)
    random.seed(11)
    assert torch.equal(TrainTransform(32, flip=False)(img), to_tensor_normalized(img.crop(box).resize((32, 32))))


# ---------------------------------------------------------------- ImageDataset and loader


def make_data(tmp_path: Path, n: int, broken: tuple[int, ...] = ()) -> MultiLabelData:
    images = []
    for k in range(n):
        path = tmp_path / f"{k}.png"
        if k in broken:
            path.write_bytes(b"not a png")
        else:
            noise_image(12, 10, seed=k).save(path)
        images.append(path)
    targets = np.array([[1, 0, -1] if k % 2 else [0, 1, 0] for k in range(n)], dtype=np.int8)
    return MultiLabelData("csv", "train", tmp_path, images, ["a", "b", "c"], targets)


def test_image_dataset_items(tmp_path: Path) -> None:
    ds = ImageDataset(make_data(tmp_path, 3), TestTransform(8))
    image, target, index = ds[1]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert target.dtype == torch.float32 and target.tolist() == [1.0, 0.0, -1.0] and index == 1
    assert len(ds) == 3


def test_image_dataset_errors(tmp_path: Path) -> None:
    data = make_data(tmp_path, 4, broken=(1,))
    with pytest.raises(MSRNError, match=r"1\.png: cannot decode"):
        ImageDataset(data, TestTransform(8))[1]
    ds = ImageDataset(data, TestTransform(8), on_error="skip")
    image, target, index = ds[1]
    assert index == 2 and target.tolist() == [0.0, 1.0, 0.0] and ds.skipped == 1
    with pytest.raises(MSRNError, match="on_error"):
        ImageDataset(data, TestTransform(8), on_error="ignore")
    all_broken = ImageDataset(make_data(tmp_path, 2, broken=(0, 1)), TestTransform(8), on_error="skip")
    with pytest.raises(MSRNError, match="no readable image"):
        all_broken[0]


def test_skipped_counter_is_shared_with_workers(tmp_path: Path) -> None:
    ds = ImageDataset(make_data(tmp_path, 6, broken=(1, 4)), TrainTransform(8), on_error="skip")
    loader = build_loader(ds, batch_size=2, shuffle=False, workers=2, seed=0, pin_memory=False)
    indices = torch.cat([index for _, _, index in loader]).tolist()
    assert indices == [0, 2, 2, 3, 5, 5] and ds.skipped == 2


def test_loader_is_reproducible(tmp_path: Path) -> None:
    ds = ImageDataset(make_data(tmp_path, 8), TrainTransform(8))

    def run(seed: int) -> tuple[list[int], torch.Tensor]:
        loader = build_loader(ds, batch_size=3, shuffle=True, workers=0, seed=seed, drop_last=True)
        batches = list(loader)
        return torch.cat([b[2] for b in batches]).tolist(), torch.cat([b[0] for b in batches])

    order_a, images_a = run(5)
    order_b, images_b = run(5)
    order_c, _ = run(6)
    assert order_a == order_b and torch.equal(images_a, images_b) and len(order_a) == 6
    assert order_a != order_c
    loader = build_loader(ds, batch_size=3, shuffle=False, workers=0, seed=0)
    assert loader.pin_memory == torch.cuda.is_available() and len(loader) == 3


def test_loader_leaves_the_global_generators_alone(tmp_path: Path) -> None:
    """With workers == 0, building a loader (as every mid-training evaluation does) and reading it used
    to reseed the global `random` and numpy generators."""
    ds = ImageDataset(make_data(tmp_path, 6), TrainTransform(8))
    random.seed(123)
    np.random.seed(123)
    want_python, want_numpy = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    for seed in (0, 1):
        images = torch.cat([b[0] for b in build_loader(ds, batch_size=3, shuffle=True, workers=0, seed=seed)])
        assert images.shape == (6, 3, 8, 8)
    assert (random.random(), np.random.rand()) == (want_python, want_numpy)


def test_skipped_counter_works_with_spawned_workers(tmp_path: Path) -> None:
    ds = ImageDataset(make_data(tmp_path, 4, broken=(2,)), TestTransform(8), on_error="skip")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="spawn")
    assert torch.cat([index for _, _, index in loader]).tolist() == [0, 1, 3, 3] and ds.skipped == 1


def test_in_memory_gives_the_batches_the_files_give(tmp_path: Path) -> None:
    files = make_data(tmp_path, 7)
    held = in_memory(files)
    assert held.pixels is not None and len(held.pixels) == 7 and files.pixels is None
    for path in files.images:  # nothing is read from a file any more
        path.unlink()

    def epoch(data: MultiLabelData, seed: int, n: int) -> list[torch.Tensor]:
        sampler = EpochSampler(len(data), seed)
        sampler.set_epoch(n)
        view = SeededView(ImageDataset(data, TrainTransform(8, scales=(1.0, 0.8))), seed)
        loader = build_loader(view, 3, shuffle=False, workers=0, seed=seed, sampler=sampler)
        return [torch.cat([b[k].flatten().float() for b in loader]) for k in range(3)]

    # the same files, read again into a second copy, give the same batches for each seed and epoch
    again = make_data(tmp_path, 7)
    for seed, n in ((0, 0), (0, 1), (3, 0)):
        a, b = epoch(held, seed, n), epoch(again, seed, n)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(epoch(held, 0, 0)[0], epoch(held, 0, 1)[0])
    image, target, index = ImageDataset(held, TestTransform(5))[2]
    assert image.shape == (3, 5, 5) and target.tolist() == [0.0, 1.0, 0.0] and index == 2


def test_in_memory_refuses_broken_files_and_too_much(tmp_path: Path) -> None:
    with pytest.raises(MSRNError, match=r"2\.png: cannot decode"):
        in_memory(make_data(tmp_path, 4, broken=(2,)))
    with pytest.raises(MSRNError, match=r"exceed .* at .*1\.png"):
        in_memory(make_data(tmp_path, 4), limit=12 * 10 * 3 + 1)
    data = make_data(tmp_path, 3)
    with pytest.raises(MSRNError, match="2 decoded images for 3 files"):
        MultiLabelData(
            "csv", "train", tmp_path, data.images, data.labels, data.targets, pixels=[np.zeros((2, 2, 3), np.uint8)] * 2
        )
