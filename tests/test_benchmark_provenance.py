"""``benchmarks/provenance.py``: what every benchmark's results JSON says about the run itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import provenance  # noqa: E402 - a script folder, not a package


def test_a_busy_machine_is_said_and_the_record_names_the_commit(monkeypatch, capsys):
    monkeypatch.setattr(provenance.os, "getloadavg", lambda: (3.456, 2.0, 1.0))
    record = provenance.start("bench_x")
    assert "warning: bench_x: the 1-minute load average is 3.46 (above 0.5)" in capsys.readouterr().out
    assert record["load_average_start"] == [3.46, 2.0, 1.0] and record["idle_at_start"] is False
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert record["commit"] == head.stdout.strip()
    monkeypatch.setattr(provenance.os, "getloadavg", lambda: (0.1, 0.2, 0.3))
    assert provenance.finish(record)["load_average_end"] == [0.1, 0.2, 0.3] and record["date_end"] >= record["date_start"]


def test_benchmark_outputs_are_not_uncommitted_changes_but_code_is(tmp_path, monkeypatch):
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        pytest.skip("no git on this machine")
    repo = tmp_path / "repo"
    (repo / "benchmarks" / "results").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "benchmarks" / "results" / "bench.json").write_text("{}")
    monkeypatch.setattr(provenance, "ROOT", repo)
    assert provenance.uncommitted_paths() == []
    (repo / "benchmarks" / "bench_x.py").write_text("print()")
    assert provenance.uncommitted_paths() == ["benchmarks/bench_x.py"]
