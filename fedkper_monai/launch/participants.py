"""The processes of a FLARE deployment started on this machine (POC, or the lab's namespaced participants):
each in its own process group, restarted when asked, and stopped with everything they started."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["Participants"]


class Participants:
    """The POC processes, each in its own process group; ``stop()`` ends them and everything they started."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.processes: dict[str, subprocess.Popen] = {}
        self.started: dict[str, tuple[Path, dict[str, str]]] = {}
        self.restarted: dict[str, int] = {}

    def start(self, name: str, kit: Path, env: dict[str, str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process in stop()
        self.processes[name] = subprocess.Popen(
            ["bash", str(kit / "startup" / "sub_start.sh"), "--once"], cwd=kit, env=env, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self.started[name] = (kit, env)
        log.close()

    def dead(self) -> list[str]:
        """Participants whose process has exited."""
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def restart(self, name: str) -> None:
        """End what is left of ``name`` (its job processes outlive a killed parent) and start it again."""
        _end(self._leftovers(name), grace=5.0)
        self.restarted[name] = self.restarted.get(name, 0) + 1
        self.start(name, *self.started[name])

    def _leftovers(self, name: str) -> list[Any]:
        """Every process running from ``name``'s kit (FLARE's job processes start in sessions of their own)."""
        import psutil

        kit = str(self.started[name][0])
        found = []
        for process in psutil.process_iter(["cmdline"]):
            arguments = process.info.get("cmdline") or []
            if any(arg == kit or arg.startswith(kit + os.sep) for arg in arguments):
                found.append(process)
        return found

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to each process group and its descendants, then SIGKILL to what is left after ``grace`` s."""
        import psutil

        victims: list[psutil.Process] = []
        for name, process in self.processes.items():
            try:
                parent = psutil.Process(process.pid)
                victims += [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
            victims += self._leftovers(name)
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGTERM)
        _end(victims, grace)
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=grace)


def _end(victims: list[Any], grace: float) -> None:
    """SIGTERM to ``victims`` (psutil processes), SIGKILL to those alive after ``grace`` s."""
    import psutil

    for victim in victims:
        _quietly(victim.terminate)
    _, alive = psutil.wait_procs(victims, timeout=grace)
    for victim in alive:
        _quietly(victim.kill)
    psutil.wait_procs(alive, timeout=grace)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _quietly(action: Any) -> None:
    import psutil

    try:
        action()
    except psutil.NoSuchProcess:
        pass
