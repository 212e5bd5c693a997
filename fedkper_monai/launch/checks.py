"""Checks of the FLARE-side commands' settings, run before anything starts (stdlib only, well under a second).

``simulate``, ``export``, ``compare``, ``poc run`` and the recipe call these before they build a job or start
FLARE, so a setting that cannot run stops at once with one line naming the option (exit code 2, printed by
the CLI) instead of failing minutes later inside a site process. Each check of an option raises
:class:`SettingError`; :func:`check_job_fields` runs the checks the sites and the server run on a job's
component args and raises :class:`~fedkper_monai.errors.DataError` naming the job file and the field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from fedkper_monai.errors import FedKPerError

__all__ = [
    "SettingError",
    "check_ranges",
    "check_threads",
    "check_site_count",
    "check_job_data",
    "check_job_fields",
    "check_output",
    "check_workspace",
]

# What a simulator workspace may hold before a run: FLARE keeps local/ and startup/ between runs, and
# `fedkper-monai allow` writes local/resources.json. Anything else is a previous run.
_WORKSPACE_KEEPS = frozenset({"local", "startup"})
_MAX_SEED = 2**32 - 1  # numpy's and torch's seed range


class SettingError(FedKPerError):
    """A command-line setting that cannot run; the message starts with the option it names."""

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        super().__init__(f"{option}: {message}")


def _at_least(option: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise SettingError(option, f"must be at least {minimum}, got {value}")


def check_ranges(
    *,
    rounds: int | None = None,
    sample_fraction: float | None = None,
    local_epochs: int | None = None,
    validate_every: int | None = None,
    seed: int | None = None,
) -> None:
    """The job overrides a user may give (``None``: keep the job's value)."""
    _at_least("--rounds", rounds, 1)
    if sample_fraction is not None and not 0.0 < sample_fraction <= 1.0:
        raise SettingError("--sample-fraction", f"must be in (0, 1] (share of sites trained per round), got {sample_fraction}")
    _at_least("--local-epochs", local_epochs, 1)
    _at_least("--validate-every", validate_every, 0)
    if seed is not None and not 0 <= seed <= _MAX_SEED:
        raise SettingError("--seed", f"must be in [0, {_MAX_SEED}], got {seed}")


def check_threads(threads: int | None) -> None:
    _at_least("-t", threads, 1)


def check_site_count(n_clients: int, data_root: Path, option: str = "--data-root") -> None:
    """``-n`` must equal the number of site datalists: more sites find no data, fewer leave sites out."""
    _at_least("-n", n_clients, 1)
    root = Path(data_root)
    if not root.is_dir():
        raise SettingError(option, f"{root}: no such folder (give a folder made by `fedkper-monai prepare`)")
    from fedkper_monai.flare.sitedata import site_datalists

    try:
        found = len(site_datalists(root))
    except FedKPerError as error:
        named = sorted(path.name for path in root.glob("*.json") if not path.stem.startswith(("site-", "global_", "holdout-")))
        hint = (f" (it holds {', '.join(named[:3])}: FLARE's simulator names its sites site-1 .. site-N; prepare the "
                "manifest with --site-names VALUE=site-1 ... to simulate it)") if named else ""
        raise SettingError(option, f"{error}{hint}") from None
    if n_clients > found:
        raise SettingError("-n", f"{n_clients} sites, but {root} holds datalists for {found} "
                                 f"(site-1 .. site-{found}): use -n {found}")
    if n_clients < found:
        left_out = f"site-{found}" if n_clients + 1 == found else f"site-{n_clients + 1} .. site-{found}"
        raise SettingError("-n", f"{n_clients} sites, but {root} holds {found} site datalists: "
                                 f"{left_out} would not train; use -n {found}")


def _read_header(path: Path) -> Mapping[str, Any]:
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SettingError("--data-root", f"{path}: not a readable datalist JSON ({error})") from None
    return header if isinstance(header, dict) else {}


def check_job_data(job: str | Path, client_config: Mapping[str, Any], data_root: str | None) -> Path | None:
    """Where the simulated sites will find their data, and that the job's network fits it.

    Returns the data root the sites read (``data_root``, else the job's own, else ``$FEDKPER_DATA_ROOT``,
    else the demo data for the demo job) or None when that is the demo data not generated yet.

    Raises:
        SettingError: the job has no data for its sites, or (without ``data_root``, which sizes the network
            from the data) the job's network has another number of classes than the data.
    """
    from fedkper_monai.flare.jobspec import site_args

    learner = site_args(dict(client_config))
    if data_root is not None:
        return Path(data_root)
    root = learner.get("data_root") or os.environ.get("FEDKPER_DATA_ROOT")
    if not root and learner.get("demo"):
        from fedkper_monai.flare.sitedata import default_demo_root

        demo = default_demo_root()
        root = str(demo) if (demo / "site-1.json").exists() else None
        if root is None:
            return None
    if not root:
        raise SettingError("--data-root", f"{job} reads no built-in data: give the folder made by "
                                          "`fedkper-monai prepare` (it also sizes the network)")
    first = Path(root) / "site-1.json"
    if first.exists():
        classes = _read_header(first).get("num_classes")
        network_classes = learner.get("network", {}).get("num_classes")
        if classes is not None and network_classes is not None and int(classes) != int(network_classes):
            raise SettingError("--data-root", f"{first} has {classes} classes but the network of {job} has "
                                              f"{network_classes}: pass --data-root {root} to size it from the data")
    return Path(root)


def check_output(path: str | Path, overwrite: bool, option: str = "--out") -> None:
    """An existing, non-empty output is replaced only with ``--overwrite``."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise SettingError(option, f"{target} exists and is not a folder")
    if not overwrite and target.is_dir() and any(target.iterdir()):
        raise SettingError(option, f"{target} exists and is not empty: pass --overwrite to replace it, or choose another")


def check_workspace(workspace: str | Path, overwrite: bool) -> None:
    """A simulator workspace holding an earlier run (anything besides ``local/`` and ``startup/``) is
    replaced only with ``--overwrite`` (FLARE's simulator would empty it silently)."""
    target = Path(workspace)
    if target.exists() and not target.is_dir():
        raise SettingError("-w", f"{target} exists and is not a folder")
    if overwrite or not target.is_dir():
        return
    earlier = sorted(entry.name for entry in target.iterdir() if entry.name not in _WORKSPACE_KEEPS)
    if earlier:
        raise SettingError("-w", f"{target} holds an earlier run ({', '.join(earlier[:3])}): pass --overwrite "
                                 "to replace it, or choose another workspace")


def check_job_fields(job: str | Path, server: Mapping[str, Any], client: Mapping[str, Any]) -> None:
    """The args a job gives its sites and server, checked as the sites and the server check them.

    Each site executor's settings go through ``SiteConfig.from_mapping`` (known settings; the network spec,
    strategy parameters, task options and transform settings against what each declares; no code in any key
    or value), the executor's own args must be plain, and the transform config must be found in the trusted
    folders; the server's ``GlobalEvaluator`` and ``NetworkPersistor`` args go through their own checks
    (:mod:`fedkper_monai.job_fields`). Standard library only: milliseconds.

    Args:
        job: the job folder (or, for a job built in memory, its name): errors name
            ``JOB/app/config/config_fed_client.json`` or ``config_fed_server.json``.
        server, client: the job's two app configs.

    Raises:
        DataError: naming the job file and the field (e.g. ``transform_settings.transforms#1#_target_``).
    """
    from fedkper_monai.flare.jobspec import GLOBAL_EVALUATOR, PERSISTOR, SITE_EXECUTOR, site_args
    from fedkper_monai.job_fields import (
        EXECUTOR_ARGS,
        check_evaluator_args,
        check_persistor_args,
        check_plain,
        check_transforms_name,
    )
    from fedkper_monai.training.site_config import SiteConfig

    folder = Path(job) / "app" / "config"
    client_file, server_file = folder / "config_fed_client.json", folder / "config_fed_server.json"
    site_args(dict(client))  # a job without our site executor: named as the other commands name it
    for entry in client.get("executors", []):
        executor = entry.get("executor", {})
        if executor.get("path") != SITE_EXECUTOR:
            continue
        args = executor.get("args", {})
        for key in EXECUTOR_ARGS:
            if key in args:
                check_plain(args[key], source=client_file, field=key)
        config = SiteConfig.from_mapping({k: v for k, v in args.items() if k not in EXECUTOR_ARGS}, source=client_file)
        check_transforms_name(config.transforms, source=client_file)
    for component in server.get("components", []):
        args = component.get("args", {})
        if component.get("path") == GLOBAL_EVALUATOR:
            check_evaluator_args(args, source=server_file)
            if "transforms" in args:
                check_transforms_name(args["transforms"], source=server_file)
        elif component.get("path") == PERSISTOR:
            check_persistor_args(args, source=server_file)
