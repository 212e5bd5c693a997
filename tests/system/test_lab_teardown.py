"""``deploy teardown``: what a ``deploy lab`` killed with SIGKILL left (no teardown ran) is removed from its record
(fast; needs root and ``ip``, skips otherwise)."""

from __future__ import annotations

import json
import subprocess

import pytest

from fedkper_monai.cli import main
from fedkper_monai.launch.lab_net import LabNetwork, lab_leftovers, namespaces_available


def test_teardown_removes_a_recorded_lab_and_its_processes(tmp_path, capsys):
    why_not = namespaces_available()
    if why_not:
        pytest.skip(f"the lab network needs network namespaces: {why_not}")
    network = LabNetwork(["server", "site-1", "admin@nvidia.com"], hosts={"fedkper-server": "server"})
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "network.json").write_text(json.dumps({"token": network.token, "participants": network.participants}))
    try:
        network.create()
        sleeper = subprocess.Popen([*network.exec_prefix("site-1"), "sleep", "300"])
        assert len(lab_leftovers(network.token)) == 7  # 4 namespaces, 3 /etc/netns entries
        assert main(["deploy", "teardown", "--workspace", str(tmp_path)]) == 0
        assert "removed: namespace" in capsys.readouterr().out
        assert sleeper.wait(timeout=30) != 0, "the process inside the namespace is ended"
        assert not lab_leftovers(network.token)
        assert main(["deploy", "teardown", "--workspace", str(tmp_path)]) == 0
        assert "nothing of this lab was left" in capsys.readouterr().out
    finally:
        network.teardown()
    assert main(["deploy", "teardown", "--workspace", str(tmp_path / "none")]) == 2
    assert "network.json: no lab network recorded here" in capsys.readouterr().err
