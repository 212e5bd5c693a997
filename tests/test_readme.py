"""The README, the docs pages and every ``--help`` example stay true (issues 13 and 22).

Each ``fedkper-monai`` command in a fenced bash block of README.md or docs/*.md, or in a help epilog, parses
with today's options, the job folders, scripts and test files it names exist, and the fast ones run with small
settings in a temporary folder. Every docs page is in mkdocs.yml's nav, every relative link and anchor resolves,
the README's command table lists exactly the CLI's commands, and the metrics tables come from the schema.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fedkper_monai.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]


def _load_hooks():
    spec = importlib.util.spec_from_file_location("_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOKS = _load_hooks()


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


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


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
        parsers += list(_subparsers(parser).values())
    return [re.sub(r"\s+#\s.*$", "", line) for line in found]


def _leaf_commands() -> set[str]:
    """``simulate``, ``prepare medmnist``, ``poc run``, ...: every command the CLI runs."""
    leaves, pending = set(), [((), build_parser())]
    while pending:
        path, parser = pending.pop()
        children = _subparsers(parser)
        if path and not children:
            leaves.add(" ".join(path))
        pending += [((*path, name), child) for name, child in children.items()]
    return leaves


def _page_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


PAGE_COMMANDS = {page: _commands(_page_text(page)) for page in PAGES}
ALL_COMMANDS = [command for commands in PAGE_COMMANDS.values() for command in commands]
OUR_COMMANDS = [c for c in ALL_COMMANDS if _words(c)[:1] == ["fedkper-monai"]] + _help_examples()


def test_the_readme_shows_the_commands_it_promises():
    readme = PAGE_COMMANDS[README]
    first_words = {tuple(_words(c)[:2]) for c in readme}
    assert ("fedkper-monai", "simulate") in first_words and ("python", "-m") in first_words
    assert len(OUR_COMMANDS) >= 15
    # The README's test command is exactly what CI runs, after a strict docs build.
    ci_steps = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip() and not line.startswith("#")]
    tests = [c for c in readme if _words(c)[:3] == ["python", "-m", "pytest"]]
    assert tests == [ci_steps[-1]] == ["python -m pytest -q"], (tests, ci_steps[-1])
    docs_build = [index for index, step in enumerate(ci_steps) if "mkdocs build --strict" in step]
    assert docs_build and docs_build[0] < len(ci_steps) - 1 and '".[test,docs]"' in " ".join(ci_steps)


def test_the_readme_stays_a_front_door():
    lines = _page_text(README).splitlines()
    assert 100 <= len(lines) <= 150, f"README.md has {len(lines)} lines: move detail into docs/"


@pytest.mark.parametrize("command", OUR_COMMANDS)
def test_every_fedkper_monai_command_parses_and_names_existing_jobs(command):
    args = _parse(_words(command)[1:])
    # A job named my_* is one the docs have the reader make (e.g. from a MONAI bundle); every other must exist.
    if args.command in ("simulate", "export") and not Path(args.job).name.startswith("my_"):
        assert (ROOT / args.job / "meta.json").exists(), f"{command}: no job folder {args.job}"


def _pytest_paths(words: list[str]) -> list[str]:
    """The test files and folders of a ``python -m pytest ...`` command (option values skipped)."""
    paths, skip = [], False
    for word in words[3:]:
        if skip:
            skip = False
        elif word in ("-m", "-k", "-p", "--durations"):
            skip = True
        elif not word.startswith("-"):
            paths.append(word.split("::", 1)[0])
    return paths


@pytest.mark.parametrize("command", [c for c in ALL_COMMANDS if _words(c)[:1] in (["python"], ["nvflare"], ["bash"])])
def test_scripts_modules_and_job_folders_of_other_commands_exist(command):
    words = _words(command)
    if words[:2] == ["nvflare", "simulator"]:
        assert (ROOT / words[2] / "meta.json").exists(), command
    elif words[:3] == ["nvflare", "job", "submit"]:
        assert any(f"--out {words[-1]}" in c for c in ALL_COMMANDS), f"{command}: no command writes {words[-1]}"
    elif words[:2] == ["nvflare", "provision"]:
        # The project file is the docs' yaml block; tests/system/test_poc.py provisions it.
        assert words[words.index("-p") + 1] == "project.yml"
        assert any("```yaml\napi_version: 3" in _page_text(page) for page in PAGES), "no page shows project.yml"
    elif words[0] == "bash":
        assert (ROOT / words[1]).exists(), command
    elif words[1] == "-m" and words[2] == "pytest":
        for path in _pytest_paths(words):
            assert (ROOT / path).exists(), f"{command}: no {path}"
    elif words[1] == "-m":
        help_run = subprocess.run([sys.executable, "-m", words[2], "--help"], cwd=ROOT, capture_output=True, text=True)
        assert help_run.returncode == 0, help_run.stderr
    else:
        assert (ROOT / words[1]).exists(), f"{command}: no script {words[1]}"


def test_version():
    from fedkper_monai import __version__

    result = subprocess.run([sys.executable, "-m", "fedkper_monai.cli", "--version"], capture_output=True, text=True)
    assert (result.returncode, result.stdout.strip()) == (0, f"fedkper-monai {__version__}")


def test_the_plain_flare_route_prepares_its_workspace_as_written(tmp_path, capsys):
    # `allow` refuses a folder that is not a FLARE workspace: the docs make one first.
    assert ALL_COMMANDS[ALL_COMMANDS.index("fedkper-monai allow /tmp/ws") - 1] == "mkdir -p /tmp/ws/local"
    (tmp_path / "ws" / "local").mkdir(parents=True)
    assert main(["allow", str(tmp_path / "ws")]) == 0
    assert (tmp_path / "ws" / "local" / "resources.json").exists()
    assert any("OMP_NUM_THREADS=1 nvflare simulator" in c for c in ALL_COMMANDS)


def test_the_docs_prepare_command_runs(tmp_path, capsys):
    (command,) = [c for c in ALL_COMMANDS if "prepare medmnist --npz ../shared/data/medmnist/retinamnist.npz" in c]
    args = _words(command)[1:]
    npz = ROOT / args[args.index("--npz") + 1]
    if not npz.exists():
        pytest.skip(f"{npz} is not beside this clone")
    args[args.index("--npz") + 1] = str(npz)
    args[args.index("--sites") + 1] = "3"
    args[args.index("--out") + 1] = str(tmp_path / "retina")
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "retina").glob("site-*.json")) == ["site-1.json", "site-2.json", "site-3.json"]


def _sample_block() -> str:
    """The bash block of the models page that makes ``new_images/`` and ``new_cases.json``."""
    blocks = re.findall(r"```bash\n(.*?)```", _page_text(DOCS / "models-and-bundles.md"), flags=re.S)
    (block,) = [b for b in blocks if "> new_cases.json" in b]
    return block


def test_the_sample_inputs_the_examples_read_are_made_as_the_docs_say(tmp_path, capsys):
    from fedkper_monai.data.datalist import load_datalist

    # The demo data where the demo puts it, under a home of our own.
    assert main(["prepare", "demo", "--out", str(tmp_path / "home" / ".cache" / "fedkper_monai" / "demo"), "--no-progress"]) == 0
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", _sample_block()], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(list((work / "new_images").glob("*.png"))) == 10
    cases = load_datalist(work / "new_cases.json")
    assert len(cases.test) == 800 and cases.num_classes == 8
    # The commands that read them, as the docs show them.
    assert any("--datalist new_cases.json" in c and _words(c)[1] == "evaluate" for c in ALL_COMMANDS)
    assert any("--images new_images/" in c and _words(c)[1] == "predict" for c in ALL_COMMANDS)


def test_help_texts_say_what_really_happens():
    parser = build_parser()
    subcommands = _subparsers(parser)
    report_help = subcommands["report"].format_help()
    assert "RUN_DIR/server/simulate_job/metrics.jsonl" in report_help and "app_server" not in report_help
    folders = _subparsers(subcommands["prepare"])["folders"]
    assert "Images stay where they are (with --copy: under DIR/images/" in " ".join(folders.format_help().split())
    assert "default: all" in " ".join(subcommands["compare"].format_help().split())
    # simulate runs one process per site only while they fit in memory (tests/system/test_threads.py).
    assert "default: one per site while they fit" in " ".join(subcommands["simulate"].format_help().split())


def _readme_table_commands() -> set[str]:
    """The commands of the README's command table: ``prepare medmnist` / `folders``` names two."""
    section = _page_text(README).split("## Commands", 1)[1].split("\n## ", 1)[0]
    found = set()
    for row in re.findall(r"^\| (`[^|]+) \|", section, flags=re.M):
        parent: list[str] = []
        for name in re.findall(r"`([^`]+)`", row):
            words = name.split()
            if len(words) == 1 and parent:
                words = [*parent, *words]  # `folders` after `prepare medmnist`
            parent = words[:-1]
            found.add(" ".join(words))
    return found


