"""What the end-to-end tests share: finding the processes a run left behind."""

from __future__ import annotations


def processes_of(marker: str) -> list[str]:
    """``pid: command line`` of every process on this host whose command line holds ``marker`` (a run's workspace)."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info.get("cmdline") or [])
        if marker in cmdline:
            found.append(f"{process.info['pid']}: {cmdline[:120]}")
    return found
