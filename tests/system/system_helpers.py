"""What the end-to-end tests share: finding the processes a run left behind, killing a participant."""

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


def kill_processes_of(kit: str) -> int:
    """SIGKILL every process running from the startup-kit folder ``kit`` (a participant's parent and the job
    processes it started), as a power cut would; returns how many."""
    import psutil

    killed = 0
    for process in psutil.process_iter(["cmdline"]):
        if any(arg == kit or arg.startswith(kit + "/") for arg in process.info.get("cmdline") or []):
            try:
                process.kill()
                killed += 1
            except psutil.NoSuchProcess:
                pass
    return killed
