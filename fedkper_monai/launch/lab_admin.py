"""The admin side of ``deploy lab``, run inside the admin's namespace (``python -m fedkper_monai.launch.lab_admin
CONFIG``): start each participant from its kit in its own namespace, submit the job in ``ProdEnv`` with the admin
kit, follow it, download the result, stop the participants. It reuses ``poc run``'s steps (:mod:`.poc`): only
how a participant is started differs (``ip netns exec NS`` before its ``sub_start.sh``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fedkper_monai.errors import FedKPerError
from fedkper_monai.flare.jobspec import controller_args
from fedkper_monai.launch.participants import Participants

__all__ = ["NamespacedParticipants", "main"]


class NamespacedParticipants(Participants):
    """POC's participants, each started inside its own network namespace (``prefixes[name]``)."""

    def __init__(self, logs: Path, prefixes: dict[str, list[str]]) -> None:
        super().__init__(logs)
        self.prefixes = prefixes

    def start(self, name: str, kit: Path, env: dict[str, str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child holds it; closed here after start
        self.processes[name] = subprocess.Popen(
            [*self.prefixes[name], "bash", str(kit / "startup" / "sub_start.sh"), "--once"], cwd=kit, env=env,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self.started[name] = (kit, env)
        log.close()


def _recipe(settings: dict) -> object:
    from fedkper_monai.launch.recipe import FedKPerRecipe

    overrides = settings["overrides"]
    is_folder = Path(settings["job"]).is_dir()
    recipe = FedKPerRecipe(job=settings["job"] if is_folder else None, algorithm="fedkper" if is_folder else settings["job"],
                           network_from=settings["data_root"], num_rounds=overrides.get("rounds"),
                           sample_fraction=overrides.get("sample_fraction"), local_epochs=overrides.get("local_epochs"),
                           seed=overrides.get("seed"), validate_every=overrides.get("validate_every"))
    for name in ("min_task_timeout", "timeout_factor"):  # how long a site that does not answer is waited for
        if settings.get(name) is not None:
            controller_args(recipe.configs[1])[name] = float(settings[name])
    return recipe


def run_admin(config: dict) -> int:
    """Steps 4 of :mod:`.lab`; returns 0 when the job completed."""
    from fedkper_monai.launch import poc

    settings = config["run"]
    kits = {name: Path(path) for name, path in config["kits"].items()}
    run = poc.PocRun(job=settings["job"], sites=int(settings["sites"]), data_root=Path(settings["data_root"]),
                     workspace=Path(settings["workspace"]), timeout=float(settings["timeout"]),
                     connect_timeout=float(settings["connect_timeout"]), restarts=int(settings["restarts"]))
    recipe = _recipe(settings)
    recipe.export(str(run.workspace / "job"))  # the job as submitted, for the record
    participants = NamespacedParticipants(run.workspace / "logs", config["prefixes"])
    session = None
    try:
        for name in ["server", *sorted(name for name in kits if name.startswith("site-"))]:
            participants.start(name, kits[name], config["envs"][name])
        session = poc._connect(run, kits, participants)
        session, job_id, status = poc.follow_job(session, recipe, run, kits, participants)
        return poc.report_job(session, job_id, status, run, kits)
    finally:
        if session is not None:
            poc._quietly_close(session)
        print("stopping the lab's participants ...", flush=True)
        participants.stop()


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1:
        print("usage: python -m fedkper_monai.launch.lab_admin HELPER_JSON", file=sys.stderr)
        return 2
    try:
        return run_admin(json.loads(Path(arguments[0]).read_text()))
    except FedKPerError as error:
        print(f"fedkper-monai deploy lab: error: {error}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("fedkper-monai deploy lab: stopped by Ctrl-C", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
