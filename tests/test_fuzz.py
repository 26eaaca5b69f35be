"""Fuzzed input: every malformed annotation or image is handled or gives MSRNError, quickly, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from data_helpers import tiny_train_args
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from msrn.cli import main as cli
from msrn.data import open_image
from msrn.data.coco import read_coco2014
from msrn.data.csvfile import read_csv_dataset
from msrn.data.transforms import TestTransform, TrainTransform
from msrn.data.voc import VOC_LABELS, parse_annotation
from msrn.errors import MSRNError
from msrn.models import create_model

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail with TimeoutError if the block runs longer than `seconds` (a hang is a bug)."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def handled(call: Callable[[], Any], seconds: float = 5.0) -> Any:
    """call()'s result, or None when it raised MSRNError; any other exception or a hang fails the test."""
    with time_limit(seconds):
        try:
            return call()
        except MSRNError as e:
            assert str(e) and "\n" not in str(e), repr(str(e))
            return None


# ------------------------------------------------------------------------------------------- VOC XML

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
NAMES = st.one_of(st.sampled_from(VOC_LABELS), TEXT)
DIFFICULT = st.one_of(st.sampled_from(["0", "1", " 1 ", "", "2", "-1", "true"]), TEXT)


def xml_escape(text: str) -> str:
    """Text escaped for an XML element body."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@st.composite
def voc_documents(draw: st.DrawFn) -> bytes:
    """VOC annotation XML: objects with odd names and difficult flags, tags left out, the end cut off."""
    parts = ["<annotation><filename>1.jpg</filename>"]
    for _ in range(draw(st.integers(0, 4))):
        obj = ["<object>"]
        if draw(st.booleans()):
            obj.append(f"<name>{xml_escape(draw(NAMES))}</name>")
        if draw(st.booleans()):
            obj.append(f"<difficult>{xml_escape(draw(DIFFICULT))}</difficult>")
        if draw(st.booleans()):
            obj.append("<object><name>dog</name></object>")  # nested
        parts.append("".join(obj) + "</object>")
    doc = ("".join(parts) + "</annotation>").encode("utf-8")
    cut = draw(st.one_of(st.none(), st.integers(0, len(doc))))
    return doc if cut is None else doc[:cut]


@FUZZ
@given(doc=st.one_of(voc_documents(), st.binary(max_size=200)))
def test_voc_annotation_fuzz(tmp_path: Path, doc: bytes) -> None:
    """Any annotation file parses to a 20-label target of 1/0/-1 or is an MSRNError naming the file."""
    path = tmp_path / "a.xml"
    path.write_bytes(doc)
    target = handled(lambda: parse_annotation(path))
    if target is not None:
        assert target.shape == (len(VOC_LABELS),) and set(np.unique(target)) <= {-1, 0, 1}


def test_voc_entity_expansion_and_external_entities(tmp_path: Path) -> None:
    """A billion-laughs document and an external entity are refused quickly; the secret is never read in."""
    secret = tmp_path / "secret.txt"
    secret.write_text("aeroplane")
    laughs = ["<!ENTITY l0 'dog'>"] + [f"<!ENTITY l{i} '{f'&l{i - 1};' * 10}'>" for i in range(1, 10)]
    bombs = {
        "laughs": f"<!DOCTYPE a [{''.join(laughs)}]><annotation><object><name>&l9;</name></object></annotation>",
        "external": f"<!DOCTYPE a [<!ENTITY e SYSTEM '{secret.as_uri()}'>]>"
        "<annotation><object><name>&e;</name></object></annotation>",
    }
    for name, doc in bombs.items():
        path = tmp_path / f"{name}.xml"
        path.write_text(doc)
        assert handled(lambda p=path: parse_annotation(p), seconds=3) is None


# ------------------------------------------------------------------------------------------ COCO JSON

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def coco_documents(draw: st.DrawFn) -> Any:
    """A valid COCO document with one random edit: a key dropped, a value of the wrong type, a list replaced."""
    doc: dict[str, Any] = {
        "images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(3)],
        "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [{"image_id": i % 3, "category_id": 1 + 2 * (i % 2)} for i in range(4)],
    }
    section = draw(st.sampled_from(sorted(doc)))
    action = draw(st.sampled_from(["drop-section", "replace-section", "drop-key", "retype-key", "add-record"]))
    if action == "drop-section":
        del doc[section]
    elif action == "replace-section":
        doc[section] = draw(JSON)
    elif action == "add-record":
        doc[section].append(draw(JSON))
    else:
        record = draw(st.sampled_from(doc[section]))
        key = draw(st.sampled_from(sorted(record)))
        if action == "drop-key":
            del record[key]
        else:
            record[key] = draw(JSON)
    return doc


@FUZZ
@given(doc=st.one_of(coco_documents(), JSON))
def test_coco_json_fuzz(tmp_path: Path, doc: Any) -> None:
    """COCO JSON with missing keys, wrong types or non-list sections: a dataset or one MSRNError."""
    (tmp_path / "annotations").mkdir(exist_ok=True)
    (tmp_path / "train2014").mkdir(exist_ok=True)
    (tmp_path / "annotations" / "instances_train2014.json").write_text(json.dumps(doc))
    data = handled(lambda: read_coco2014(tmp_path, "train"))
    if data is not None:
        assert data.targets.shape == (len(data.images), len(data.labels))


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"images": ' * 50_000, b"\xef\xbb\xbf{}", b"\xff\xfe", b"NaN"])
def test_coco_json_pathological(tmp_path: Path, raw: bytes) -> None:
    """Deeply nested, BOM-prefixed or non-JSON files are one MSRNError (deep nesting used to escape)."""
    (tmp_path / "annotations").mkdir()
    (tmp_path / "train2014").mkdir()
    (tmp_path / "annotations" / "instances_train2014.json").write_bytes(raw)
    assert handled(lambda: read_coco2014(tmp_path, "train")) is None


# ------------------------------------------------------------------------------------------------ CSV

CSV_TEXT = st.lists(st.sampled_from(list('ab,|"\n\r \t\x00;\\') + ["train", "é"]), max_size=60).map("".join)


@FUZZ
@given(body=CSV_TEXT)
def test_csv_odd_quoting_fuzz(tmp_path: Path, body: str) -> None:
    """Rows with stray quotes, embedded newlines, NULs and separators: rows read, or one MSRNError."""
    path = tmp_path / "data.csv"
    path.write_text("image,labels,split\n" + body, encoding="utf-8")
    data = handled(lambda: read_csv_dataset(path, "train"))
    if data is not None:
        assert data.targets.shape == (len(data.images), len(data.labels))
        assert all(label and "|" not in label for label in data.labels)


def test_csv_huge_field_and_bad_encoding(tmp_path: Path) -> None:
    """A field beyond the csv module's limit and a non-UTF-8 file are one MSRNError each."""
    path = tmp_path / "data.csv"
    path.write_text('image,labels,split\n"' + "x" * 200_000 + '",a,train\n')
    assert handled(lambda: read_csv_dataset(path, "train")) is None
    path.write_bytes(b"image,labels,split\n\xff\xfe.jpg,a,train\n")
    assert handled(lambda: read_csv_dataset(path, "train")) is None


