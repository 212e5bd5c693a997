"""Where a run's ``metrics.jsonl`` is: one rule for ``report``, ``bundle``, ``predict`` and the launchers.

The FLARE server writes one ``metrics.jsonl`` into its job folder; a simulator workspace nests it
(``RUN/server/simulate_job/metrics.jsonl``), ``compare`` one level deeper (``RUNS/<algorithm>/seed<k>/workspace/...``).
The rule, :func:`find_metrics_file`:

1. the ``metrics.jsonl`` file itself is taken as given;
2. a folder that holds a ``metrics.jsonl`` directly is the server's job folder: that file;
3. any other folder is a run folder and must hold exactly one ``metrics.jsonl`` at any depth below it.

None, or several (a POC server workspace with one job folder per job, a folder of several runs), is a
:class:`~fedkper_monai.errors.DataError` naming the folder and the files found: picking the first or the
last would silently report, export or watch the wrong run.

Standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedkper_monai.errors import DataError
from fedkper_monai.metrics_schema import METRICS_FILE

__all__ = ["find_metrics_file", "server_job_dir"]


def find_metrics_file(run: str | os.PathLike) -> Path:
    """The one ``metrics.jsonl`` of a run (see the module docstring for the rule).

    Args:
        run: a run folder (simulator workspace, ``compare`` run folder), the server's job folder, or the
            ``metrics.jsonl`` file.

    Raises:
        DataError: ``run`` does not exist, is a file other than ``metrics.jsonl``, or holds no
            ``metrics.jsonl`` or several below it (the message lists them, relative to ``run``).
    """
    root = Path(run)
    if root.is_file():
        if root.name == METRICS_FILE:
            return root
        raise DataError(root, f"expected a run folder or a {METRICS_FILE} file")
    if not root.is_dir():
        raise DataError(root, "run folder not found")
    if (root / METRICS_FILE).is_file():
        return root / METRICS_FILE
    found = sorted(path for path in root.rglob(METRICS_FILE) if path.is_file())
    if not found:
        raise DataError(root, f"no {METRICS_FILE} found in this run folder or below it (is it a finished FLARE run folder?)")
    if len(found) > 1:
        listed = ", ".join(path.relative_to(root).as_posix() for path in found)
        raise DataError(root, f"{len(found)} {METRICS_FILE} files found below it ({listed}); pass each run's own folder")
    return found[0]


def server_job_dir(run: str | os.PathLike) -> Path:
    """The server's job folder of a run: the folder holding its one ``metrics.jsonl`` (the global model,
    checkpoints and the server's job config lie beside it).

    Raises:
        DataError: as :func:`find_metrics_file`.
    """
    return find_metrics_file(run).parent
