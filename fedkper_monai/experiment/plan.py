"""Planning a ``fedkper-monai compare``: which runs, in which folders, with which settings, and which of them
are already finished.

A run's settings are everything that determines its result (the prepared job with its data root taken out,
the partition's and the held-out sites' fingerprints, the number of sites); ``done.json`` keeps them, so a
finished run is skipped, an unfinished one redone and a changed one refused unless ``overwrite``. All of this
is decided before the first simulation starts.
"""

from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fedkper_monai.algorithm_registry import ALGORITHMS, Algorithm
from fedkper_monai.errors import FedKPerError
from fedkper_monai.experiment.pooled_data import data_fingerprint, held_out_fingerprint
from fedkper_monai.flare.jobspec import (
    STANDARD_JOBS,
    controller_args,
    load_job,
    save_job_configs,
    set_algorithm,
    write_job,
)
from fedkper_monai.flare.resume import CHECKPOINT_FILE, SIMULATOR_JOB_ID
from fedkper_monai.flare.sitedata import site_datalists
from fedkper_monai.launch.checks import check_site_count
from fedkper_monai.launch.overrides import JobOverrides
from fedkper_monai.launch.simulate import find_metrics, prepare_job, read_round_lines

__all__ = [
    "DONE_FILE",
    "STARTED_FILE",
    "STOPPED_WORKSPACE",
    "DEFAULT_BASE_JOB",
    "CompareRun",
    "parse_algorithms",
    "algorithm_job",
    "plan_runs",
    "finished_rounds",
]

DONE_FILE = "done.json"
STARTED_FILE = "started.json"
STOPPED_WORKSPACE = "workspace.stopped"
DEFAULT_BASE_JOB = "jobs/fedkper_medmnist"
# What a run folder may hold; anything else means it is not ours and is never deleted.
_RUN_ENTRIES = frozenset({"job", "workspace", "data", "simulator.log", DONE_FILE, STARTED_FILE, STOPPED_WORKSPACE})
# 2: settings name the held-out sites' datalists ("held_out"); version 1 did not (see _as_recorded).
_SETTINGS_VERSION = 2


def parse_algorithms(text: str | Sequence[str]) -> list[Algorithm]:
    """The registry entries of a comma-separated list of names (duplicates dropped, order kept).

    Raises:
        FedKPerError: an unknown name; the message lists the valid ones.
    """
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [name.strip() for name in names if name.strip()]
    unknown = [name for name in names if name not in ALGORITHMS]
    if unknown or not names:
        what = f"unknown algorithm(s) {', '.join(map(repr, unknown))}" if unknown else "no algorithm given"
        raise FedKPerError(f"{what}; valid names: {', '.join(ALGORITHMS)}")
    return [ALGORITHMS[name] for name in dict.fromkeys(names)]


def algorithm_job(base: tuple[dict, dict, dict], algorithm: Algorithm) -> tuple[dict, dict, dict]:
    """The base job's configs ``(meta, server, client)`` changed into ``algorithm`` (copies; see
    :func:`~fedkper_monai.flare.jobspec.set_algorithm`), named after it."""
    meta, server, client = copy.deepcopy(base)
    meta["name"] = algorithm.name
    set_algorithm(meta, server, client, algorithm)
    return meta, server, client


@dataclass
class CompareRun:
    """One (algorithm, seed) run of a comparison.

    Attributes:
        algorithm: the algorithm (a registry entry).
        seed: the seed override (None: the base job's seed).
        folder: the run folder.
        settings: everything that determines the run's result (compared with ``done.json``).
        rounds: the number of rounds it runs.
        status: ``"done"`` (skipped), ``"new"``, ``"redo"`` (unfinished, nothing to continue), ``"resume"``
            (stopped, continued from its last completed round) or ``"overwrite"``.
    """

    algorithm: Algorithm
    seed: int | None
    folder: Path
    settings: dict[str, Any]
    rounds: int
    status: str = "new"

    @property
    def label(self) -> str:
        return self.algorithm.name if self.seed is None else f"{self.algorithm.name} seed {self.seed}"

    @property
    def workspace(self) -> Path:
        return self.folder / "workspace"


