"""``fedkper-monai deploy lab``: a provisioned federation on this host, each participant on a "host" of its own
(a Linux network namespace), from an empty folder to the downloaded result, in one command.

Steps (each is what an operator of a real deployment does on their own machine; README "Separate hosts"):

1. ``nvflare provision`` of a project (server ``fedkper-server``, ``site-1..N``, one admin) with our builder
   :class:`~fedkper_monai.flare.provision.AllowFedKPerComponents`: every kit allows exactly our components;
2. each site's own data folder (:mod:`~fedkper_monai.launch.lab_data`: its datalist and images only) and its
   ``site-config``; the server's folder holds the global test lists;
3. the network (:class:`~fedkper_monai.launch.lab_net.LabNetwork`): one namespace per participant on a private
   bridge, the server found by its host name through each namespace's ``/etc/netns/<ns>/hosts``;
4. in the admin's namespace, :mod:`~fedkper_monai.launch.lab_admin` starts every participant from its own kit
   inside its own namespace, submits the job with the Recipe API in ``ProdEnv`` from the admin kit, follows
   it and downloads the result into ``WS/result/``;
5. teardown, also on failure, Ctrl-C or SIGTERM: every process in the namespaces, the namespaces with their
   links and bridge, and the ``/etc/netns`` entries.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from fedkper_monai.errors import FedKPerError
from fedkper_monai.io import atomic_write_json, atomic_write_text

__all__ = ["LabRun", "deploy_lab", "hiding_prefix", "teardown_recorded", "SERVER_HOST", "lab_project_yaml"]

SERVER_HOST = "fedkper-server"  # the server's host name in every kit and every namespace's hosts file
PROJECT = "fedkper_lab"
PORT = 8002  # the server's port inside its own namespace: no other program on the host can hold it


@dataclass
class LabRun:
    """What ``deploy lab`` does: ``job`` (a job folder or a registry algorithm) on ``sites`` sites."""

    job: str
    sites: int
    data_root: Path
    workspace: Path
    overrides: dict[str, Any] = field(default_factory=dict)  # rounds, sample_fraction, local_epochs, seed, validate_every
    device: str | None = "cpu"
    timeout: float = 1800.0
    connect_timeout: float = 120.0
    restarts: int = 0  # a provisioned site that exits is its operator's to restart; the lab does not by default
    min_task_timeout: float | None = None
    timeout_factor: float | None = None  # the controller's timeout in multiples of the slowest answer (None: the job's)
    # Environment added to a participant's (e.g. a site's PYTHONPATH naming another install, or CUDA_VISIBLE_DEVICES).
    site_env: dict[str, dict[str, str]] = field(default_factory=dict)


def lab_project_yaml(sites: list[str]) -> str:
    """The lab's FLARE project: the POC project's participants and builders, the server on ``SERVER_HOST``."""
    from fedkper_monai.launch.poc import project_yaml

    return project_yaml(PORT, sites, name=PROJECT).replace("default_host: localhost", f"default_host: {SERVER_HOST}")


def _provision(run: LabRun, sites: list[str]) -> dict[str, Path]:
    """Step 1: ``{participant: startup kit}``."""
    from fedkper_monai.launch.poc import ADMIN, _nvflare

    project = atomic_write_text(run.workspace / "project.yml", lab_project_yaml(sites))
    home = run.workspace / "flare_home"  # FLARE's CLI writes to ~/.nvflare: a HOME of this run's own
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home)}
    _nvflare("provision", "-p", str(project), "-w", str(run.workspace / "provision"), env=env,
             log=run.workspace / "logs" / "provision.log")
    found = sorted((run.workspace / "provision" / PROJECT).glob("prod_*"))
    if not found:
        raise FedKPerError(f"nvflare provision wrote no {PROJECT}/prod_* under {run.workspace / 'provision'}")
    kits = {name: found[-1] / name for name in ["server", *sites, ADMIN]}
    (kits[ADMIN] / "transfer").mkdir(exist_ok=True)
    return kits


def _give_data(run: LabRun, kits: dict[str, Path], sites: list[str]) -> dict[str, Path]:
    """Step 2: each participant's own data folder; each site's site-config names only its own."""
    from fedkper_monai.flare.local_choices import write_site_config
    from fedkper_monai.launch.lab_data import SERVER_LISTS, copy_datalists

    folders = {"server": copy_datalists(run.data_root, list(SERVER_LISTS), run.workspace / "data" / "server")}
    for site in sites:
        if not (run.data_root / f"{site}.json").is_file():
            raise FedKPerError(f"{run.data_root / (site + '.json')}: no datalist for {site} (--sites {run.sites})")
        folders[site] = copy_datalists(run.data_root, [f"{site}.json"], run.workspace / "data" / site)
        write_site_config(kits[site], folders[site], device=run.device)
    return folders


# Run inside a mount namespace of its own (unshare): an empty, unreadable tmpfs over each folder named before
# "--", then the command. What a participant should not see is hidden from it and from every process it starts.
_HIDE = 'while [ "$1" != -- ]; do mount -t tmpfs -o size=64k,mode=000 fedkper-lab-hidden "$1" || exit 1; shift; done; shift; exec "$@"'


def hiding_prefix(hidden: list[Path]) -> list[str]:
    """A command prefix that runs a program with ``hidden`` folders replaced by empty unreadable ones (a private
    mount namespace; the host's mounts are untouched). A root process could unmount them: it keeps honest
    software from another site's files, not an attacker with root."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _HIDE, "sh", *map(str, hidden), "--"]


def _helper_config(run: LabRun, kits: dict[str, Path], data: dict[str, Path], network: Any) -> Path:
    """What the admin-side helper needs, as a JSON file of plain values."""
    threads = str(max(1, (os.cpu_count() or 1) // run.sites))
    # sub_start.sh runs `python3`: this interpreter's, also when its environment is not activated.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    base = {key: value for key, value in os.environ.items() if key != "FEDKPER_DATA_ROOT"}
    base.update({"PATH": path, "OMP_NUM_THREADS": threads, "HOME": str(run.workspace / "flare_home")})
    envs = {name: dict(base) for name in kits}
    envs["server"]["FEDKPER_DATA_ROOT"] = str(data["server"])  # the server's global test set (its own folder)
    for name, extra in run.site_env.items():
        envs[name].update(extra)
    prefixes = {name: network.exec_prefix(name) for name in kits}
    for name in data:  # the server and each site: their own kit and data only
        prefixes[name] += hiding_prefix([run.data_root, run.workspace / "logs", *(kit for other, kit in kits.items() if other != name),
                                         *(folder for other, folder in data.items() if other != name)])
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(run).items()}
    config = {"run": settings, "kits": {name: str(kit) for name, kit in kits.items()},
              "prefixes": prefixes, "envs": envs}
    return atomic_write_json(run.workspace / "lab" / "helper.json", config)


def deploy_lab(run: LabRun, on_started: Callable[[Any], None] | None = None) -> int:
    """Run ``run`` end to end (module docstring); returns 0 when the job completed.

    ``on_started`` (tests' fault injection) is called with the :class:`LabNetwork` once the helper runs.
    """
    from fedkper_monai.launch.lab_net import LabNetwork, namespaces_available
    from fedkper_monai.launch.poc import ADMIN

    why_not = namespaces_available()
    if why_not:
        raise FedKPerError(f"deploy lab needs network namespaces: {why_not}")
    if run.workspace.resolve().is_relative_to(run.data_root.resolve()):
        raise FedKPerError(f"--workspace {run.workspace} is inside --data-root {run.data_root}, which every participant's "
                           "view hides: choose a workspace elsewhere")
    sites = [f"site-{index}" for index in range(1, run.sites + 1)]
    unknown = sorted(set(run.site_env) - {"server", *sites, ADMIN})
    if unknown:
        raise FedKPerError(f"site_env names {', '.join(unknown)}: not a participant of this lab (server, site-1..site-{run.sites}, {ADMIN})")
    run.workspace.mkdir(parents=True, exist_ok=True)
    for folder in ("logs", "lab"):
        (run.workspace / folder).mkdir(exist_ok=True)
    kits = _provision(run, sites)
    data = _give_data(run, kits, sites)
    network = LabNetwork(["server", *sites, ADMIN], hosts={SERVER_HOST: "server"})
    config = _helper_config(run, kits, data, network)
    atomic_write_json(run.workspace / "lab" / "network.json", {"token": network.token, "participants": network.participants,
                      "namespaces": {name: network.namespace(name) for name in network.participants}})
    previous = signal.signal(signal.SIGTERM, _interrupt)
    helper = None
    try:
        network.create()
        print(f"lab network up: {', '.join(f'{name} {network.address(name)}' for name in network.participants)}", flush=True)
        helper = subprocess.Popen([*network.exec_prefix(ADMIN), sys.executable, "-m", "fedkper_monai.launch.lab_admin",
                                   str(config)], env=json.loads(config.read_text())["envs"][ADMIN], stdin=subprocess.DEVNULL)
        if on_started is not None:
            on_started(network)
        return helper.wait()
    finally:
        _stop_helper(helper)
        network.teardown()
        signal.signal(signal.SIGTERM, previous)
        print(f"lab torn down (namespaces fkl{network.token}-*, their links and /etc/netns entries)", flush=True)


def teardown_recorded(workspace: Path) -> list[str]:
    """Remove what a lab whose ``deploy lab`` process was killed (SIGKILL: no teardown ran) left, as recorded in
    ``WS/lab/network.json``; returns what was left before."""
    from fedkper_monai.launch.lab_net import LabNetwork, lab_leftovers

    path = workspace / "lab" / "network.json"
    try:
        recorded = json.loads(path.read_text())
        network = LabNetwork.recorded(list(recorded["participants"]), str(recorded["token"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FedKPerError(f"{path}: no lab network recorded here ({type(error).__name__}: {error})") from None
    left = lab_leftovers(network.token)
    network.teardown()
    return left


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM tears down like Ctrl-C


def _stop_helper(helper: subprocess.Popen | None) -> None:
    """Let the helper stop its participants (it got Ctrl-C too); end it when it takes too long."""
    if helper is None or helper.poll() is not None:
        return
    helper.send_signal(signal.SIGINT)  # it may not have had Ctrl-C (SIGTERM to us, or an error here)
    try:
        helper.wait(timeout=60)
    except subprocess.TimeoutExpired:
        helper.terminate()
        try:
            helper.wait(timeout=20)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()
