"""Atomic outputs: all or nothing, with the permissions of an ordinary new file."""

from __future__ import annotations

import os
import stat

import pytest

from fedkper_monai.io import OutputExistsError, atomic_directory, atomic_write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_outputs_follow_the_umask(tmp_path):
    mask = os.umask(0o022)
    try:
        written = atomic_write_json(tmp_path / "a" / "x.json", {"k": 1})
        with atomic_directory(tmp_path / "out") as staging:
            (staging / "f.txt").write_text("x")
    finally:
        os.umask(mask)
    assert _mode(written) == 0o644
    assert _mode(tmp_path / "out") == 0o755


def test_a_failed_directory_leaves_nothing_and_an_existing_one_is_kept(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "out") as staging:
            (staging / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("k")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with atomic_directory(tmp_path / "out"):
            pass
    assert (tmp_path / "out" / "keep.txt").read_text() == "k"
