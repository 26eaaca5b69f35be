"""Files fetched once into msrn's cache (`~/.cache/msrn` or $MSRN_CACHE) and checked by SHA-256."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from msrn.errors import MSRNError


def cache_dir() -> Path:
    return Path(os.environ.get("MSRN_CACHE", Path.home() / ".cache" / "msrn"))


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, sha256: str | None = None) -> Path:
    """Download `url` into the cache (once). The hash is `sha256` or, for torchvision-style names
    (`name-<hex>.pth`), the hex prefix in the name; a mismatch deletes the download. With `sha256`
    given, a cached copy is checked too, and fetched again when it differs."""
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    target = cache_dir() / name
    m = re.search(r"-([0-9a-f]{8,64})\.", name)
    expected = (sha256 or (m.group(1) if m else "")).lower()
    if target.is_file():
        if sha256 is None or file_sha256(target).startswith(expected):
            return target
        target.unlink()  # a cached copy with the wrong hash is never used
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out)
        digest = file_sha256(Path(tmp))
        if expected and not digest.startswith(expected):
            raise MSRNError(f"{url}: SHA-256 {digest[:16]}... does not match the expected {expected[:16]}...")
        os.replace(tmp, target)
    except (OSError, ValueError) as e:  # ValueError: not a URL urllib can open
        raise MSRNError(f"cannot download {url}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
