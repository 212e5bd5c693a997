"""The README's commands and every ``--help`` example stay true (issue 13): each ``fedkper-monai`` command
in a fenced bash block or a help epilog parses with today's options, the job folders and scripts it names
exist, and the fast ones run with small settings in a temporary folder."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fedkper_monai.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _commands(text: str) -> list[str]:
    """Commands of the fenced ``bash`` blocks: continuation lines joined, ``&&`` chains split, comments dropped."""
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            commands += [part.strip() for part in line.split("&&") if part.strip()]
    return commands


def _words(command: str) -> list[str]:
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the command
        words = words[1:]
    return words


def _parse(argv: list[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(argv)
    except SystemExit as stop:
        raise AssertionError(f"`fedkper-monai {' '.join(argv)}` does not parse (exit {stop.code})") from None


def _complete(lines: list[str]) -> str:
    """The first line, joined with the next ones while a quotation is still open."""
    command = lines[0].strip()
    for more in lines[1:]:
        try:
            shlex.split(command)
            break
        except ValueError:
            command += " " + more.strip()
    return command


def _help_examples() -> list[str]:
    """Every ``fedkper-monai ...`` line of every subcommand's help epilog."""
    found: list[str] = []
    parsers = [build_parser()]
    while parsers:
        parser = parsers.pop()
        lines = (parser.epilog or "").replace("\\\n", " ").splitlines()
        for index, line in enumerate(lines):
            if line.strip().startswith("fedkper-monai "):
                found.append(_complete(lines[index:]))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += list(action.choices.values())
    return [re.sub(r"\s+#\s.*$", "", line) for line in found]


README_COMMANDS = _commands(README.read_text(encoding="utf-8"))
OUR_COMMANDS = [c for c in README_COMMANDS if _words(c)[:1] == ["fedkper-monai"]] + _help_examples()


def test_the_readme_shows_the_commands_it_promises():
    first_words = {tuple(_words(c)[:2]) for c in README_COMMANDS}
    assert ("fedkper-monai", "simulate") in first_words and ("python", "-m") in first_words
    assert len(OUR_COMMANDS) >= 15


@pytest.mark.parametrize("command", OUR_COMMANDS)
def test_every_fedkper_monai_command_parses_and_names_existing_jobs(command):
    args = _parse(_words(command)[1:])
    # A job named my_* is one the README has the reader make (e.g. from a MONAI bundle); every other must exist.
    if args.command in ("simulate", "export") and not Path(args.job).name.startswith("my_"):
        assert (ROOT / args.job / "meta.json").exists(), f"{command}: no job folder {args.job}"


@pytest.mark.parametrize("command", [c for c in README_COMMANDS if _words(c)[:1] in (["python"], ["nvflare"], ["bash"])])
def test_scripts_modules_and_job_folders_of_other_commands_exist(command):
    words = _words(command)
    if words[:2] == ["nvflare", "simulator"]:
        assert (ROOT / words[2] / "meta.json").exists(), command
    elif words[:3] == ["nvflare", "job", "submit"]:
        assert any(f"--out {words[-1]}" in c for c in README_COMMANDS), f"{command}: no command writes {words[-1]}"
    elif words[:2] == ["nvflare", "provision"]:
        # The project file is the README's yaml block; tests/flare/test_poc.py provisions it.
        assert words[words.index("-p") + 1] == "project.yml" and "```yaml\napi_version: 3" in README.read_text(encoding="utf-8")
    elif words[0] == "bash":
        assert (ROOT / words[1]).exists(), command
    elif words[1] == "-m":
        if words[2] != "pytest":
            help_run = subprocess.run([sys.executable, "-m", words[2], "--help"], cwd=ROOT, capture_output=True, text=True)
            assert help_run.returncode == 0, help_run.stderr
    else:
        assert (ROOT / words[1]).exists(), f"{command}: no script {words[1]}"


def test_version():
    from fedkper_monai import __version__

    result = subprocess.run([sys.executable, "-m", "fedkper_monai.cli", "--version"], capture_output=True, text=True)
    assert (result.returncode, result.stdout.strip()) == (0, f"fedkper-monai {__version__}")


def test_the_plain_flare_route_prepares_its_workspace_as_written(tmp_path, capsys):
    # `allow` refuses a folder that is not a FLARE workspace: the README makes one first.
    assert README_COMMANDS[README_COMMANDS.index("fedkper-monai allow /tmp/ws") - 1] == "mkdir -p /tmp/ws/local"
    (tmp_path / "ws" / "local").mkdir(parents=True)
    assert main(["allow", str(tmp_path / "ws")]) == 0
    assert (tmp_path / "ws" / "local" / "resources.json").exists()
    assert any("OMP_NUM_THREADS=1 nvflare simulator" in c for c in README_COMMANDS)


def test_the_readme_prepare_command_runs(tmp_path, capsys):
    (command,) = [c for c in README_COMMANDS if "prepare medmnist --npz" in c]
    args = _words(command)[1:]
    npz = ROOT / args[args.index("--npz") + 1]
    if not npz.exists():
        pytest.skip(f"{npz} is not beside this clone")
    args[args.index("--npz") + 1] = str(npz)
    args[args.index("--sites") + 1] = "3"
    args[args.index("--out") + 1] = str(tmp_path / "retina")
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "retina").glob("site-*.json")) == ["site-1.json", "site-2.json", "site-3.json"]


def test_help_texts_say_what_really_happens():
    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    report_help = subcommands["report"].format_help()
    assert "RUN_DIR/server/simulate_job/metrics.jsonl" in report_help and "app_server" not in report_help
    folders = next(a for a in subcommands["prepare"]._actions if isinstance(a, argparse._SubParsersAction)).choices["folders"]
    assert "Images stay where they are (with --copy: under DIR/images/" in " ".join(folders.format_help().split())
    assert "default: all" in " ".join(subcommands["compare"].format_help().split())
    # simulate runs one process per site only while they fit in memory (tests/flare/test_threads.py).
    assert "default: one per site while they fit" in " ".join(subcommands["simulate"].format_help().split())
