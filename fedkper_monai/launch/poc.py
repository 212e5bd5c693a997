"""``fedkper-monai poc run``: a job on FLARE's POC deployment (server and sites as separate processes on
this machine, talking over loopback), from an empty folder to the downloaded result, in one command.

Steps (each is also a FLARE command an operator runs by hand; README "Real sites"):

1. ``nvflare poc prepare -i WS/project.yml`` with ``NVFLARE_POC_WORKSPACE=WS/poc``: startup kits for a
   server, N sites and an admin, the server on a port found free now;
2. per kit: ``fedkper-monai allow`` and, per site, ``fedkper-monai site-config`` (its data, its device);
3. each participant started as its own process (``startup/sub_start.sh --once``), logs in ``WS/logs/``;
4. the job, a :class:`~fedkper_monai.launch.recipe.FedKPerRecipe` run in FLARE's ``ProdEnv`` with the admin kit
   (as a study admin submits to real sites);
   progress printed per round; the result downloaded into ``WS/result/``;
5. every process started here stopped, also on failure, timeout or Ctrl-C.

A participant that exits during the job is started again (``restarts`` times at most): a site rejoins, and
the server, since FLARE 2.9 abandons a job whose server restarted, gets the job submitted again, which
continues from its last completed round (:mod:`fedkper_monai.flare.resume`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedkper_monai.errors import FedKPerError
from fedkper_monai.flare.jobspec import controller_args
from fedkper_monai.io import atomic_write_json, atomic_write_text
from fedkper_monai.launch.participants import Participants

__all__ = ["PocRun", "free_port", "project_yaml", "poc_run", "follow_job", "report_job"]

ADMIN = "admin@nvidia.com"
PROJECT = "fedkper_poc"
_DONE_PREFIX = "FINISHED"


@dataclass
class PocRun:
    """What ``poc run`` does: ``job`` (a job folder or a registry algorithm) on ``sites`` sites."""

    job: str
    sites: int
    data_root: Path
    workspace: Path
    overrides: Any = None  # JobOverrides (rounds, sample_fraction, local_epochs, seed, validate_every)
    device: str | None = "cpu"
    timeout: float = 1800.0
    connect_timeout: float = 120.0
    restarts: int = 1  # times each participant is started again when it exits during the job
    min_task_timeout: float | None = None  # the controller's least task timeout (how long a dead site is waited for)
    timeout_factor: float | None = None  # the controller's timeout in multiples of the slowest answer (None: the job's)
    privacy: Any = None  # SitePrivacy every site's site-config gets (flare/siteprivacy.py); None: none


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at this moment (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def project_yaml(port: int, sites: list[str], name: str = PROJECT) -> str:
    """A FLARE project (``api_version: 3``): a server on ``localhost:port``, the ``sites``, one project admin; its
    kits allow our components (:class:`~fedkper_monai.flare.provision.AllowFedKPerComponents`)."""
    participants = [f"  - name: server\n    type: server\n    org: fedkper\n    default_host: localhost\n    fed_learn_port: {port}\n"]
    participants += [f"  - name: {site}\n    type: client\n    org: fedkper\n" for site in sites]
    participants.append(f"  - name: {ADMIN}\n    type: admin\n    org: fedkper\n    role: project_admin\n")
    builders = (
        "  - path: nvflare.lighter.impl.workspace.WorkspaceBuilder\n    args:\n      template_file: [master_template.yml]\n"
        "  - path: nvflare.lighter.impl.static_file.StaticFileBuilder\n    args:\n      config_folder: config\n"
        "  - path: fedkper_monai.flare.provision.AllowFedKPerComponents\n"
        "  - path: nvflare.lighter.impl.cert.CertBuilder\n"
        "  - path: nvflare.lighter.impl.signature.SignatureBuilder\n"
    )
    return (f"api_version: 3\nname: {name}\ndescription: fedkper-monai POC\nparticipants:\n{''.join(participants)}"
            f"builders:\n{builders}")


def _nvflare(*args: str, env: dict[str, str], log: Path, timeout: float = 120.0) -> None:
    """Run an ``nvflare`` CLI command; its output goes to ``log``; a failure raises with the log's tail."""
    with open(log, "a") as out:
        code = subprocess.run([sys.executable, "-m", "nvflare.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=timeout).returncode
    if code != 0:
        raise FedKPerError(f"`nvflare {' '.join(args)}` failed (exit {code}); its output: {log}")


def prepare(run: PocRun) -> dict[str, Path]:
    """Steps 1-2: the POC startup kits, allowed and configured; returns ``{participant: kit folder}``."""
    from fedkper_monai.flare.local_choices import write_site_config
    from fedkper_monai.flare.workspace import allow_components

    sites = [f"site-{index}" for index in range(1, run.sites + 1)]
    project = atomic_write_text(run.workspace / "project.yml", project_yaml(free_port(), sites))
    # FLARE's CLI registers the kits it makes in ~/.nvflare; a HOME of this run's own keeps the user's untouched
    # (and a kit of an earlier run, registered there, from refusing this one).
    home = run.workspace / "flare_home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "NVFLARE_POC_WORKSPACE": str(run.workspace / "poc"), "HOME": str(home)}
    _nvflare("poc", "prepare", "-i", str(project), "--force", env=env, log=run.workspace / "logs" / "prepare.log")
    found = sorted((run.workspace / "poc").glob(f"{PROJECT}/prod_*"))
    if not found:
        raise FedKPerError(f"nvflare poc prepare wrote no {PROJECT}/prod_* under {run.workspace / 'poc'}")
    kits = {name: found[-1] / name for name in ["server", *sites, ADMIN]}
    for name in ["server", *sites]:
        allow_components(kits[name])
    for site in sites:
        write_site_config(kits[site], run.data_root, device=run.device, privacy=run.privacy)
    transfer = kits[ADMIN] / "transfer"
    transfer.mkdir(exist_ok=True)
    return kits


def _session(admin_kit: Path, deadline: float) -> Any:
    """A FLARE admin session, retried until the server answers or ``deadline``."""
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    while True:
        try:
            return new_secure_session(ADMIN, str(admin_kit), timeout=10.0)
        except Exception as error:  # noqa: BLE001 - FLARE raises several kinds while the server starts
            if time.monotonic() > deadline:
                raise FedKPerError(f"the POC server did not accept the admin login in time: {error}") from None
            time.sleep(1.0)


def _wait_for_sites(session: Any, sites: int, deadline: float, participants: Participants, at_least: int | None = None) -> list[str]:
    """The connected sites once all ``sites`` are; at the deadline, those connected when there are ``at_least``
    (a server started again: a site that does not come back is not waited for forever), else an error."""
    while True:
        connected = sorted(client.name for client in session.get_connected_client_list())
        if len(connected) >= sites:
            print(f"{len(connected)} sites connected: {', '.join(connected)}", flush=True)
            return connected
        if participants.dead():
            raise FedKPerError(f"POC process(es) exited: {', '.join(participants.dead())}; logs in {participants.logs}")
        if time.monotonic() > deadline:
            if at_least is not None and len(connected) >= at_least:
                print(f"{len(connected)} of {sites} sites connected again ({', '.join(connected)}); the job goes on "
                      "without the others", flush=True)
                return connected
            raise FedKPerError(f"{len(connected)} of {sites} sites connected in time ({', '.join(connected) or 'none'}); "
                               f"logs in {participants.logs}")
        time.sleep(1.0)


def _wait_for_job(session: Any, job_id: str, run: PocRun, server_kit: Path, progress: Any, participants: Participants) -> str | None:
    """Poll the job until it ends; print a line per round (``progress``, a ``RoundProgress`` kept across the
    jobs of one run); start a site that exited again (``run.restarts`` times). Returns FLARE's final status,
    or None when the server exited (the caller restarts it)."""
    from fedkper_monai.metrics_schema import METRICS_FILE

    # This job's own file: a job that continues a stopped one starts with the stopped job's lines.
    progress.metrics = server_kit / job_id / METRICS_FILE
    deadline = time.monotonic() + run.timeout
    while True:
        progress()
        if "server" in participants.dead():
            return None
        status = str(_quietly_ask(session.get_job_meta, job_id).get("status", ""))
        if status.startswith(_DONE_PREFIX):
            progress()
            return status
        for site in [name for name in participants.dead() if name != "server"]:
            if participants.restarted.get(site, 0) >= run.restarts:
                raise FedKPerError(f"{site} exited during the job and was restarted {run.restarts} time(s); "
                                   f"log: {participants.logs / (site + '.log')}")
            print(f"{site} exited during the job; starting it again (it rejoins the federation)", flush=True)
            participants.restart(site)
        if time.monotonic() > deadline:
            session.abort_job(job_id)
            raise FedKPerError(f"job {job_id} did not finish within {run.timeout:.0f} s (aborted)")
        time.sleep(2.0)


def _quietly_ask(call: Any, *args: Any) -> dict:
    """An admin query that may fail while the server goes down: an empty answer then."""
    try:
        return dict(call(*args) or {})
    except Exception:  # noqa: BLE001 - the caller checks the server process next
        return {}


def _quietly_ask_list(call: Any) -> list:
    """An admin query for a list that may fail (the server going down): an empty list then."""
    try:
        return list(call() or [])
    except Exception:  # noqa: BLE001 - only printed
        return []


def _collect(session: Any, job_id: str, run: PocRun, kits: dict[str, Path]) -> Path:
    """Step 4's end: the server's job result in ``WS/result/`` and where each site's personalized model is."""
    result = run.workspace / "result"
    if result.exists():
        shutil.rmtree(result)
    downloaded = Path(session.download_job_result(job_id, destination=str(run.workspace / "download")))
    shutil.move(str(downloaded), str(result))
    models = {site: str(kit / job_id / "personalized_model.pt") for site, kit in kits.items() if site.startswith("site-")}
    atomic_write_json(result / "personalized_models.json", {site: path for site, path in models.items() if Path(path).exists()})
    return result


def poc_run(run: PocRun) -> int:
    """Run ``run`` end to end (module docstring); returns 0 when the job completed every round."""
    from fedkper_monai.launch.overrides import JobOverrides
    from fedkper_monai.launch.recipe import FedKPerRecipe

    overrides = run.overrides or JobOverrides()
    run.workspace.mkdir(parents=True, exist_ok=True)
    (run.workspace / "logs").mkdir(exist_ok=True)
    is_folder = Path(run.job).is_dir()
    recipe = FedKPerRecipe(job=run.job if is_folder else None, algorithm="fedkper" if is_folder else run.job,
                           network_from=run.data_root, num_rounds=overrides.rounds, sample_fraction=overrides.sample_fraction,
                           local_epochs=overrides.local_epochs, seed=overrides.seed, validate_every=overrides.validate_every)
    recipe.export(str(run.workspace / "job"))  # the job as submitted, for the record
    kits = prepare(run)
    participants = Participants(run.workspace / "logs")
    threads = str(max(1, (os.cpu_count() or 1) // run.sites))
    # sub_start.sh runs `python3`: this interpreter's, also when its environment is not activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "OMP_NUM_THREADS": threads, "FEDKPER_DATA_ROOT": str(run.data_root)}
    for name in ("min_task_timeout", "timeout_factor"):  # how long a site that does not answer is waited for
        if getattr(run, name) is not None:
            controller_args(recipe.configs[1])[name] = float(getattr(run, name))
    session = None
    try:
        participants.start("server", kits["server"], env)
        for site in sorted(name for name in kits if name.startswith("site-")):
            participants.start(site, kits[site], env)
        session = _connect(run, kits, participants)
        session, job_id, status = follow_job(session, recipe, run, kits, participants)
        return report_job(session, job_id, status, run, kits)
    finally:
        if session is not None:
            _quietly_close(session)
        print("stopping POC ...", flush=True)
        participants.stop()


def follow_job(session: Any, recipe: Any, run: PocRun, kits: dict[str, Path], participants: Participants) -> tuple[Any, str, str]:
    """Submit ``recipe`` and follow it to its end: ``(session, job id, FLARE's final status)``.

    A server that exits is started again (``run.restarts`` times) and the job submitted anew: FLARE abandons
    a job whose server restarted, and the new one continues from its last completed round. Sites that do not
    connect again within ``run.connect_timeout`` are left out: the new job continues without them (the
    controller records which, :mod:`fedkper_monai.flare.resume`). The session is closed here on an error.
    """
    from fedkper_monai.launch.simulate import RoundProgress

    try:
        job_id = _submit(recipe, run, kits)
        progress = RoundProgress(kits["server"].parent, recipe.num_rounds)
        status = _wait_for_job(session, job_id, run, kits["server"], progress, participants)
        while status is None:
            if participants.restarted.get("server", 0) >= run.restarts:
                raise FedKPerError(f"the server exited during job {job_id} and was restarted {run.restarts} "
                                   f"time(s); log: {participants.logs / 'server.log'}")
            print(f"the server exited during job {job_id}; starting it again", flush=True)
            _quietly_close(session)
            participants.restart("server")
            session = _connect(run, kits, participants, again=True)
            job_id = _submit(recipe, run, kits)
            print(f"job {job_id} continues the stopped job from its last completed round", flush=True)
            status = _wait_for_job(session, job_id, run, kits["server"], progress, participants)
    except BaseException:
        _quietly_close(session)
        raise
    return session, job_id, status


def report_job(session: Any, job_id: str, status: str, run: PocRun, kits: dict[str, Path]) -> int:
    """Download the result, print each failed task and the failed sites' own first errors; 0 when completed."""
    from fedkper_monai.launch.simulate import read_failed_sites
    from fedkper_monai.run_files import find_metrics_file

    result = _collect(session, job_id, run, kits)
    failed = read_failed_sites(find_metrics_file(result / "workspace"))
    for line in failed:
        print(f"failed: {line['site']} in round {line['round']} ({line.get('task')}): {line.get('reason')}", flush=True)
    _print_site_errors(sorted({line["site"] for line in failed}), kits, job_id)
    connected = sorted(client.name for client in _quietly_ask_list(session.get_connected_client_list))
    print(f"job {job_id}: {status}; result in {result}; sites connected now: {', '.join(connected) or 'none'}", flush=True)
    return 0 if status == "FINISHED:COMPLETED" else 1


def _print_site_errors(sites: list[str], kits: dict[str, Path], job_id: str) -> None:
    """A failed site's own first error, read from its log (a site sends the server only that it failed;
    in POC its log is on this machine)."""
    from fedkper_monai.launch.process import first_error

    for site in sites:
        log = kits[site] / job_id / "log.txt"
        error = first_error(log.read_text(errors="replace").splitlines()) if log.is_file() else None
        if error:
            print(f"{site}'s log ({log}): {error}", flush=True)


def _connect(run: PocRun, kits: dict[str, Path], participants: Participants, again: bool = False) -> Any:
    """An admin session once the server answers and every site is connected (``again``, after a restart of the
    server: at least one, when the others do not connect again within ``run.connect_timeout``)."""
    deadline = time.monotonic() + run.connect_timeout
    session = _session(kits[ADMIN], deadline)
    try:
        _wait_for_sites(session, run.sites, deadline, participants, at_least=1 if again else None)
    except BaseException:
        # Closed here: the caller never holds it, and an open session's connector threads keep retrying
        # the stopped server and keep this process from exiting.
        _quietly_close(session)
        raise
    return session


def _submit(recipe: Any, run: PocRun, kits: dict[str, Path]) -> str:
    """Submit the recipe the way a study admin submits to real sites: FLARE's ``ProdEnv`` with the admin kit."""
    from nvflare.recipe import ProdEnv

    job_id = recipe.run(ProdEnv(startup_kit_location=str(kits[ADMIN]), username=ADMIN, login_timeout=30.0)).get_job_id()
    print(f"submitted {recipe.name} as job {job_id}: {recipe.num_rounds} rounds on {run.sites} sites", flush=True)
    return job_id


def _quietly_close(session: Any) -> None:
    try:
        session.close()
    except Exception:  # noqa: BLE001 - the server may be gone already
        pass
