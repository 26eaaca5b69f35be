"""Tests for msrn.io: atomic writes keep the old file on failure and leave no temp files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from msrn import io
from msrn.errors import MSRNError


def _fail_replace(src: str, dst: str) -> None:
    """Stand-in for os.replace that fails like a full or read-only disk would."""
    raise OSError("simulated rename failure")


def test_write_bytes_and_text(tmp_path: Path) -> None:
    io.atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    io.atomic_write_text(str(tmp_path / "a.txt"), "héllo\n")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.txt"]


def test_overwrite_replaces_content(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    io.atomic_write_text(target, "old")
    io.atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_json_accepts_numpy_and_keeps_key_order(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    obj = {"z": np.float32(0.5), "a": np.arange(3), "n": np.int64(7), "nested": [np.bool_(True)]}
    io.atomic_write_json(target, obj)
    text = target.read_text()
    assert json.loads(text) == {"z": 0.5, "a": [0, 1, 2], "n": 7, "nested": [True]}
    assert text.index('"z"') < text.index('"a"')
    assert '\n  "z"' in text


def test_json_rejects_unknown_objects_and_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    io.atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        io.atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_failed_replace_keeps_previous_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "keep.txt"
    io.atomic_write_text(target, "previous")
    monkeypatch.setattr(io.os, "replace", _fail_replace)
    with pytest.raises(OSError, match="simulated"):
        io.atomic_write_text(target, "replacement")
    with pytest.raises(OSError, match="simulated"):
        io.atomic_save_torch({"w": torch.zeros(2)}, target)
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_failed_writer_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "never.pt"
    with pytest.raises(Exception):  # noqa: B017 - torch raises its own pickling error type
        io.atomic_save_torch({"f": lambda: 0}, target)
    assert list(tmp_path.iterdir()) == []


def test_save_torch_roundtrip(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    io.atomic_save_torch({"w": torch.arange(4.0)}, target)
    loaded = torch.load(target, weights_only=True)
    assert torch.equal(loaded["w"], torch.arange(4.0))


@pytest.mark.skipif(os.name != "posix", reason="umask semantics are POSIX")
def test_permissions_follow_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        io.atomic_write_text(tmp_path / "p.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "p.txt").stat().st_mode) == 0o644


def test_check_writable_creates_folder(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    io.check_writable(folder)
    assert folder.is_dir()
    assert list(folder.iterdir()) == []


def test_check_writable_rejects_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MSRNError, match="is not writable"):
        io.check_writable(blocker / "sub")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_check_writable_rejects_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(MSRNError, match=f"output folder {folder} is not writable"):
            io.check_writable(folder)
    finally:
        folder.chmod(0o700)


@pytest.mark.skipif(os.name != "posix", reason="the folder fsync is POSIX only")
def test_write_syncs_the_whole_temp_file_before_the_rename_then_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power loss after the rename must find the new content on disk and the new name in the folder.
    Mutations that survived before: the temp file's handle.flush() and os.fsync() removed from
    _atomic_write (then no fsync of a full temp file), and _fsync_folder(folder) removed (no folder fsync)."""
    target = tmp_path / "metrics.json"
    real_fsync = os.fsync
    synced: list[tuple[bool, int, int, bool]] = []  # (is a folder, inode, size, target exists yet)

    def spy(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((stat.S_ISDIR(st.st_mode), st.st_ino, st.st_size, target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    text = '{"mAP": 61.5}\n'  # small: it sits in the write buffer until flushed
    io.atomic_write_text(target, text)
    assert target.read_text() == text
    file_entry = (False, target.stat().st_ino, len(text.encode()), False)  # the full temp file, before the rename
    assert file_entry in synced, synced
    assert synced[-1] == (True, tmp_path.stat().st_ino, synced[-1][2], True), synced  # then its folder


def test_remove_stale_temps_deletes_only_what_interrupted_writes_leave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write killed before its rename leaves `.NAME.<32 hex>.tmp`; a resume removes exactly those. The name is
    the one a real write uses (caught at its os.replace), so a change to either the name or the pattern fails."""
    real_replace, temps = os.replace, []

    def spy(src: str, dst: str) -> None:
        temps.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    io.atomic_save_torch({"epoch": 1}, tmp_path / "last.pt")
    monkeypatch.undo()
    assert len(temps) == 1
    (tmp_path / temps[0]).write_bytes(b"half a checkpoint")  # what a kill before the rename leaves
    hex32 = "0123456789abcdef" * 2
    stale = {temps[0], f".best.pt.{hex32}.tmp", f".metrics.json.{hex32}.tmp"}
    kept = {"last.pt", ".last.pt.tmp", f".last.pt.{hex32[:31]}.tmp", f"last.pt.{hex32}.tmp", f".x.{hex32}.tmp.pt"}
    for name in (stale | kept) - {temps[0], "last.pt"}:
        (tmp_path / name).write_bytes(b"")
    assert sorted(io.remove_stale_temps(tmp_path)) == sorted(stale)
    assert {p.name for p in tmp_path.iterdir()} == kept
