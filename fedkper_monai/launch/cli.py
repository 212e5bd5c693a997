"""``fedkper-monai simulate``, ``export`` and ``allow``: a job into FLARE's simulator, out to real sites, allowed at a site."""

from __future__ import annotations

import argparse

from fedkper_monai.launch.overrides import add_override_options, check_overrides, overrides_from_args

__all__ = ["add_simulate_parser"]

_SIMULATE_EXAMPLE = """example:
  fedkper-monai simulate jobs/fedkper_demo -w /tmp/fedkper_demo -n 4 -t 4
  fedkper-monai simulate jobs/fedkper_medmnist -w /tmp/retina -n 20 -t 4 --data-root data/retina --rounds 50
"""


def _check_simulate(args: argparse.Namespace) -> None:
    """Every setting of ``simulate``, before FLARE starts (well under a second; stdlib only)."""
    from fedkper_monai.flare.jobspec import load_job
    from fedkper_monai.launch import checks

    check_overrides(args)
    checks.check_threads(args.threads)
    checks.check_workspace(args.workspace, args.overwrite)
    _meta, server, client = load_job(args.job)
    checks.check_job_fields(args.job, server, client)  # what each site and the server would refuse, now
    data_root = checks.check_job_data(args.job, client, args.data_root)
    if data_root is None:  # the demo job on a fresh machine: its data is generated once, before any run
        from fedkper_monai.data.demo import ensure_demo_data
        from fedkper_monai.flare.sitedata import default_demo_root

        data_root = ensure_demo_data(default_demo_root())
    checks.check_site_count(args.n_clients, data_root)


def _simulate(args: argparse.Namespace) -> int:
    _check_simulate(args)
    from fedkper_monai.launch.simulate import simulate

    overrides = overrides_from_args(args, data_root=args.data_root)
    return simulate(args.job, args.workspace, args.n_clients, args.threads, overrides, verbose=args.verbose)


def _describe_network(job: str) -> str:
    from fedkper_monai.flare.jobspec import load_job, site_args

    network = site_args(load_job(job)[2]).get("network", {})
    size = "x".join(str(side) for side in network.get("image_size") or [])
    return (f"{network.get('name')}, {network.get('in_channels')} input channel(s), "
            f"{network.get('num_classes')} classes, {size or 'any size'}")


def _check_export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from fedkper_monai.flare.jobspec import load_job
    from fedkper_monai.launch.checks import SettingError, check_job_fields, check_output

    check_overrides(args)
    check_output(args.out, args.overwrite)
    check_job_fields(args.job, *load_job(args.job)[1:])  # what each site and the server would refuse, now
    if args.network_from is None:
        raise SettingError("--network-from", "required: a site's datalist (or a prepared folder) sets the network's "
                                             f"classes, size and channels (the job's own network is {_describe_network(args.job)})")
    if not Path(args.network_from).exists():
        raise SettingError("--network-from", f"{args.network_from}: not found (give a datalist or a folder made by "
                                             "`fedkper-monai prepare`)")


def _export(args: argparse.Namespace) -> int:
    _check_export(args)
    from fedkper_monai.flare.jobspec import save_job_configs
    from fedkper_monai.io import atomic_directory
    from fedkper_monai.launch.overrides import configure_job

    configs = configure_job(args.job, overrides_from_args(args), network_from=args.network_from)
    with atomic_directory(args.out, overwrite=args.overwrite) as staging:
        save_job_configs(staging, *configs)
    print(f"wrote {args.out}: submit it with `nvflare job submit -j {args.out}`")
    return 0


def _allow(args: argparse.Namespace) -> int:
    from fedkper_monai.flare.workspace import allow_components, allowed_classes

    print(f"allowed {len(allowed_classes())} fedkper_monai component classes in {allow_components(args.site_dir)}")
    return 0


def add_simulate_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``simulate`` and ``allow``."""
    parser = subparsers.add_parser(
        "simulate",
        help="run a job in FLARE's simulator",
        description="Allow fedkper_monai components in the workspace, then run FLARE's simulator on JOB.",
        epilog=_SIMULATE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("job", help="job folder, e.g. jobs/fedkper_demo")
    parser.add_argument("-w", "--workspace", required=True, help="simulator workspace folder")
    parser.add_argument("-n", "--n-clients", type=int, required=True, help="number of sites (site-1 ... site-N)")
    parser.add_argument("-t", "--threads", type=int, help="site processes at a time (default: one per site while they "
                        "fit in 60%% of this machine's memory at ~600 MiB each, else the sites trained per round, at "
                        "least 2; with fewer than the sites FLARE's simulator starts a process per site task: same "
                        "metrics, less memory, slower)")
    parser.add_argument("--data-root", help="folder made by `fedkper-monai prepare` (sets data and network size)")
    add_override_options(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace a workspace that holds an earlier run")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show FLARE's own output (always written to WORKSPACE/simulator.log)")
    parser.set_defaults(func=_simulate)

    export = subparsers.add_parser(
        "export",
        help="write a job folder for real FLARE sites, sized from a datalist",
        description="Write JOB with overrides to OUT for `nvflare job submit`. No data path is written: each site "
        "reads its own FEDKPER_DATA_ROOT (or FEDKPER_DATALIST).",
        epilog="example:\n  fedkper-monai export jobs/fedkper_medmnist --network-from /data/fedkper/hospital-a.json "
        "--rounds 100 --out build/fedkper_job\n  nvflare job submit -j build/fedkper_job",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("job", help="job folder, e.g. jobs/fedkper_medmnist")
    export.add_argument("--out", required=True, help="folder to write the job into")
    export.add_argument("--network-from", help="required: a datalist (or prepared folder) whose classes, size and "
                        "channels set the network")
    add_override_options(export)
    export.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    export.set_defaults(func=_export)

    allow = subparsers.add_parser(
        "allow",
        help="let a FLARE site or simulator workspace build fedkper_monai components",
        description="Add the exact component classes of our jobs to SITE_DIR/local/resources.json's "
        "class_allow_list (keeping FLARE's default list; never a package prefix, never '*'). SITE_DIR must "
        "exist and hold startup/ or local/.",
        epilog="example:\n  fedkper-monai allow /opt/nvflare/hospital-a   # a provisioned site's startup kit\n"
        "  fedkper-monai allow /tmp/fedkper_ws            # a simulator workspace",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    allow.add_argument("site_dir", help="site startup-kit folder or simulator workspace")
    allow.set_defaults(func=_allow)

