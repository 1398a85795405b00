"""sslseg.io: atomic writes appear complete or not at all, with the user's normal permissions."""

import os
import stat

import pytest

from sslseg.io import atomic_open, write_json_atomic


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
