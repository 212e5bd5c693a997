"""The README's demo, run as written (slow): it must print the README's table, every row and every column but
the timings, so the front door cannot go stale. Then the models page's commands run on that run as written:
the sample inputs, ``evaluate`` (its printed accuracy is the page's), ``predict``, ``bundle export`` and the
bundle's own ``python -m monai.bundle run``.

The run is deterministic under the job's seed on one machine (torch 2.13.0 CPU); the README names the commit and
machine of its table. Only the final table is compared: progress lines are not the README's business.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MODELS_PAGE = ROOT / "docs" / "models-and-bundles.md"
WORKSPACE = "/tmp/fedkper_demo"  # the README's -w; each run here gets its own
HEADER = re.compile(r"^round\s+global\s+pers\.mean\s+pers\.worst\s+global NFR\s+BwT\s+sec$")
ROW = re.compile(r"^\s*\d+(\s+(-?\d+\.\d+|-)){6}$")

pytestmark = pytest.mark.slow


def _table(text: str) -> list[list[str]]:
    """The rows of the first round table in ``text``, without the ``sec`` column."""
    lines = text.splitlines()
    start = next(index for index, line in enumerate(lines) if HEADER.match(line.strip()))
    rows = []
    for line in lines[start + 1:]:
        if not ROW.match(line):
            break
        rows.append(line.split()[:-1])
    return rows


def _readme_demo() -> tuple[list[str], list[list[str]]]:
    """The README's demo command (the block under ``## Demo``) and the table its output block shows."""
    demo = README.read_text(encoding="utf-8").split("## Demo", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w*)\n(.*?)```", demo, flags=re.S)
    (command,) = [body.strip() for kind, body in blocks if kind == "bash"]
    (output,) = [body for kind, body in blocks if kind == ""]
    return shlex.split(command), _table(output)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    words, expected = _readme_demo()
    assert words[:2] == ["fedkper-monai", "simulate"] and words[words.index("-w") + 1] == WORKSPACE
    workspace = tmp_path_factory.mktemp("readme_demo") / "fedkper_demo"
    words[words.index("-w") + 1] = str(workspace)
    # The data where the demo keeps it by default (~/.cache/fedkper_monai/demo), as a reader's run finds it.
    env = {key: value for key, value in os.environ.items() if key != "FEDKPER_DEMO_ROOT"}
    done = subprocess.run([sys.executable, "-m", "fedkper_monai.cli", *words[1:]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return workspace, done.stdout, expected, done.stderr


def test_the_demo_prints_the_readmes_table(demo_run):
    _, printed, expected, _ = demo_run
    assert len(expected) == 5, "the README's table lost rows"
    assert _table(printed) == expected, f"the demo printed\n{printed}\nthe README shows\n{expected}: update README.md"
    first, last = expected[0], expected[-1]  # round, global, pers.mean, ...: what the demo shows a reader
    assert float(last[1]) > float(first[1]) and float(last[2]) > float(first[2]), "the demo no longer improves"


def test_the_demo_is_quiet_and_counts_rounds_as_its_table(demo_run):
    workspace, printed, _, errors = demo_run
    shown = (printed + errors).splitlines()
    assert len(shown) < 30, shown  # FLARE's own output goes to simulator.log
    assert not [line for line in shown if "Traceback" in line or "eprecat" in line]
    progress = [line.split(";")[0] for line in shown if line.startswith("round ") and " of " in line]
    assert progress == [f"round {k} done ({k + 1} of 5" for k in range(5)]  # numbered as the table numbers them
    assert (workspace / "simulator.log").stat().st_size > 0


def _model_blocks() -> list[str]:
    """The models page's bash blocks that make the sample inputs or use the demo's run, in page order."""
    blocks = re.findall(r"```bash\n(.*?)```", MODELS_PAGE.read_text(encoding="utf-8"), flags=re.S)
    return [block for block in blocks if WORKSPACE in block or "> new_cases.json" in block]


def test_the_models_pages_commands_run_on_the_demo_as_written(demo_run, tmp_path):
    workspace, _, _, _ = demo_run
    blocks = _model_blocks()
    assert len(blocks) == 3, "the sample inputs, evaluate, and predict + bundle export + monai.bundle run"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    printed = ""
    for block in blocks:
        script = block.replace(WORKSPACE, str(workspace))
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{script}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        printed += done.stdout
    # The page states what evaluate printed on these inputs; the run is the README's, so is the figure.
    (stated,) = re.findall(r"printed `(800 samples: accuracy [\d.]+, balanced accuracy [\d.]+)`", MODELS_PAGE.read_text(encoding="utf-8"))
    assert stated in printed, f"evaluate printed {printed!r}; the models page says {stated!r}"
    assert (tmp_path / "eval" / "site-1" / "metrics.json").exists()
    assert (tmp_path / "bundles" / "site-1" / "configs" / "inference.json").exists()
    with open(tmp_path / "predictions.csv", newline="") as rows:  # the bundle run's, written last
        assert len(list(csv.DictReader(rows))) == 10
