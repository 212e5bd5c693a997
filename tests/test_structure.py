"""The architecture's size limits and layering, checked on the source (issue: one site round below FLARE).

- no module of the package reaches 400 lines;
- no function in the FLARE adapters is above cyclomatic complexity 15 (they only translate);
- the layers below FLARE (the math, data, the site round, the schema and schedule) import without nvflare.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from radon.complexity import cc_visit

PACKAGE = Path(__file__).resolve().parents[1] / "fedkper_monai"
MAX_MODULE_LINES = 400
MAX_ADAPTER_COMPLEXITY = 15


def test_no_module_reaches_400_lines():
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    too_long = {name: lines for name, lines in sizes.items() if lines >= MAX_MODULE_LINES}
    assert not too_long, f"split these modules: {too_long}"


def test_flare_adapters_stay_simple():
    too_complex = [
        f"{path.name}:{block.lineno} {block.name} ({block.complexity})"
        for path in (PACKAGE / "flare").glob("*.py")
        for block in cc_visit(path.read_text())
        if block.complexity > MAX_ADAPTER_COMPLEXITY
    ]
    assert not too_complex, f"move logic out of the FLARE adapters: {too_complex}"


def test_the_layers_below_flare_import_without_nvflare():
    modules = [
        "fedkper_monai.algorithm",
        "fedkper_monai.data",
        "fedkper_monai.training",
        "fedkper_monai.training.site",
        "fedkper_monai.training.tasks",
        "fedkper_monai.metrics_schema",
        "fedkper_monai.schedule",
        "fedkper_monai.algorithm_registry",
    ]
    script = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & {{'nvflare'}}))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