def test_the_readme_command_table_lists_every_command_of_the_cli():
    table, cli = _readme_table_commands(), _leaf_commands()
    assert table == cli, f"missing from the README's table: {sorted(cli - table)}; not commands: {sorted(table - cli)}"


def _nav_pages(nav) -> list[str]:
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    assert config["strict"] is True and config["hooks"] == ["docs/hooks.py"]
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    assert pages - set(nav) == set(), f"docs pages missing from mkdocs.yml's nav: {sorted(pages - set(nav))}"
    # An entry outside docs/ is a repository file the hook adds under its own path (benchmarks/RESULTS.md).
    missing = [entry for entry in nav if not (DOCS / entry).is_file() and not (ROOT / entry).is_file()]
    assert not missing, f"nav entries without a file: {missing}"


def _slug(heading: str) -> str:
    """A heading's anchor as MkDocs (Python-Markdown's toc) and GitHub make it, for our headings."""
    text = re.sub(r"[`*]", "", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", _page_text(path), flags=re.S)
    return {_slug(heading) for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def _relative_links(path: Path) -> list[str]:
    text = HOOKS._without_code(_page_text(path))
    return [target for _, target, _ in HOOKS._LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(page):
    for link in _relative_links(page):
        target, _, anchor = link.partition("#")
        file = (page.parent / target).resolve() if target else page
        assert file.exists(), f"{page.name}: link {link!r}: no {file}"
        assert ROOT in file.parents, f"{page.name}: link {link!r} leaves the repository"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{page.name}: link {link!r}: {file.name} has no heading #{anchor}"


def test_the_pages_no_longer_depend_on_the_shared_design_notes():
    for page in PAGES:
        assert "shared/DESIGN.md" not in _page_text(page), f"{page.name} points at ../shared/DESIGN.md: use docs/design.md"


def test_the_metrics_tables_are_built_from_the_schema_not_copied():
    from fedkper_monai import metrics_schema as schema

    source = _page_text(DOCS / "metrics.md")
    assert source.count(HOOKS.MARKER) == 1
    assert not re.search(r"^\| `(global_acc|personalized_acc|weight)` \|", source, flags=re.M), "a copied field table"
    tables = HOOKS.schema_tables()
    rows = set(re.findall(r"^\| `([^`]+)` \|", tables, flags=re.M))
    every = set(schema.HEADER_FIELDS) | set(schema.OPTIONAL_HEADER_FIELDS) | set(schema.DROPPED_SITE_FIELDS)
    for table in (schema.SITE_TRAIN_FIELDS, schema.SERVER_TRAIN_FIELDS, schema.DENSE_SITE_FIELDS, schema.VALIDATE_FIELDS,
                  schema.FAILED_SITE_FIELDS, schema.ROUND_FIELDS):
        every |= set(schema.names(table))
    assert rows == every
    # A field added to the schema is in the next build's table, with its meaning (a pipe in it escaped).
    added = schema.MetricField("new_round_figure", schema.NUMBER, "a new | figure")
    changed = SimpleNamespace(**{name: getattr(schema, name) for name in dir(schema) if name.isupper()})
    changed.ROUND_FIELDS = (*schema.ROUND_FIELDS, added)
    assert "| `new_round_figure` | number | a new \\| figure |" in HOOKS.schema_tables(changed)


PACKAGE = ROOT / "fedkper_monai"
SUBPACKAGES = "algorithm|data|training|bundle|report|flare|launch|experiment"


def _named_code() -> set[str]:
    """Every module path (``fedkper_monai.launch.recipe``, ``fedkper_monai/bundle/trust.py``, ``training/site.py``)
    the README and the docs name."""
    text = "\n".join(_page_text(page) for page in PAGES)
    dotted = set(re.findall(r"\bfedkper_monai(?:\.[A-Za-z_]\w*)+", text))
    files = set(re.findall(rf"\bfedkper_monai/[\w/]+\.py\b", text))
    files |= {f"fedkper_monai/{path}" for path in re.findall(rf"(?<![\w/])((?:{SUBPACKAGES})/[\w/]+\.py)\b", text)}
    return dotted | files


@pytest.mark.parametrize("name", sorted(_named_code()))
def test_every_module_the_docs_name_exists(name):
    if name.endswith(".py"):
        assert (ROOT / name).is_file(), f"the docs name {name}, which does not exist"
        return
    # A dotted name is a module, or a module and one attribute of it (a class, a function).
    parts = name.split(".")
    module = next((".".join(parts[:n]) for n in range(len(parts), 1, -1)
                   if (ROOT / Path(*parts[:n])).with_suffix(".py").is_file() or (ROOT / Path(*parts[:n]) / "__init__.py").is_file()), None)
    assert module, f"the docs name {name}: no such module"
    rest = parts[len(module.split(".")):]
    assert len(rest) <= 1, f"the docs name {name}: {module} has no module {rest[0]}"
    if rest:
        source = (ROOT / Path(*module.split("."))).with_suffix(".py").read_text(encoding="utf-8")
        assert re.search(rf"^(class|def) {rest[0]}\b", source, flags=re.M), f"the docs name {name}: not in {module}"