def test_csv_without_any_label_stops_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """No image has a label: the reader returns zero columns and `msrn train` stops with one line."""
    path = tmp_path / "data.csv"
    path.write_text("image,labels,split\n" + "".join(f"{i}.png,,{'train' if i < 4 else 'test'}\n" for i in range(6)))
    assert read_csv_dataset(path, "train").labels == []
    argv = tiny_train_args(path, tmp_path / "run")
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label" in err[0]


def test_huge_label_set(tmp_path: Path) -> None:
    """5000 labels: the reader copes; an MSRN that would need billions of fc1 weights is refused up front."""
    path = tmp_path / "data.csv"
    path.write_text(
        "image,labels,split\n"
        + "".join(f"{i}.png,{'|'.join(f'l{i}_{j}' for j in range(50))},train\n" for i in range(100))
    )
    data = read_csv_dataset(path, "train")
    assert data.targets.shape == (100, 5000) and data.targets.sum() == 5000
    for name in ("msrn_resnet101", "msrn_resnet18"):
        with time_limit(5), pytest.raises(MSRNError, match="billion weights in fc1"):
            create_model(name, labels=data.labels)


# --------------------------------------------------------------------------------------------- images


def png_bytes(mode: str, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    """An image of `mode` and `size` with some content, encoded as `fmt`."""
    rng = np.random.default_rng(size[0] * 31 + size[1])
    img = Image.new(mode, size)
    img.putdata(
        [int(v) for v in rng.integers(0, 2 if mode == "1" else 250, size[0] * size[1])]
        if mode in ("1", "L", "P", "I;16", "I")
        else [tuple(int(v) for v in px) for px in rng.integers(0, 256, (size[0] * size[1], len(mode)))]
    )
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


JPEG = png_bytes("RGB", (40, 30), "JPEG")
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBPVP8 "]


@FUZZ
@given(cut=st.integers(0, len(JPEG) - 1))
def test_truncated_jpeg(tmp_path: Path, cut: int) -> None:
    """A JPEG cut at any length: an RGB image or one MSRNError naming the file."""
    path = tmp_path / "x.jpg"
    path.write_bytes(JPEG[:cut])
    img = handled(lambda: open_image(path))
    assert img is None or (img.mode == "RGB" and img.size == (40, 30))


@FUZZ
@given(magic=st.sampled_from(MAGIC), tail=st.binary(max_size=300))
def test_random_bytes_as_images(tmp_path: Path, magic: bytes, tail: bytes) -> None:
    """Random bytes, also behind real format signatures: one MSRNError (or, rarely, a decodable image)."""
    path = tmp_path / "x.img"
    path.write_bytes(magic + tail)
    img = handled(lambda: open_image(path))
    assert img is None or img.mode == "RGB"


@FUZZ
@given(
    mode=st.sampled_from(["1", "L", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "LA"]),
    width=st.integers(1, 9),
    height=st.integers(1, 9),
)
def test_image_modes_and_tiny_sizes(tmp_path: Path, mode: str, width: int, height: int) -> None:
    """Every mode (grey, 1-bit, palette, RGBA, CMYK, 16-bit) at 1..9 px decodes to RGB and transforms cleanly."""
    fmt = {"CMYK": "JPEG", "I": "TIFF", "LA": "PNG"}.get(mode, "PNG")
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(png_bytes(mode, (width, height), fmt))
    img = handled(lambda: open_image(path))
    assert img is not None and img.mode == "RGB" and img.size == (width, height)
    for transform in (TrainTransform(64), TestTransform(64)):
        x = transform(img)
        assert tuple(x.shape) == (3, 64, 64) and bool(x.isfinite().all())


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (8-bit RGB) with one tiny data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0), (40_000, 40_000)])
def test_zero_sized_and_bomb_images(tmp_path: Path, size: tuple[int, int]) -> None:
    """Images declaring zero width or height, or a decompression bomb, and an empty file: one MSRNError, fast."""
    path = tmp_path / "x.png"
    path.write_bytes(png_with_header(*size))
    assert handled(lambda: open_image(path), seconds=5) is None
    path.write_bytes(b"")
    assert handled(lambda: open_image(path)) is None
