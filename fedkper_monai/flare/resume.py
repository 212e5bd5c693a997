"""Resuming a stopped run from its last completed round (plain Python: no FLARE, no torch at import).

FLARE 2.9 keeps no snapshot of a job: a server that restarts marks the running job ``ABANDONED``. A run of
:class:`~fedkper_monai.flare.controller.FedKPerController` continues as a new job instead. After each
aggregated round the controller writes a checkpoint into its run folder (:data:`CHECKPOINT_FILE`, the
global model beside it); a new job of the same run finds the newest checkpoint of a run that stopped
without ending, takes over its metrics file and continues with the next round. Each site takes over its own
state from the stopped job's folder at its first task (:meth:`fedkper_monai.training.site.Site.adopt_state`).

A resubmission with a site missing (a server restart while one hospital is still offline) continues with the
sites present (:func:`compare_settings`): a hospital down for a day must not cost the federation its completed
rounds. Each site's state is its own, so the missing site's history stays in the run (its folder of an older
job of the chain), and the header's ``resumed`` entry names the missing sites, so a report can tell exactly
which rounds ran without whom. The checkpoint keeps the run's full site list, so a later resubmission with
the site back continues again with all of them. A connected site the stopped run never had is another
federation: never continued.

Where stopped runs are looked for: the job folders in the participant's FLARE workspace (a POC or
provisioned server and its clients), or, when ``$FEDKPER_RESUME_ROOT`` is set, in
``$FEDKPER_RESUME_ROOT/<workspace folder name>/`` (the simulator wipes its workspace at start, so
``fedkper-monai compare`` moves a stopped run's workspace aside and points there). Only a job id that is a
plain folder name is ever looked up: a job config names no path.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fedkper_monai.errors import FedKPerError
from fedkper_monai.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from fedkper_monai.metrics_schema import METRICS_FILE
from fedkper_monai.schedule import RoundRecord

__all__ = [
    "CHECKPOINT_FILE",
    "RESUME_ROOT_ENV",
    "RUNNING",
    "FINISHED",
    "ABORTED",
    "CONTINUED",
    "stopped_runs_root",
    "job_folder",
    "model_file",
    "write_checkpoint",
    "read_checkpoint",
    "set_status",
    "find_resumable",
    "settings_difference",
    "compare_settings",
    "record_to_dict",
    "record_from_dict",
    "Resumed",
    "Checkpointer",
    "SIMULATOR_JOB_ID",
    "stash_simulator_workspace",
]

CHECKPOINT_FILE = "fedkper_checkpoint.json"
RESUME_ROOT_ENV = "FEDKPER_RESUME_ROOT"
RUNNING, FINISHED, ABORTED, CONTINUED = "running", "finished", "aborted", "continued"
# The job id of every run in FLARE's simulator (its run folders are <workspace>/<participant>/simulate_job).
SIMULATOR_JOB_ID = "simulate_job"
# A site's state file (fedkper_monai.training.site_state.STATE_FILE; not imported: that pulls torch).
_SITE_STATE_FILE = "fedkper_site_state.json"
# The best global model so far (fedkper_monai.flare.persistor.BEST_MODEL_FILE; not imported: that pulls torch).
_BEST_MODEL_FILE = "best_global_model.pt"
_FORMAT = 1
_LOG = logging.getLogger(__name__)
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def stopped_runs_root(workspace_root: str | os.PathLike) -> Path:
    """The folder holding this participant's job folders of stopped runs (see the module docstring)."""
    override = os.environ.get(RESUME_ROOT_ENV)
    return Path(override) / Path(workspace_root).name if override else Path(workspace_root)


def job_folder(root: str | os.PathLike, job_id: str) -> Path:
    """``root/job_id``, for a job id that is a plain folder name only (it arrives in a task or a job config)."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id) or job_id in (".", ".."):
        raise FedKPerError(f"resume: job id {job_id!r} is not a job folder name (letters, digits, '_', '.', '-')")
    return Path(root) / job_id


def model_file(completed_round: int) -> str:
    """The global model's file for a checkpoint: two alternate, so a stop while one is written leaves the
    checkpoint naming the other, complete one."""
    return f"fedkper_checkpoint_model_{completed_round % 2}.npz"


def record_to_dict(record: RoundRecord) -> dict[str, Any]:
    """A round record as JSON (its ``started`` clock is per process: the elapsed time is kept instead)."""
    return asdict(record)


def record_from_dict(values: Mapping[str, Any], started: float) -> RoundRecord:
    """The round record of a checkpoint, its clock set to ``started``."""
    return RoundRecord(**{**values, "started": started})


def write_checkpoint(run_dir: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write the checkpoint JSON (atomically; its model file is written first by the caller)."""
    atomic_write_json(Path(run_dir) / CHECKPOINT_FILE, {"format": _FORMAT, **state})


