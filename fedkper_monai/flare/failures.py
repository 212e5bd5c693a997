"""Sites that fail, time out or die: the task timeout, who failed in a round and why, their metrics lines.

No FLARE here: the controller reports answers and errors, asks for the timeout of its next tasks and
turns a round's failures into ``status: failed`` lines (``metrics_schema.FAILED_SITE_FIELDS``).
"""

from __future__ import annotations

import math
import time
from typing import Iterable, Mapping

__all__ = ["SiteFailures", "build_failure_lines"]


class SiteFailures:
    """The task timeout of each broadcast, and the sites that did not answer it.

    Args:
        task_timeout: a fixed timeout in seconds, or None to size it from the run (below).
        first_timeout: the timeout until some site has answered a task.
        min_timeout: the least sized timeout.
        factor: the sized timeout is ``factor`` times the slowest answer so far (from its broadcast).
    """

    def __init__(self, task_timeout: float | None, first_timeout: float, min_timeout: float, factor: float) -> None:
        self.task_timeout = task_timeout
        self.first_timeout = float(first_timeout)
        self.min_timeout = float(min_timeout)
        self.factor = float(factor)
        self.slowest: float | None = None
        self.current_timeout = self._size()
        self._started = time.perf_counter()
        self._reasons: dict[str, str] = {}

    def _size(self) -> int:
        if self.task_timeout:
            seconds = float(self.task_timeout)
        elif self.slowest is None:
            seconds = self.first_timeout
        else:
            seconds = max(self.min_timeout, self.factor * self.slowest)
        return max(1, math.ceil(seconds))

    def start_round(self, started: float | None = None) -> int:
        """A broadcast begins: fix its timeout (whole seconds, as FLARE takes it) and forget old errors."""
        self._started = time.perf_counter() if started is None else started
        self._reasons = {}
        self.current_timeout = self._size()
        return self.current_timeout

    def timeout(self) -> int:
        """The timeout of this broadcast's tasks."""
        return self.current_timeout

    def answered(self) -> None:
        """A site answered a task of this broadcast: its time sizes later timeouts."""
        elapsed = time.perf_counter() - self._started
        self.slowest = elapsed if self.slowest is None else max(self.slowest, elapsed)

    def failed(self, site: str, reason: str) -> None:
        """A site's task ended with an error."""
        self._reasons[site] = reason

    def close_round(
        self,
        train_targets: Iterable[str],
        validate_targets: Iterable[str],
        train_results: Mapping[str, object],
        validate_results: Mapping[str, object],
    ) -> dict[str, dict[str, str]]:
        """``{"train": {site: reason}, "validate": {site: reason}}`` for every target without a result."""
        silent = f"no answer within the task timeout of {self.current_timeout} s (site stopped, unreachable or too slow)"
        return {
            task: {site: self._reasons.get(site, silent) for site in targets if site not in results}
            for task, targets, results in (("train", train_targets, train_results), ("validate", validate_targets, validate_results))
        }


def build_failure_lines(train_round: int, failed: Mapping[str, Mapping[str, str]], validate_round: int | None = None) -> list[dict]:
    """The ``metrics.jsonl`` lines of a broadcast's failed sites, sorted by site.

    ``train_round`` is the round of the train task; a validate task is about the model of
    ``validate_round`` (default ``train_round - 1``: the model the broadcast sent).
    """
    model_round = train_round - 1 if validate_round is None else validate_round
    lines = []
    for task, round_index in (("train", train_round), ("validate", model_round)):
        for site, reason in sorted(failed.get(task, {}).items()):
            line = {"round": round_index, "site": site, "task": task, "status": "failed", "reason": reason}
            if task == "train":
                line["weight"] = 0.0
            lines.append(line)
    return lines
