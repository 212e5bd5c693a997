"""The ``fedkper-monai`` entry point: every subcommand is registered, and building the parser stays light."""

from __future__ import annotations

import subprocess
import sys

from fedkper_monai.cli import build_parser


def test_every_subcommand_is_registered():
    subparsers = next(action for action in build_parser()._actions if action.dest == "command")
    assert {"prepare", "simulate", "export", "allow", "compare", "report"} <= set(subparsers.choices)


def test_help_does_not_import_torch_or_flare():
    # `fedkper-monai --help` must answer at once: heavy libraries load only when a command runs.
    code = "import sys; from fedkper_monai.cli import build_parser; build_parser(); print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'nvflare', 'monai'}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", f"building the parser imported {loaded}"
