"""``fedkper-monai deploy lab`` (a provisioned federation across network namespaces) and ``fedkper-monai site
check`` (a site's checks before it joins)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_lab_parsers"]


def _deploy_lab(args: argparse.Namespace) -> int:
    from fedkper_monai.launch.poc_cli import check_run_options

    data_root, workspace = check_run_options(args)
    from dataclasses import asdict

    from fedkper_monai.launch.lab import LabRun, deploy_lab
    from fedkper_monai.launch.overrides import overrides_from_args

    # A plain mapping: the lab's admin process reads it back from the run's JSON settings.
    overrides = asdict(overrides_from_args(args))
    run = LabRun(job=args.job, sites=args.sites, data_root=data_root.resolve(), workspace=workspace.resolve(),
                 overrides=overrides, device=args.device, timeout=args.timeout, min_task_timeout=args.min_task_timeout,
                 timeout_factor=args.timeout_factor, restarts=args.restarts)
    return deploy_lab(run)


def _teardown(args: argparse.Namespace) -> int:
    from fedkper_monai.launch.lab import teardown_recorded

    left = teardown_recorded(Path(args.workspace))
    print(f"removed: {', '.join(left)}" if left else "nothing of this lab was left on this host")
    return 0


def _site_check(args: argparse.Namespace) -> int:
    from fedkper_monai.launch.sitecheck import run_checks

    return run_checks(Path(args.kit), job=args.job, timeout=args.timeout)


def add_lab_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``deploy`` (with ``deploy lab``) and ``site`` (with ``site check``)."""
    from fedkper_monai.launch.poc_cli import add_run_options

    deploy = subparsers.add_parser("deploy", help="run a job on a provisioned federation of separate (namespaced) hosts")
    commands = deploy.add_subparsers(dest="deploy_command", metavar="DEPLOY_COMMAND")
    lab = commands.add_parser(
        "lab",
        help="provision, one network namespace per participant, start, submit, wait, download, tear down",
        description="Provision a FLARE project (server, site-1..N, admin; our allow-list in every kit), give each site "
        "a copy of only its own datalist and images and its site-config, put each participant in a network namespace "
        "of its own on a private bridge (10.213.0.0/24, never routed to the host), start each from its own startup "
        "kit, submit JOB from the admin kit with the Recipe API in ProdEnv, download the result into WS/result/, and "
        "remove every namespace, link, /etc/netns entry and process, also on failure or Ctrl-C. Needs root and `ip`.",
        epilog="example (as root):\n  fedkper-monai deploy lab fedkper --sites 3 --data-root data/retina --workspace /tmp/lab --rounds 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_options(lab, data_help="folder made by `fedkper-monai prepare` (split among the sites)",
                    workspace_help="folder for the kits, the sites' data copies, logs and result", restarts=0)
    lab.set_defaults(func=_deploy_lab)
    teardown = commands.add_parser(
        "teardown", help="remove what a killed `deploy lab` left (its namespaces, links, /etc/netns entries, processes)",
        description="deploy lab removes its network on exit, Ctrl-C and SIGTERM; after a SIGKILL nothing runs, so this "
        "removes what WS/lab/network.json records.",
        epilog="example (as root):\n  fedkper-monai deploy teardown --workspace /tmp/lab",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    teardown.add_argument("--workspace", required=True, help="the workspace of the lab to remove")
    teardown.set_defaults(func=_teardown)
    deploy.set_defaults(func=lambda args: deploy.print_help() or 2)

    site = subparsers.add_parser("site", help="a site operator's commands (site check)")
    site_commands = site.add_subparsers(dest="site_command", metavar="SITE_COMMAND")
    check = site_commands.add_parser(
        "check",
        help="verify a site's kit before it joins: data, allow-list, versions, the server over TLS",
        description="One line per check (ok / FAIL / skip): the site's data readable and valid against the job's "
        "network, the allow-list exactly our components (no '*', no package prefix), the installed fedkper-monai "
        "and FLARE versions, and a TLS connection to the server's port with the kit's certificates. Exit 0 when no "
        "check failed.",
        epilog="example:\n  fedkper-monai site check /opt/nvflare/hospital-a --job jobs/fedkper_medmnist",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("kit", help="the site's startup-kit folder (holds startup/ and local/)")
    check.add_argument("--job", default="fedkper", help="the job (folder or algorithm) whose network the data must fit")
    check.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server (default 10)")
    check.set_defaults(func=_site_check)
    site.set_defaults(func=lambda args: site.print_help() or 2)
