"""Image files built inside the tests: decompression bombs and sideways phone photos."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import ExifTags, Image


def bomb_png(width: int, height: int) -> bytes:
    """A real decompression bomb: a valid greyscale PNG of width x height zeros, a few kB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\0" * (width + 1)  # filter byte + one grey byte per pixel
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def sideways_jpeg(upright: Image.Image, quality: int = 92) -> bytes:
    """The picture stored turned a quarter left, as a phone stores it, with EXIF orientation 6."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "turn 90 degrees clockwise to view"
    buf = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buf, format="JPEG", quality=quality, exif=exif)
    return buf.getvalue()