def _resolve_base_job(base_job: str | Path, scratch: Path) -> Path:
    """The base job folder; a missing ``jobs/<name>`` of the standard jobs is generated from its spec."""
    path = Path(base_job)
    if path.is_dir():
        return path.resolve()
    if not path.exists() and path.name in STANDARD_JOBS:
        # Same content as the committed folder (a test keeps them equal): works from any directory.
        return write_job(scratch / "base" / path.name, STANDARD_JOBS[path.name])
    raise FedKPerError(f"{path}: base job folder not found (expected meta.json and app/config/)")


def _normalized(configs: tuple[dict, dict, dict]) -> dict[str, Any]:
    """Prepared job configs with machine-specific paths taken out (a moved folder is the same run)."""
    meta, server, client = copy.deepcopy(configs)
    # Components (the server's evaluator) and the site executor's settings may name the data root.
    arg_sets = [component.get("args", {}) for config in (server, client) for component in config.get("components", [])]
    arg_sets += [entry.get("executor", {}).get("args", {}) for entry in client.get("executors", [])]
    for args in arg_sets:
        if "data_root" in args:
            args["data_root"] = "<data_root>"
    return {"meta": meta, "server": server, "client": client}


def _overrides(algorithm: Algorithm, data_root: Path, seed: int | None, rounds: int | None,
               sample_fraction: float | None, local_epochs: int | None,
               validate_every: int | None) -> JobOverrides:
    return JobOverrides(
        rounds=rounds,
        data_root=str(data_root),
        sample_fraction=1.0 if algorithm.pooled else sample_fraction,
        local_epochs=local_epochs,
        seed=seed,
        validate_every=validate_every,
    )


def finished_rounds(workspace: Path) -> int:
    try:
        return len(read_round_lines(find_metrics(workspace)))
    except (FedKPerError, OSError, ValueError):
        return 0


def _check_run_folder(folder: Path) -> None:
    if folder.exists():
        foreign = sorted(entry.name for entry in folder.iterdir() if entry.name not in _RUN_ENTRIES)
        if foreign:
            raise FedKPerError(
                f"{folder}: not a compare run folder (holds {', '.join(foreign[:5])}); choose another --out"
                + (" or pass --seeds as in the earlier run" if any(n.startswith("seed") for n in foreign) else "")
            )


