"""A site started from another project's startup kit, as FLARE reports it (slow: a real FLARE server and client).

The server of our project and site-1 of another project's kit aimed at the same port, both on loopback: FLARE's
client refuses the server's certificate (it chains to another root CA) and retries; the server never lists it.
What the operator sees is written in docs/real-sites.md ("A site from another project"); ``site check`` says it
before the start (``test_lab_sitecheck.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedkper_monai.launch.participants import Participants
from fedkper_monai.launch.poc import ADMIN, free_port, project_yaml

pytestmark = pytest.mark.slow

# What FLARE 2.9's client writes to its log at each attempt (docs/real-sites.md quotes it).
REFUSED = "failed with exception ClientConnectorCertificateError"
WHY = "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in certificate chain"


def _provision(folder: Path, name: str, port: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "project.yml").write_text(project_yaml(port, ["site-1"], name=name))
    done = subprocess.run([sys.executable, "-m", "nvflare.cli", "provision", "-p", "project.yml", "-w", "ws"], cwd=folder,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(folder)})
    assert done.returncode == 0, done.stdout + done.stderr
    (prod,) = (folder / "ws" / name).glob("prod_*")
    return prod


def test_a_site_with_another_projects_kit_is_refused_by_flare_and_never_joins(tmp_path):
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    port = free_port()
    ours, other = _provision(tmp_path / "ours", "ours", port), _provision(tmp_path / "other", "other", port)
    (tmp_path / "logs").mkdir()
    participants = Participants(tmp_path / "logs")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # sub_start.sh runs python3
    env = {**os.environ, "PATH": path}
    try:
        participants.start("server", ours / "server", env)
        participants.start("site-1", other / "site-1", env)
        log = tmp_path / "logs" / "site-1.log"
        deadline = time.monotonic() + 90
        while REFUSED not in (log.read_text(errors="replace") if log.exists() else ""):
            assert time.monotonic() < deadline and not participants.dead(), log.read_text(errors="replace")[-2000:]
            time.sleep(1.0)
        refusal = next(line for line in log.read_text(errors="replace").splitlines() if REFUSED in line)
        assert WHY in refusal and f"localhost:{port}" in refusal, refusal
        session = new_secure_session(ADMIN, str(ours / ADMIN), timeout=30.0)
        try:
            assert [client.name for client in session.get_connected_client_list()] == [], "the foreign site never joins"
        finally:
            session.close()
        assert "site-1" not in (tmp_path / "logs" / "server.log").read_text(errors="replace"), "the server saw no registration"
        assert not participants.dead(), "FLARE's client keeps retrying: it does not exit"
    finally:
        participants.stop()
