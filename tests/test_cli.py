"""The ``fedkper-monai`` entry point: every subcommand is registered, answers ``--help``, and refuses a missing
input with one line naming it, writing nothing; building the parser stays light."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from fedkper_monai.cli import build_parser, main

DEMO_JOB = str(Path(__file__).resolve().parents[1] / "jobs" / "fedkper_demo")

# Every leaf command with arguments that name an input which does not exist ("absent") and an output ("out");
# "prepare demo" has no input: its output is asked for under a plain file ("a_file").
# A new subcommand fails test_every_subcommand_has_a_refusal_case until it is listed here.
MISSING_INPUT: dict[str, list[str]] = {
    "prepare medmnist": ["--npz", "{absent}.npz", "--sites", "2", "--out", "{out}"],
    "prepare folders": ["--root", "{absent}", "--sites", "2", "--out", "{out}"],
    "prepare manifest": ["--manifest", "{absent}.csv", "--out", "{out}"],
    "prepare demo": ["--out", "{a_file}/demo"],
    "prepare mni152-demo": ["--source", "{absent}", "--out", "{out}"],
    "simulate": ["{absent}", "-w", "{out}", "-n", "2"],
    "export": ["{absent}", "--out", "{out}", "--network-from", "{absent}.json"],
    "allow": ["{absent}"],
    "compare": ["--data-root", "{absent}", "--out", "{out}", "--base-job", DEMO_JOB],
    "site-config": ["{absent}", "--data-root", "{absent}"],
    "poc run": ["fedkper", "--sites", "2", "--data-root", "{absent}", "--workspace", "{out}"],
    "deploy lab": ["fedkper", "--sites", "2", "--data-root", "{absent}", "--workspace", "{out}"],
    "deploy teardown": ["--workspace", "{absent}"],
    "site check": ["{absent}"],
    "report": ["{absent}", "--out", "{out}"],
    "bundle export": ["--run", "{absent}", "--global", "--out", "{out}"],
    "predict": ["--model", "{absent}.pt", "--images", "{absent}", "--out", "{out}"],
    "evaluate": ["--model", "{absent}.pt", "--datalist", "{absent}.json", "--out", "{out}"],
}


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[str]:
    subparsers = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not subparsers:
        return [" ".join(path)]
    return [leaf for name, sub in subparsers[0].choices.items() for leaf in _leaves(sub, path + (name,))]


def test_every_subcommand_has_a_refusal_case():
    assert sorted(_leaves(build_parser())) == sorted(MISSING_INPUT)


@pytest.mark.parametrize("command", sorted(MISSING_INPUT))
def test_each_subcommand_answers_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*command.split(), "--help"])
    assert stop.value.code == 0
    assert f"usage: fedkper-monai {command}" in capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(MISSING_INPUT))
def test_each_subcommand_refuses_a_missing_input_naming_it(command, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    named = {"absent": tmp_path / "absent", "out": tmp_path / "out", "a_file": tmp_path / "a_file"}
    argv = [part.format(**named) for part in MISSING_INPUT[command]]
    before = sorted(tmp_path.iterdir())
    code = main([*command.split(), *argv])
    shown = capsys.readouterr()
    assert code != 0
    culprit = named["a_file" if command == "prepare demo" else "absent"]
    assert str(culprit) in shown.err + shown.out, shown
    assert "Traceback" not in shown.err
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_help_does_not_import_torch_or_flare():
    # `fedkper-monai --help` must answer at once: heavy libraries load only when a command runs.
    code = "import sys; from fedkper_monai.cli import build_parser; build_parser(); print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'nvflare', 'monai'}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", f"building the parser imported {loaded}"


@pytest.mark.parametrize("command", ["poc run", "deploy lab"])
def test_poc_run_and_deploy_lab_refuse_an_unknown_job_before_starting_anything(command, tmp_path, capsys):
    # Both share one check of their options (launch.poc_cli.check_run_options); deploy lab did not check the job.
    code = main([*command.split(), "fedkpr", "--sites", "3", "--data-root", str(tmp_path), "--workspace",
                 str(tmp_path / "ws")])
    assert code == 2
    assert "JOB_OR_ALGORITHM: 'fedkpr' is neither a job folder nor an algorithm" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()
