"""The architecture, checked on the source: size limits, the layer order, no import circles, FLARE at the top.

- no module of the package reaches 400 lines;
- no function in the FLARE adapters (``flare/``) is above cyclomatic complexity 15 (they only translate);
- a package imports only the layers below it (``LAYERS``), lazily or not: the ground-floor modules nothing above,
  ``data`` no ``training``, ``flare`` no launcher, the launchers no experiment runner;
- no two modules import each other, directly or round a longer circle;
- ``nvflare`` is imported only by what FLARE loads (``flare/``) and what starts FLARE (``launch/``), and the layers
  below FLARE import without it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from radon.complexity import cc_visit

PACKAGE = Path(__file__).resolve().parents[1] / "fedkper_monai"
MAX_MODULE_LINES = 400
MAX_ADAPTER_COMPLEXITY = 15

# Lowest first; a package may import its own modules and those of any lower layer. Ground-floor modules
# (fedkper_monai/*.py but cli.py) import only each other.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"ground"}),
    frozenset({"algorithm"}),
    frozenset({"data"}),
    frozenset({"training"}),
    frozenset({"bundle", "report"}),  # side by side: neither imports the other
    frozenset({"flare"}),
    frozenset({"launch"}),
    frozenset({"experiment"}),
    frozenset({"cli"}),  # the command line registers every layer's subcommands
)
NVFLARE_PACKAGES = frozenset({"flare", "launch"})


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _package(module: str) -> str:
    """The layer name of a module: its sub-package, ``cli`` for the command line, else ``ground``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "ground"
    if (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "cli" if parts[1] == "cli" else "ground"


def _resolve(name: str) -> str | None:
    """The package module an imported name lives in (``fedkper_monai.data.load_datalist`` -> ``fedkper_monai.data``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path) -> list[str]:
    """Every name ``path`` imports, at module level or inside a function (lazy imports are still arrows)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = {_resolve(name) for name in _imports(path) if name.startswith("fedkper_monai")}
        # "from fedkper_monai.data import x" also names the package itself; keep the most specific module only.
        targets.discard(None)
        graph[module] = {target for target in targets if target != module and not any(
            other != target and other.startswith(target + ".") for other in targets)}
    return graph


def _rank(package: str) -> int:
    return next(index for index, layer in enumerate(LAYERS) if package in layer)


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


def test_every_package_has_a_layer():
    packages = {_package(module) for module in MODULES}
    placed = set().union(*LAYERS)
    assert packages <= placed, f"give these packages a place in LAYERS: {sorted(packages - placed)}"


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """The imports of ``graph`` that point at the module's own layer's neighbour or above."""
    upward = []
    for module, targets in graph.items():
        source = _package(module)
        for target in targets:
            into = _package(target)
            if into != source and _rank(into) >= _rank(source):
                upward.append(f"{module} imports {target} ({source} may not import {into})")
    return sorted(upward)


def _circles(graph: dict[str, set[str]]) -> list[str]:
    """Each import circle of ``graph`` found by a depth-first walk, as ``a -> b -> a``."""
    circles: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return circles


def test_no_arrow_points_up_or_sideways():
    assert not _upward(_graph()), "\n".join(_upward(_graph()))


def test_no_import_circles():
    assert not _circles(_graph()), "\n".join(_circles(_graph()))


def test_the_checks_see_what_they_must_refuse():
    # The graph holds lazy imports (launch.cli imports the simulator inside a function) ...
    assert "fedkper_monai.launch.simulate" in _graph()["fedkper_monai.launch.cli"]
    # ... an arrow up, sideways between bundle and report, and a circle are each refused.
    assert _upward({"fedkper_monai.data.pipeline": {"fedkper_monai.training.loop"}})
    assert _upward({"fedkper_monai.report.runs": {"fedkper_monai.bundle.runs"}})
    assert _upward({"fedkper_monai.io": {"fedkper_monai.data.datalist"}})
    assert not _upward({"fedkper_monai.launch.poc": {"fedkper_monai.flare.jobspec", "fedkper_monai.io"}})
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]


def test_nvflare_is_imported_only_where_flare_runs():
    outside = sorted(
        str(path.relative_to(PACKAGE))
        for module, path in MODULES.items()
        if _package(module) not in NVFLARE_PACKAGES and any(name.split(".")[0] == "nvflare" for name in _imports(path))
    )
    assert not outside, f"nvflare imported outside flare/ and launch/: {outside}"


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
        "fedkper_monai.job_fields",
    ]
    script = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & {{'nvflare'}}))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
