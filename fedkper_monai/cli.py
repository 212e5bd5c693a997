"""The ``fedkper-monai`` command: one entry point, each subcommand registered by the layer it belongs to."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from fedkper_monai.errors import FedKPerError

__all__ = ["build_parser", "main"]

# (module, function) pairs: each function adds its subcommand(s) to the subparsers object and
# sets ``func`` on them. Modules are imported here, but must import heavy libraries lazily.
# Subcommands that continue a stopped run when started again with the same arguments.
_RESUMABLE = frozenset({"compare"})

_REGISTRARS: tuple[tuple[str, str], ...] = (
    ("fedkper_monai.data.cli", "add_prepare_parser"),
    ("fedkper_monai.launch.cli", "add_simulate_parser"),
    ("fedkper_monai.experiment.cli", "add_compare_parser"),
    ("fedkper_monai.launch.poc_cli", "add_site_parsers"),
    ("fedkper_monai.launch.lab_cli", "add_lab_parsers"),
    ("fedkper_monai.report.cli", "add_report_parser"),
    ("fedkper_monai.bundle.cli", "add_bundle_parser"),
    ("fedkper_monai.bundle.cli", "add_predict_parser"),
    ("fedkper_monai.bundle.cli", "add_evaluate_parser"),
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="fedkper-monai",
        description="FedKPer for medical imaging with MONAI and NVIDIA FLARE.",
    )
    from fedkper_monai import __version__

    parser.add_argument("--version", action="version", version=f"fedkper-monai {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, function_name in _REGISTRARS:
        module = importlib.import_module(module_name)
        register: Callable[[argparse._SubParsersAction], None] = getattr(module, function_name)
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FedKPerError as error:
        print(f"fedkper-monai {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C is a user's decision, not a crash: one line instead of a traceback, and the shell's code.
        hint = " (the same command continues from the last completed round)" if args.command in _RESUMABLE else ""
        print(f"fedkper-monai {args.command}: stopped by Ctrl-C{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
