"""What a lab participant sees of the host's files (fast; needs root and ``unshare``, skips otherwise)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from fedkper_monai.launch.lab import hiding_prefix


def test_a_hidden_folder_reads_empty_inside_and_stays_whole_outside(tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("hiding folders needs root and unshare (util-linux)")
    (tmp_path / "site-1").mkdir()
    (tmp_path / "site-2").mkdir()
    (tmp_path / "site-1" / "site-1.json").write_text("{}")
    (tmp_path / "site-2" / "site-2.json").write_text("{}")
    view = hiding_prefix([tmp_path / "site-2"])
    assert subprocess.run([*view, "cat", str(tmp_path / "site-1" / "site-1.json")], capture_output=True).returncode == 0
    hidden = subprocess.run([*view, "cat", str(tmp_path / "site-2" / "site-2.json")], capture_output=True, text=True)
    assert hidden.returncode != 0 and "No such file" in hidden.stderr
    assert (tmp_path / "site-2" / "site-2.json").read_text() == "{}", "the host's view is untouched"
    with open("/proc/self/mounts") as mounts:
        assert "fedkper-lab-hidden" not in mounts.read()
