"""A comparison stopped mid-run (Ctrl-C) and started again continues from its last completed round and ends
with the metrics of an uninterrupted run (slow: three short simulations on real RetinaMNIST sites)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_ROUNDS = 4


def _command(data: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "fedkper_monai.cli", "compare", "--data-root", str(data), "--algorithms", "ditto",
        "-n", "3", "-t", "3", "--rounds", str(_ROUNDS), "--sample-fraction", "0.34", "--local-epochs", "1",
        "--seeds", "0", "--out", str(out),
    ]


def _metrics(out: Path) -> Path:
    return out / "ditto" / "seed0" / "workspace" / "server" / "simulate_job" / "metrics.jsonl"


def _round_lines(path: Path) -> list[dict]:
    return [line for line in map(json.loads, path.read_text().splitlines()) if "round" in line and "site" not in line]


def _stop_after_round(command: list[str], metrics: Path, round_index: int, stderr: Path,
                      timeout: float = 600) -> int:
    """Run ``command``, press Ctrl-C once ``metrics`` holds the round line of ``round_index``; its exit code."""
    # A test run started in the background (`cmd &` without job control, as a CI runner may) ignores SIGINT,
    # and children inherit that: the comparison would never see the Ctrl-C. Give it the default back.
    with open(stderr, "wb") as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and process.poll() is None:
                if metrics.exists() and any(line["round"] >= round_index for line in _round_lines(metrics)):
                    break
                time.sleep(0.5)
            assert process.poll() is None, "the comparison ended before it could be stopped"
            process.send_signal(signal.SIGINT)
            return process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()


def test_a_stopped_comparison_continues_and_matches_an_uninterrupted_one(retina_federation, tmp_path):
    from test_simulation import _differences

    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    assert subprocess.run(_command(retina_federation, reference), capture_output=True, timeout=900).returncode == 0
    code = _stop_after_round(_command(retina_federation, stopped), _metrics(stopped), 1, tmp_path / "stderr.txt")
    # The user pressed Ctrl-C: one line saying how to continue, the shell's exit code, no traceback.
    said = (tmp_path / "stderr.txt").read_text()
    assert code == 130 and "Traceback" not in said, said[-2000:]
    assert "compare: stopped by Ctrl-C (the same command continues from the last completed round)" in said
    lines_at_stop = len(_round_lines(_metrics(stopped)))
    assert not (stopped / "ditto" / "seed0" / "done.json").exists(), f"stopped after {lines_at_stop} rounds"
    assert lines_at_stop < _ROUNDS
    again = subprocess.run(_command(retina_federation, stopped), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "continued from its last completed round" in again.stdout
    expected = [json.loads(line) for line in _metrics(reference).read_text().splitlines()]
    got = [json.loads(line) for line in _metrics(stopped).read_text().splitlines()]
    # Each round once, in order; every line equal to the uninterrupted run's (timings aside).
    assert [line["round"] for line in _round_lines(_metrics(stopped))] == list(range(_ROUNDS))
    assert got[0]["run"]["resumed"] and got[0]["run"]["resumed"][0]["round"] <= lines_at_stop + 1
    header_ignored = ("started", "resumed")
    differences = _differences({k: v for k, v in expected[0]["run"].items() if k not in header_ignored},
                               {k: v for k, v in got[0]["run"].items() if k not in header_ignored}, "header")
    differences += [d for i, (e, g) in enumerate(zip(expected[1:], got[1:]), 1) for d in _differences(e, g, f"line {i}")]
    assert len(expected) == len(got) and not differences, differences[:10]
    assert not (stopped / "ditto" / "seed0" / "workspace.stopped").exists(), "what the stop left is removed once done"
    # Nothing of the stopped simulation is still running.
    leftovers = subprocess.run(["pgrep", "-f", str(stopped)], capture_output=True, text=True).stdout.split()
    assert [pid for pid in leftovers if int(pid) != os.getpid()] == []
