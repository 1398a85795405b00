"""sslseg.io: atomic writes appear complete or not at all, with the user's normal permissions."""

import os
import stat

import pytest

from sslseg.io import atomic_open, remove_stale_temp_files, write_json_atomic


def test_atomic_write_has_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        path = write_json_atomic({"a": 1}, tmp_path / "x.json")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert (
        mode == 0o640
    ), f"mode {oct(mode)}, expected 0o640 (0666 & ~umask 027), not mkstemp's 0600"


def test_failed_write_leaves_old_file_and_no_tmp(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as f:
            f.write("new, half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"], list(tmp_path.iterdir())


def test_remove_stale_temp_files_only_those_of_the_named_files(tmp_path):
    """The temp file of a killed atomic write is removed and named; other dotfiles stay."""
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(tmp_path / "model_0000007.pth", "wb") as f:
            f.write(b"half")
            stale = next(tmp_path.glob(".model_0000007.pth.*.tmp"))
            os.link(stale, tmp_path / "kept.tmp")  # what a SIGKILL would leave behind
            raise KeyboardInterrupt
    os.replace(tmp_path / "kept.tmp", stale)
    (tmp_path / ".other.txt.abc.tmp").write_text("a user's file")
    lines = []
    removed = remove_stale_temp_files(tmp_path, ["*.pth", "last_checkpoint"], lines.append)
    assert removed == [stale] and not stale.exists(), removed
    assert (tmp_path / ".other.txt.abc.tmp").exists(), "a file of another name was removed"
    assert len(lines) == 1 and str(stale) in lines[0], lines
