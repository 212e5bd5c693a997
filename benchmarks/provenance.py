"""What every benchmark records about the run itself: the commit it measured, whether the tree differed from that
commit, the machine's load average at the start and at the end, the CPU count and the date.

A benchmark calls :func:`start` first (it prints a warning when the 1-minute load average is above
:data:`IDLE_LOAD`: its figures are then not measured with nothing else running), keeps the returned record
under ``"provenance"`` in its results JSON, and calls :func:`finish` on it before each write.

Changes under ``benchmarks/results/`` and ``benchmarks/runs/`` do not count as uncommitted changes: they are
what the benchmarks write, not the code they measure.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["IDLE_LOAD", "load_average", "commit", "uncommitted_paths", "start", "finish"]

ROOT = Path(__file__).resolve().parents[1]
IDLE_LOAD = 0.5  # 1-minute load average above which a machine is not "idle" for a measurement
_OUTPUTS = ("benchmarks/results/", "benchmarks/runs/")
_LISTED = 20  # uncommitted paths kept in the record (the count is always complete)


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages, to two decimals."""
    return [round(value, 2) for value in os.getloadavg()]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def commit() -> str:
    """``git rev-parse HEAD`` of the repository holding this file ("unknown" outside a git checkout)."""
    head = _git("rev-parse", "HEAD")
    return head.strip() if head else "unknown"


def uncommitted_paths() -> list[str] | None:
    """Paths that differ from HEAD (modified, staged, deleted or untracked, not ignored), benchmark outputs aside;
    None when git cannot tell."""
    status = _git("status", "--porcelain", "--untracked-files=all")
    if status is None:
        return None
    paths = [line[3:].split(" -> ")[-1].strip('"') for line in status.splitlines() if len(line) > 3]
    return sorted(path for path in paths if not path.startswith(_OUTPUTS))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def start(name: str) -> dict[str, Any]:
    """The provenance record of a benchmark starting now; prints a warning when the machine is not idle."""
    changed = uncommitted_paths()
    load = load_average()
    record: dict[str, Any] = {
        "commit": commit(),
        "uncommitted_changes": None if changed is None else bool(changed),
        "uncommitted_paths": None if changed is None else changed[:_LISTED],
        "uncommitted_path_count": None if changed is None else len(changed),
        "cpu_count": os.cpu_count(),
        "date_start": _now(),
        "load_average_start": load,
        "idle_load_threshold": IDLE_LOAD,
        "idle_at_start": load[0] <= IDLE_LOAD,
    }
    if not record["idle_at_start"]:
        print(f"warning: {name}: the 1-minute load average is {load[0]} (above {IDLE_LOAD}) at the start: these figures "
              "are not measured with nothing else running", flush=True)
    if changed:
        print(f"note: {name}: the tree differs from commit {record['commit'][:12]} in {len(changed)} path(s) "
              f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''})", flush=True)
    return record


def finish(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with the load average and the date now (called again, it moves them on); returns it."""
    record["date_end"] = _now()
    record["load_average_end"] = load_average()
    return record