def read_checkpoint(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run folder's checkpoint, or None when it has none; a damaged one is an error naming the file."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FedKPerError(f"{path}: unreadable checkpoint ({error})") from error
    for name in ("format", "status", "job", "settings", "completed_round", "previous", "chain", "metrics_lines"):
        if not isinstance(state, dict) or name not in state:
            raise FedKPerError(f"{path}: field {name!r} is missing")
    if state["format"] != _FORMAT:
        raise FedKPerError(f"{path}: field 'format' is {state['format']!r}, this version reads {_FORMAT}")
    if not isinstance(state["settings"], dict) or not isinstance(state["settings"].get("sites", []), list):
        raise FedKPerError(f"{path}: field 'settings' is not an object with a list of 'sites'")
    return state


def set_status(run_dir: str | os.PathLike, status: str, **extra: Any) -> None:
    """Mark a run folder's checkpoint ``status`` (no-op without one)."""
    state = read_checkpoint(run_dir)
    if state is not None:
        state.update(status=status, **extra)
        write_checkpoint(run_dir, {key: value for key, value in state.items() if key != "format"})


def settings_difference(expected: Mapping[str, Any], found: Mapping[str, Any]) -> str | None:
    """The first setting that differs, as ``field: found -> expected``; None when they agree."""
    for key in sorted(set(expected) | set(found)):
        if expected.get(key) != found.get(key):
            return f"{key}: {found.get(key)!r} in the stopped run, {expected.get(key)!r} now"
    return None


def compare_settings(expected: Mapping[str, Any], found: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    """Whether a stopped run with settings ``found`` can be continued with today's ``expected``: the first
    difference (None when it can), and the stopped run's sites that are not connected now (sorted).

    Every setting must be equal, except that today's ``sites`` may be a non-empty strict subset of the stopped
    run's (a site missing is continued without; see the module docstring). A site that is not among the
    stopped run's sites makes it another federation: the difference names it.
    """
    difference = settings_difference({**expected, "sites": None}, {**found, "sites": None})
    if difference:
        return difference, []
    now, before = list(expected.get("sites") or []), list(found.get("sites") or [])
    new = sorted(set(now) - set(before))
    if new or (before and not now):
        why = f"{', '.join(new)} not among the stopped run's sites" if new else "no site connected"
        return f"sites: {before!r} in the stopped run, {now!r} now ({why})", []
    return None, sorted(set(before) - set(now))


def find_resumable(
    root: str | os.PathLike, job: str, settings: Mapping[str, Any], resume: str, current_job_id: str
) -> tuple[Path, dict[str, Any]] | None:
    """The stopped run to continue, or None to start afresh.

    Args:
        root: the folder of this server's job folders (:func:`stopped_runs_root`).
        job: the job's name; only runs of the same job are continued.
        settings: what must not change (the run's seed, rounds, algorithm, model, ...; its sites but for a
            missing one: :func:`compare_settings`).
        resume: ``"auto"`` (the newest run of this job that stopped without ending, with the same
            settings; a run that finished or was aborted on purpose is never continued), ``"never"``, or the
            id of the job to continue (one that stopped or was aborted; an error when it has no checkpoint,
            finished or was continued already, or its settings differ, a new site included).
        current_job_id: this job's id (its own folder is never a stopped run).

    Raises:
        FedKPerError: an explicit ``resume`` that cannot be continued, naming the field that differs.
    """
    if resume == "never":
        return None
    if resume != "auto":
        folder = job_folder(root, resume)
        state = read_checkpoint(folder)
        if state is None:
            raise FedKPerError(f"resume: {folder} holds no {CHECKPOINT_FILE}")
        if state["status"] not in (RUNNING, ABORTED):
            raise FedKPerError(f"resume: {folder / CHECKPOINT_FILE}: field 'status' is {state['status']!r}, not {RUNNING!r} or {ABORTED!r}")
        difference, _ = compare_settings(settings, state["settings"])
        if difference:
            raise FedKPerError(f"resume: {folder / CHECKPOINT_FILE}: settings changed, {difference}")
        return folder, state
    candidates = []
    for path in Path(root).glob(f"*/{CHECKPOINT_FILE}"):
        if path.parent.name == current_job_id:
            continue
        try:
            state = read_checkpoint(path.parent)
        except FedKPerError:
            continue  # a damaged folder of another run is not ours to continue
        if not state or state["status"] != RUNNING or state["job"] != job:
            continue
        difference, _ = compare_settings(settings, state["settings"])
        if difference:
            _LOG.warning("%s stopped without ending but is not continued: settings changed, %s", path.parent, difference)
            continue
        candidates.append((path.stat().st_mtime, path.parent, state))
    if not candidates:
        return None
    _, folder, state = max(candidates, key=lambda item: item[0])
    return folder, state


@dataclass
class Resumed:
    """A stopped run taken over: where it stood after its last completed round."""

    next_round: int
    params: dict[str, np.ndarray]
    previous: RoundRecord
    book: dict[str, Any]
    evaluator: dict[str, Any] | None
    slowest: float | None
    chain: list[str] = field(default_factory=list)
    missing_sites: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The controller's log line: which stopped job is continued, from which round, without whom."""
        without = f" without {', '.join(self.missing_sites)} (not connected)" if self.missing_sites else ""
        return f"continuing the stopped job {self.chain[0]} from round {self.next_round}{without}"


class Checkpointer:
    """The controller's checkpoints in its run folder, and the takeover of a stopped run.

    Args:
        run_dir: this job's run folder (metrics.jsonl is there).
        job: the job's name; job_id: this job's FLARE id.
        settings: what a continued run must share with the stopped one (see :func:`find_resumable`); its
            ``sites`` are the connected ones (after a takeover: the run's full list, see :meth:`take_over`).
    """

    def __init__(self, run_dir: str | os.PathLike, job: str, job_id: str, settings: Mapping[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.job, self.job_id = job, job_id
        self.settings = dict(settings)
        self.chain: list[str] = []  # the stopped jobs this run continues, newest first
        # Lines of metrics.jsonl counted so far and the byte offset they end at: each checkpoint reads only
        # what was appended since (a 200-round, 20-site file is ~9,000 lines).
        self._counted = (0, 0)

    def _metrics_lines(self) -> int:
        """The number of complete lines in this run's metrics file now."""
        metrics = self.run_dir / METRICS_FILE
        if not metrics.exists():
            return 0
        lines, offset = self._counted
        with metrics.open("rb") as handle:
            if handle.seek(0, os.SEEK_END) < offset:  # shorter than counted: never appended to, so count afresh
                lines, offset = 0, 0
            handle.seek(offset)
            tail = handle.read()
        # Only whole lines count; a line being written stays for the next checkpoint.
        complete = tail.rfind(b"\n") + 1
        self._counted = (lines + tail.count(b"\n", 0, complete), offset + complete)
        return self._counted[0]

    def save(self, completed_round: int, params: Mapping[str, np.ndarray], previous: RoundRecord, state: Mapping[str, Any]) -> None:
        """Checkpoint after ``completed_round`` was aggregated: the model first, then the JSON naming it.

        ``state``: the controller's cross-round state (``book``, ``evaluator``, ``slowest``).
        """
        buffer = io.BytesIO()
        np.savez(buffer, **{name: np.asarray(value) for name, value in params.items()})
        name = model_file(completed_round)
        atomic_write_bytes(self.run_dir / name, buffer.getvalue())
        write_checkpoint(self.run_dir, {
            "status": RUNNING,
            "job": self.job,
            "job_id": self.job_id,
            "settings": self.settings,
            "completed_round": int(completed_round),
            "model": name,
            "previous": record_to_dict(previous),
            "elapsed": time.perf_counter() - previous.started,
            "metrics_lines": self._metrics_lines(),
            "chain": self.chain,
            **state,
        })

    def mark(self, status: str) -> None:
        """Mark this run's own checkpoint ``FINISHED`` or ``ABORTED`` (a run that just stops stays ``RUNNING``)."""
        set_status(self.run_dir, status)

    def take_over(self, root: str | os.PathLike, resume: str) -> Resumed | None:
        """Continue the stopped run :func:`find_resumable` picks, or None to start afresh.

        The stopped run's metrics lines up to its checkpoint become this run's metrics file (a round it was
        in the middle of is run again), its header noting where this job took over; its checkpoint (with the
        model selection's best round and score, in ``book``) and its best global model are copied here before
        the stopped one is marked ``CONTINUED``, so a stop in between loses nothing.

        With a site of the stopped run missing, the header's new ``resumed`` entry names it
        (``missing_sites``) and this run's checkpoints keep the stopped run's full site list as ``sites``, so a
        later job with the site back continues this run with all of them.
        """
        found = find_resumable(root, self.job, self.settings, resume, self.job_id)
        if found is None:
            return None
        folder, state = found
        where = folder / CHECKPOINT_FILE
        params = _load_model(folder, state)
        try:
            next_round = int(state["completed_round"]) + 1
            _, missing = compare_settings(self.settings, state["settings"])
            entry = {"round": next_round, "job_id": self.job_id, **({"missing_sites": missing} if missing else {})}
            lines = (folder / METRICS_FILE).read_text().splitlines()[: int(state["metrics_lines"])]
            header = json.loads(lines[0])
            header["run"]["resumed"] = [*header["run"].get("resumed", []), entry]
            chain = [str(job_id) for job_id in state["chain"]]
            previous = record_from_dict(state["previous"], started=time.perf_counter() - float(state.get("elapsed", 0.0)))
        except (OSError, ValueError, TypeError, KeyError, IndexError) as error:
            raise FedKPerError(f"resume: {where} or its {METRICS_FILE} is damaged ({type(error).__name__}: {error})") from error
        atomic_write_text(self.run_dir / METRICS_FILE, "\n".join([json.dumps(header), *lines[1:]]) + "\n")
        if (folder / _BEST_MODEL_FILE).is_file() and folder.resolve() != self.run_dir.resolve():
            atomic_write_bytes(self.run_dir / _BEST_MODEL_FILE, (folder / _BEST_MODEL_FILE).read_bytes())
        self._counted = (0, 0)
        if missing:  # the run's sites stay its full list: a site that comes back continues it
            self.settings["sites"] = list(state["settings"]["sites"])
        self.chain = [folder.name, *[job_id for job_id in chain if job_id != folder.name]]
        resumed = Resumed(next_round, params, previous, dict(state.get("book") or {}), state.get("evaluator"), state.get("slowest"), self.chain, missing)
        own = {key: state.get(key) for key in ("book", "evaluator", "slowest")}
        self.save(next_round - 1, params, previous, own)
        if folder.resolve() != self.run_dir.resolve():
            set_status(folder, CONTINUED, continued_by=self.job_id)
        return resumed


def _load_model(folder: Path, state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The global model a checkpoint names (a file name of ours, never a path)."""
    where = folder / CHECKPOINT_FILE
    if state.get("model") not in (model_file(0), model_file(1)):
        raise FedKPerError(f"resume: {where}: field 'model' is {state.get('model')!r}, not a checkpoint model file")
    try:
        with np.load(folder / state["model"], allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError) as error:
        raise FedKPerError(f"resume: {where}: field 'model' names an unreadable model ({error})") from error


def stash_simulator_workspace(workspace: str | os.PathLike, stopped: str | os.PathLike) -> bool:
    """Move what a stopped simulation left to continue from into ``stopped``; True when it can be continued.

    FLARE's simulator wipes its workspace at start, so the run folders of the server and the sites are moved
    to ``stopped/<participant>/simulate_job`` (a participant whose folder holds no state keeps the one an
    earlier stop left there) and the workspace is removed. Run the simulator again with
    ``$FEDKPER_RESUME_ROOT`` set to ``stopped`` and the controller's ``resume`` set to
    :data:`SIMULATOR_JOB_ID`.
    """
    workspace, stopped = Path(workspace), Path(stopped)
    if workspace.is_dir():
        for participant in sorted(workspace.iterdir()):
            run = participant / SIMULATOR_JOB_ID
            if not ((run / CHECKPOINT_FILE).is_file() or (run / _SITE_STATE_FILE).is_file()):
                continue
            target = stopped / participant.name / SIMULATOR_JOB_ID
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(run), str(target))
        shutil.rmtree(workspace)
    state = read_checkpoint(stopped / "server" / SIMULATOR_JOB_ID) if stopped.is_dir() else None
    return state is not None and state["status"] in (RUNNING, ABORTED)