def plan_runs(
    data_root: str | Path,
    algorithms: Sequence[Algorithm],
    out: str | Path,
    *,
    n_clients: int | None = None,
    seeds: Sequence[int] | None = None,
    rounds: int | None = None,
    sample_fraction: float | None = None,
    local_epochs: int | None = None,
    validate_every: int | None = None,
    base_job: str | Path = DEFAULT_BASE_JOB,
    overwrite: bool = False,
) -> list[CompareRun]:
    """Decide every run of a comparison before any starts: its folder, settings and status.

    Args:
        data_root: a folder made by ``fedkper-monai prepare`` (site-k.json, global_test.json, ...).
        algorithms: the algorithms, in run order.
        out: the comparison folder ``RUNS``.
        n_clients: number of sites; must equal the number of site datalists (None: take it from them).
        seeds: run each algorithm once per seed into ``<algorithm>/seed<k>`` (None: the base job's seed,
            into ``<algorithm>``).
        rounds, sample_fraction, local_epochs, validate_every: overrides of the base job (None keeps its value).
        base_job: the job folder every algorithm is derived from.
        overwrite: redo finished runs whose settings changed instead of failing.

    Returns:
        The runs, seed by seed, algorithms in the given order within a seed.

    Raises:
        FedKPerError: bad data root or site count, a run folder that is not ours, or (without
            ``overwrite``) finished runs whose settings differ from the requested ones.
    """
    root = Path(data_root).resolve()
    if n_clients is not None:
        check_site_count(n_clients, root)
    sites = site_datalists(root)
    fingerprint = data_fingerprint(root)
    held_out = held_out_fingerprint(root)
    out = Path(out).resolve()
    runs: list[CompareRun] = []
    conflicts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fedkper_compare_plan_") as scratch_name:
        scratch = Path(scratch_name)
        base = load_job(_resolve_base_job(base_job, scratch))
        for seed in seeds if seeds is not None else [None]:
            for algorithm in algorithms:
                folder = out / algorithm.name if seed is None else out / algorithm.name / f"seed{seed}"
                _check_run_folder(folder)
                source = save_job_configs(scratch / "variant" / algorithm.name, *algorithm_job(base, algorithm))
                # Prepared exactly as the real run will be; the centralized job sees the same task (the
                # network comes from the data), only its data root differs.
                overrides = _overrides(algorithm, root, seed, rounds, sample_fraction, local_epochs, validate_every)
                prepared = load_job(prepare_job(source, scratch / "workspace", overrides, scratch / "prepared"))
                settings = {
                    "version": _SETTINGS_VERSION,
                    "algorithm": algorithm.name,
                    "n_clients": 1 if algorithm.pooled else len(sites),
                    "data": fingerprint,
                    "held_out": held_out,
                    "job": _normalized(prepared),
                }
                settings = json.loads(json.dumps(settings))
                run = CompareRun(algorithm, seed, folder, settings, int(controller_args(prepared[1])["num_rounds"]))
                run.status = _status(run, overwrite, conflicts)
                runs.append(run)
    if conflicts:
        raise FedKPerError(
            "runs started or finished in --out were made with other settings (pass --overwrite to redo them, "
            "or choose another --out):\n  " + "\n  ".join(conflicts)
        )
    return runs


def _status(run: CompareRun, overwrite: bool, conflicts: list[str]) -> str:
    """``new``, ``redo`` or ``resume`` (unfinished), ``done`` (finished, same settings) or ``overwrite``; a run
    started or finished with other settings is added to ``conflicts`` unless ``overwrite``."""
    if not run.folder.exists():
        return "new"
    done = _read_settings(run.folder / DONE_FILE)
    if done is not None and done == _as_recorded(run.settings, done) and finished_rounds(run.workspace) == run.rounds:
        return "done"
    previous = done if done is not None else _read_settings(run.folder / STARTED_FILE)
    if previous is None or previous == _as_recorded(run.settings, previous):
        # Unfinished (or marked done with incomplete metrics): continued when it left a checkpoint.
        return "resume" if previous is not None and _left_checkpoint(run) else "redo"
    if overwrite:
        return "overwrite"
    changed = _differences(previous, _as_recorded(run.settings, previous))
    conflicts.append(f"{run.folder}: {'; '.join(changed[:3]) or 'settings changed'}")
    return "conflict"


def _as_recorded(settings: dict, recorded: dict) -> dict:
    """``settings`` in the form of a run's ``recorded`` ones: a run recorded by version 1, before settings named
    the held-out sites, is compared on everything else (its held-out sites came from the same ``prepare``)."""
    if recorded.get("version") == 1:
        return {**{key: value for key, value in settings.items() if key != "held_out"}, "version": 1}
    return settings


def _read_settings(path: Path) -> dict | None:
    """The ``settings`` of a done.json or started.json; None when missing or unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    settings = record.get("settings") if isinstance(record, dict) else None
    return settings if isinstance(settings, dict) else None


def _left_checkpoint(run: CompareRun) -> bool:
    """Whether a stopped run left a controller checkpoint to continue from (flare/resume.py)."""
    return any((folder / "server" / SIMULATOR_JOB_ID / CHECKPOINT_FILE).is_file()
               for folder in (run.workspace, run.folder / STOPPED_WORKSPACE))


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Human-readable ``where: old -> new`` lines for the leaves in which two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            found += _differences(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [line for i, (a, b) in enumerate(zip(old, new)) for line in _differences(a, b, f"{where}[{i}]")]
    return [] if old == new else [f"{where}: {json.dumps(old)} -> {json.dumps(new)}"]


