"""``fedkper-monai site-config`` and ``fedkper-monai poc run``: a site's own settings, and a POC deployment."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_site_parsers", "add_run_options", "check_run_options"]


def _site_config(args: argparse.Namespace) -> int:
    from fedkper_monai.flare.local_choices import write_site_config
    from fedkper_monai.flare.local_privacy import privacy_from_args

    path = write_site_config(args.site_dir, args.data_root, datalist=args.datalist, device=args.device, privacy=privacy_from_args(args))
    print(f"wrote {path}: this site reads its data from {Path(args.data_root).resolve()} in every job")
    return 0


def _check_job(job: str) -> None:
    """JOB_OR_ALGORITHM: a job folder whose fields the sites and the server accept, or a registry algorithm."""
    from fedkper_monai.algorithm_registry import ALGORITHMS
    from fedkper_monai.flare.jobspec import load_job
    from fedkper_monai.launch.checks import SettingError, check_job_fields

    if Path(job).is_dir():
        check_job_fields(job, *load_job(job)[1:])
    elif job not in ALGORITHMS:
        raise SettingError("JOB_OR_ALGORITHM", f"{job!r} is neither a job folder nor an algorithm; algorithms: "
                                               f"{', '.join(ALGORITHMS)}")


def check_run_options(args: argparse.Namespace) -> tuple[Path, Path]:
    """Every option :func:`add_run_options` adds, before anything starts (one line naming the option); then an
    ``--overwrite`` workspace is emptied. Returns the data root and the workspace (``poc run``, ``deploy lab``)."""
    from fedkper_monai.launch.checks import SettingError, check_site_count
    from fedkper_monai.launch.overrides import check_overrides

    check_overrides(args)
    if args.restarts < 0:
        raise SettingError("--restarts", f"must be >= 0, got {args.restarts}")
    if args.sites < 1:
        raise SettingError("--sites", f"must be >= 1, got {args.sites}")
    if args.min_task_timeout is not None and not args.min_task_timeout > 0:
        raise SettingError("--min-task-timeout", f"must be > 0, got {args.min_task_timeout}")
    if args.timeout_factor is not None and not args.timeout_factor > 0:
        raise SettingError("--timeout-factor", f"must be > 0, got {args.timeout_factor}")
    _check_job(args.job)
    data_root = Path(args.data_root)
    if not data_root.is_dir():
        raise SettingError("--data-root", f"{data_root}: no such folder (make one with `fedkper-monai prepare`)")
    try:
        check_site_count(args.sites, data_root)
    except SettingError as error:  # the simulator's option is -n; here it is --sites
        message = str(error).replace("use -n", "use --sites")
        raise SettingError("--sites", message[len("-n: "):]) if message.startswith("-n: ") else error from None
    workspace = Path(args.workspace)
    if workspace.exists() and any(workspace.iterdir()) and not args.overwrite:
        raise SettingError("--workspace", f"{workspace} is not empty (an earlier run?); pass --overwrite to replace it")
    if workspace.exists() and args.overwrite:
        import shutil

        shutil.rmtree(workspace)
    return data_root, workspace


def _poc_run(args: argparse.Namespace) -> int:
    data_root, workspace = check_run_options(args)
    from fedkper_monai.launch.overrides import overrides_from_args
    from fedkper_monai.launch.poc import PocRun, poc_run

    overrides = overrides_from_args(args)
    run = PocRun(job=args.job, sites=args.sites, data_root=data_root.resolve(), workspace=workspace.resolve(),
                 overrides=overrides, device=args.device, timeout=args.timeout, restarts=args.restarts,
                 min_task_timeout=args.min_task_timeout, timeout_factor=args.timeout_factor)
    return poc_run(run)


def add_site_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``site-config`` and ``poc`` (with ``poc run``)."""
    site = subparsers.add_parser(
        "site-config",
        help="write a FLARE site's own data and device choices into its workspace",
        description="Write SITE_DIR/local/fedkper_site.json: where this site's data is and which device it uses. "
        "Every job's site executor reads it at start; a job cannot point a site elsewhere.",
        epilog="example:\n  fedkper-monai site-config /opt/nvflare/hospital-a --data-root /data/fedkper "
        "--datalist /data/fedkper/hospital-a.json --device cuda",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    site.add_argument("site_dir", help="the site's startup-kit folder (holds startup/ or local/)")
    site.add_argument("--data-root", required=True, help="folder of the site's data and datalists")
    site.add_argument("--datalist", help="the site's datalist JSON (default DATA_ROOT/<site-name>.json)")
    site.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: the job's choice")
    from fedkper_monai.flare.local_privacy import add_privacy_arguments

    add_privacy_arguments(site)
    site.set_defaults(func=_site_config)

    poc = subparsers.add_parser("poc", help="run a job on FLARE's POC deployment (separate processes, loopback)")
    commands = poc.add_subparsers(dest="poc_command", metavar="POC_COMMAND")
    run = commands.add_parser(
        "run",
        help="prepare POC, start server and sites, submit, wait, download the result, stop",
        description="Prepare FLARE's POC workspace in WS (a free port), allow our components and write each site's "
        "site-config, start the server and N sites as separate processes, submit JOB, print progress, download "
        "the result into WS/result/, and stop every process, also on failure or Ctrl-C. A site or the server "
        "that exits during the job is started again (--restarts); the job then continues from its last "
        "completed round.",
        epilog="example:\n  fedkper-monai poc run fedkper --sites 3 --data-root data/retina --workspace /tmp/poc --rounds 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_options(run, data_help="folder made by `fedkper-monai prepare` (every site's data)",
                    workspace_help="folder for the POC kits, logs and result", restarts=1)
    run.set_defaults(func=_poc_run)
    poc.set_defaults(func=lambda args: poc.print_help() or 2)


def add_run_options(parser: argparse.ArgumentParser, *, data_help: str, workspace_help: str, restarts: int) -> None:
    """The options every command that runs a job on separate processes shares (``poc run``, ``deploy lab``);
    ``restarts``: the default of ``--restarts``."""
    from fedkper_monai.launch.overrides import add_override_options

    parser.add_argument("job", metavar="JOB_OR_ALGORITHM", help="a job folder (jobs/fedkper_medmnist) or an algorithm name (fedkper, fedavg, ...)")
    parser.add_argument("--sites", type=int, required=True, help="number of sites (site-1 ... site-N)")
    parser.add_argument("--data-root", required=True, help=data_help)
    parser.add_argument("--workspace", required=True, help=workspace_help)
    add_override_options(parser)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="each site's device (default cpu)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds the job may run before it is aborted")
    parser.add_argument("--min-task-timeout", type=float, metavar="S",
                        help="least seconds the server waits for a site's answer (the job's default: 60)")
    parser.add_argument("--timeout-factor", type=float, metavar="X",
                        help="the server waits X times the slowest answer so far, at least --min-task-timeout (the job's default: 5)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty workspace")
    parser.add_argument("--restarts", type=int, default=restarts,
                        help=f"times a site or the server that exits during the job is started again (default {restarts}); "
                        "a restarted server gets the job again, which continues from its last completed round")
