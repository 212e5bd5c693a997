"""``deploy lab``: a provisioned federation, each participant in a network namespace of its own (slow; root).

Skips with the reason when this host cannot create namespaces (not root, no ``ip``) or ../shared is absent.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedkper_monai.cli import main
from fedkper_monai.flare.lab_net import lab_leftovers, namespaces_available

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flare"))
from test_simulation import _GOLDEN_RUN, _differences  # noqa: E402 - the golden comparison, shared

_RUN = ["--rounds", "2", "--sample-fraction", "0.67", "--local-epochs", "1"]  # the settings of _GOLDEN_RUN


@pytest.fixture(autouse=True)
def _needs_namespaces():
    why_not = namespaces_available()
    if why_not:
        pytest.skip(f"the lab federation needs network namespaces: {why_not}")
    assert not lab_leftovers(), "a lab of an earlier run is still on this host"


def _processes_of(marker: str) -> list[str]:
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info.get("cmdline") or [])
        if marker in cmdline:
            found.append(f"{process.info['pid']}: {cmdline[:120]}")
    return found


def _records(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0]["run"].pop("job_id", None)  # FLARE's job id differs from run to run
    return records


def test_a_job_on_three_namespaced_sites_equals_the_simulator_and_leaves_nothing(retina_federation, tmp_path, capfd):
    workspace = tmp_path / "lab"
    code = main(["deploy", "lab", "fedkper", "--sites", "3", "--data-root", str(retina_federation), "--workspace",
                 str(workspace), *_RUN, "--timeout", "300"])
    printed = capfd.readouterr().out
    assert code == 0, printed
    assert "lab network up: server 10.213.0.10" in printed and "3 sites connected" in printed
    assert "round 2 of 2 done" in printed and "lab torn down" in printed
    assert not lab_leftovers(), "no namespace, link or /etc/netns entry is left"
    assert not _processes_of(str(workspace)), "no participant process is left"
    # Each site holds its own datalist and images only, and its site-config names that folder.
    for site in ("site-1", "site-2", "site-3"):
        folder = workspace / "data" / site
        assert sorted(path.name for path in folder.glob("*.json")) == [f"{site}.json"]
        (kit,) = workspace.glob(f"provision/fedkper_lab/prod_*/{site}")
        assert json.loads((kit / "local" / "fedkper_site.json").read_text())["data_root"] == str(folder)
    # The same job and seed in FLARE's simulator: every line equal (figures to 1e-6, timings aside).
    assert main(["simulate", "jobs/fedkper_medmnist", "-w", str(tmp_path / "sim"), "--data-root", str(retina_federation),
                 *_GOLDEN_RUN]) == 0
    capfd.readouterr()
    expected = _records(tmp_path / "sim" / "server" / "simulate_job" / "metrics.jsonl")
    actual = _records(workspace / "result" / "workspace" / "metrics.jsonl")
    assert len(actual) == len(expected)
    sampled = [(r["round"], r["site"]) for r in actual if r.get("task") == "train"]
    assert sampled == [(r["round"], r["site"]) for r in expected if r.get("task") == "train"], "the same sampled sites"
    problems = [d for i, (e, a) in enumerate(zip(expected, actual)) for d in _differences(e, a, f"line {i + 1}")]
    assert not problems, "\n".join(problems[:20])


def test_ctrl_c_while_the_sites_run_tears_the_lab_down(retina_federation, tmp_path):
    """SIGINT to ``deploy lab`` once its network is up: it exits 130 and leaves no namespace, link or process."""
    workspace = tmp_path / "lab"
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen([sys.executable, "-m", "fedkper_monai.cli", "deploy", "lab", "fedkper", "--sites", "3",
                                "--data-root", str(retina_federation), "--workspace", str(workspace), *_RUN],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "sites connected" not in (tmp_path / "lab.log").read_text():
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "lab.log").read_text()[-3000:]
            time.sleep(0.5)
        assert lab_leftovers(), "the lab is up"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130, (tmp_path / "lab.log").read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    assert "lab torn down" in (tmp_path / "lab.log").read_text()
    assert not lab_leftovers(), "no namespace, link or /etc/netns entry is left"
    assert not _processes_of(str(workspace)), "no participant process is left"
