"""FLARE's simulator as a watched child process: its output goes to a log file, nothing waits forever.

FLARE's simulator starts one process per simulated site. When a site process dies at start (its port was
taken between FLARE choosing it and the site binding it: ``Address already in use``), the simulator logs
``Failed to create connection to the child process`` and then waits forever. :func:`run_watched` reads the
output line by line, ends the whole process tree as soon as such a line appears, and
:func:`run_with_retries` starts it again (FLARE picks fresh ports each start). It also keeps the first
site error of the output, so a failed run can end with the cause rather than FLARE's wrapper.

FLARE's simulator also fails to exit, now and then, after a job has ended when it runs fewer site processes
than there are sites (seen in CI: the job finished, the server stopped, and a worker of site-1 went on asking it
for tasks for over ten minutes). Our controller's last line says the job is over; a simulator still running
:data:`EXIT_GRACE_SECONDS` after it is ended, and the run counts as finished (``lingered``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["WatchedRun", "run_watched", "run_with_retries", "first_error", "PORT_CLASH_LINES", "HIDDEN_LINES",
           "EXIT_GRACE_SECONDS"]

# A simulated site that could not start: the run cannot go on, a fresh start (fresh ports) can.
PORT_CLASH_LINES = ("Address already in use", "Failed to create connection to the child process")
# A site process that is gone. Before any site finished a task this is a site that died at start (the round
# then waits for it until the first, long task timeout): a fresh start. Later it is a site that stopped
# mid-run, which the controller's failure handling covers (its task times out, the run goes on).
SITE_DIED_LINES = ("Communication error with client", "Subprocess died for client")
# Printed for every task a simulated site finishes.
_TASK_DONE_LINE = "Finished one task run for client"
# Known FLARE deprecation notices about what our jobs use on purpose (kept in the log file, never echoed).
# FLARE emits them with warnings forced to "always" (nvflare.fuel.utils.deprecated), so no warnings filter
# reaches them: they are dropped here, by message.
HIDDEN_LINES = ("WARNING: 'nvflare simulator' is deprecated", "DeprecationWarning: ModelLearner is deprecated")
# Our own errors carry their cause in the message (file and field); FLARE wraps them in longer lines.
_OWN_ERROR = re.compile(r"\b(?:FedKPerError|DataError|OutputExistsError): (?P<message>.+)$")
_ANY_ERROR = re.compile(r" - ERROR - (?P<message>.+)$|^(?P<exception>[A-Za-z_.]*(?:Error|Exception): .+)$")
_STOP_GRACE_SECONDS = 5.0
# The controller's last line (flare/controller.py): the workflow has ended and every metric is written.
_JOB_FINISHED = re.compile(r"finished \d+ rounds; metrics in ")
# How long the simulator may take to exit after that line: it exits within seconds when it does, also with
# 50 sites on 5 processes, so this only ends a simulator that hangs.
EXIT_GRACE_SECONDS = 120.0


@dataclass
class WatchedRun:
    """How one start of the simulator ended.

    Attributes:
        code: its exit code (-1 when it was ended because a site could not start).
        port_clash: a simulated site could not start (the line that said so is ``cause``).
        cause: the first site error of the output (None when there was none).
        lingered: the job had finished but the simulator had not exited ``exit_grace_seconds`` later, so it was
            ended (``code`` is then 0: the job's outputs were complete).
    """

    code: int
    port_clash: bool = False
    cause: str | None = None
    lingered: bool = False


def first_error(lines: Sequence[str]) -> str | None:
    """The first error of a simulator output: our own error's message when there is one, else the first
    ERROR log line or exception line."""
    for line in lines:
        found = _OWN_ERROR.search(line)
        if found:
            return found.group("message").strip()
    for line in lines:
        found = _ANY_ERROR.search(line.strip())
        if found:
            return (found.group("message") or found.group("exception")).strip()
    return None


class _Reader(threading.Thread):
    """Copies a process's output to the log (and the console when ``echo``), noting errors and clashes."""

    def __init__(self, stream, log, echo: bool) -> None:
        super().__init__(daemon=True)
        self.stream, self.log, self.echo = stream, log, echo
        self.errors: list[str] = []
        self.clash: str | None = None
        self.progressed = False  # a site has finished a task
        self.finished_at: float | None = None  # time.monotonic() of the controller's last line

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            self.log.write(line)
            self.log.flush()
            if self.echo and not any(marker in line for marker in HIDDEN_LINES):
                sys.stdout.write(line)
                sys.stdout.flush()
            self._note(line)

    def _note(self, line: str) -> None:
        """Keep what a line says: a site that finished a task, a site that could not start, an error."""
        self.progressed = self.progressed or _TASK_DONE_LINE in line
        if self.finished_at is None and _JOB_FINISHED.search(line):
            self.finished_at = time.monotonic()
        started_badly = not self.progressed and any(marker in line for marker in SITE_DIED_LINES)
        if self.clash is None and (started_badly or any(marker in line for marker in PORT_CLASH_LINES)):
            self.clash = line.strip()
        if len(self.errors) < 200 and ("Error" in line or "Exception" in line or " - ERROR - " in line):
            self.errors.append(line.rstrip("\n"))


def _end_tree(process: subprocess.Popen) -> None:
    """End the simulator and every process it started (site processes run in sessions of their own)."""
    import psutil

    try:
        family = [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        try:
            member.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=_STOP_GRACE_SECONDS)
    for member in alive:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait()


def run_watched(
    command: Sequence[str],
    env: dict[str, str],
    log_path: Path,
    *,
    echo: bool = False,
    on_poll: Callable[[], None] | None = None,
    poll_seconds: float = 0.5,
    exit_grace_seconds: float = EXIT_GRACE_SECONDS,
) -> WatchedRun:
    """Run ``command``, its output appended to ``log_path``; end it at once when a site cannot start, and
    ``exit_grace_seconds`` after the job finished when it has not exited by then."""

    def lingering() -> bool:
        return reader.finished_at is not None and time.monotonic() - reader.finished_at > exit_grace_seconds

    with open(log_path, "a", encoding="utf-8") as log:
        process = subprocess.Popen(list(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        reader = _Reader(process.stdout, log, echo)
        reader.start()
        lingered = False
        try:
            while process.poll() is None and reader.clash is None and not lingered:
                time.sleep(poll_seconds)
                if on_poll is not None:
                    on_poll()
                lingered = lingering() and process.poll() is None
        finally:
            if process.poll() is None:
                _end_tree(process)
        reader.join(timeout=_STOP_GRACE_SECONDS)
        if lingered:
            log.write(f"fedkper-monai: the simulator had not exited {exit_grace_seconds:.0f} s after the job finished; "
                      "it was ended\n")
    if reader.clash is not None:
        return WatchedRun(code=-1, port_clash=True, cause=reader.clash)
    if lingered:
        return WatchedRun(code=0, cause=first_error(reader.errors), lingered=True)
    return WatchedRun(code=process.returncode, cause=first_error(reader.errors))


def run_with_retries(
    command: Sequence[str],
    env: dict[str, str],
    log_path: Path,
    *,
    attempts: int = 3,
    echo: bool = False,
    on_poll: Callable[[], None] | None = None,
    on_retry: Callable[[WatchedRun, int], None] | None = None,
) -> WatchedRun:
    """:func:`run_watched`, started again (up to ``attempts`` starts in all) when a site could not start."""
    result = WatchedRun(code=-1)
    for attempt in range(1, attempts + 1):
        result = run_watched(command, env, log_path, echo=echo, on_poll=on_poll)
        if not result.port_clash:
            return result
        if attempt < attempts and on_retry is not None:
            on_retry(result, attempt)
    return result
