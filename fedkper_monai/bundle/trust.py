"""A bundle is code: find the entries of a MONAI bundle config that import modules, before MONAI runs any.

MONAI's ``ConfigParser`` runs a bundle's config: ``$`` entries are Python expressions (``eval`` with the
builtins and the globals ``monai``, ``torch``, ``np``/``numpy``), ``$import x`` / ``$from x import y``
entries import modules (every one of them, wherever it sits, before the first entry is resolved),
``_target_`` imports the module of the class it names, and ``%file#id`` macros pull in another file. So
``predict --model BUNDLE`` runs whatever the bundle says. :func:`untrusted_entries` finds the entries that
reach a module the config was not given, which is where a hostile config gets to the operating system:

- an import of a module outside :data:`ALLOWED_IMPORTS` (``$import os``; our exported bundles import
  ``csv``, ``pathlib`` and ``collections``);
- a name that imports or evaluates by string (``__import__``, ``eval``, ``exec``, ``getattr`` with a computed
  name, ...) or a dunder name or attribute (``().__class__.__subclasses__()``);
- an attribute path from a given module to a module outside it (``torch.os``, ``pathlib.os``), or to the
  parts that load code (``torch.hub``, ``monai.bundle``, ``optional_import``, ``load_library``, ...);
- unpickling switched on (``weights_only=False``, ``allow_pickle=True``, ``pickle_module=``);
- a ``_target_`` outside ``torch``/``monai``/``numpy`` (``os.system``, a bundle's own ``scripts.net.Net``);
- a macro naming another file.

It is a tripwire, not a sandbox: an expression without imports can still, say, write a file with ``open``.
A bundle from a source you do not trust should not be run at all; ``--trust-bundle`` says you trust it.
"""

from __future__ import annotations

import ast
import importlib
import re
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fedkper_monai.errors import FedKPerError

__all__ = ["ALLOWED_IMPORTS", "EXPRESSION_GLOBALS", "check_bundle_trust", "untrusted_entries"]

#: The modules MONAI's ConfigParser gives every expression (its ``_default_globals``).
EXPRESSION_GLOBALS = {"monai": "monai", "torch": "torch", "np": "numpy", "numpy": "numpy"}
#: Modules a config may import without ``--trust-bundle``: MONAI's own and standard modules that hold data
#: helpers only (a path into another module from them, like ``pathlib.os``, is still refused).
ALLOWED_IMPORTS = frozenset({
    "monai", "torch", "numpy", "collections", "csv", "pathlib", "glob", "json", "math", "re", "copy",
    "functools", "itertools", "numbers", "string", "typing", "datetime",
})
# Names that import, evaluate or reach attributes by string.
_REFUSED_NAMES = frozenset({
    "__import__", "eval", "exec", "compile", "globals", "locals", "vars", "breakpoint", "help", "importlib",
    "os", "sys", "subprocess", "builtins", "pickle",
})
# Attributes that import or load code (with leading underscores stripped: ``_sys`` is ``sys``).
_REFUSED_ATTRIBUTES = frozenset({
    "os", "sys", "subprocess", "builtins", "importlib", "runpy", "ctypes", "pty", "socket", "shutil", "pickle",
    "marshal", "multiprocessing", "posix", "nt", "pdb", "pydoc", "pkgutil", "import_module", "optional_import",
    "locate", "instantiate", "load_library", "load_inline", "load_submodules", "system", "popen", "spawn",
    "hub", "cpp_extension", "package", "ctypeslib", "f2py", "distutils", "bundle", "apps",
})
_STRING_ATTRIBUTE_CALLS = frozenset({"getattr", "hasattr", "setattr", "delattr"})
_REFERENCE = re.compile(r"@\w*(?:(?:#|::)\w*)*")


def _expression_problem(text: str, bound: dict[str, str]) -> str | None:
    """Why the ``$`` expression ``text`` (without the ``$``) is an import, or None.

    ``bound`` maps the module names the config's expressions see to their modules; an allowed ``$import``
    adds to it.
    """
    code = _REFERENCE.sub("_ref", text)  # "@network_def" is an entry of the config: an object, not a module
    try:
        tree = ast.parse(code.strip())
    except SyntaxError:
        return "is not a Python expression this check can read"
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    for node in imports:
        for alias in node.names:
            name = f"{node.module}.{alias.name}" if isinstance(node, ast.ImportFrom) else alias.name
            parts = name.split(".")
            if parts[0] not in ALLOWED_IMPORTS or {part.lstrip("_") for part in parts} & _REFUSED_ATTRIBUTES:
                return f"imports module {name}"
            if isinstance(node, ast.Import):
                bound[alias.asname or parts[0]] = name if alias.asname else parts[0]
            else:
                bound[alias.asname or alias.name] = name  # a module or a class: _dotted_problem finds which
    if imports:
        return None
    problems = [problem for node in ast.walk(tree) if (problem := _node_problem(node, bound))]
    return "; ".join(dict.fromkeys(problems)) or None


def _node_problem(node: ast.AST, bound: Mapping[str, str]) -> str | None:
    if isinstance(node, ast.Name) and (node.id in _REFUSED_NAMES or node.id.startswith("__")):
        return f"uses {node.id}"
    if isinstance(node, ast.Attribute):
        if node.attr.startswith("__") or node.attr.lstrip("_") in _REFUSED_ATTRIBUTES:
            return f"reaches .{node.attr}"
        return _module_path_problem(node, bound)
    if isinstance(node, ast.Call):
        return _call_problem(node)
    return None


def _call_problem(node: ast.Call) -> str | None:
    name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
    if name in _STRING_ATTRIBUTE_CALLS:
        attribute = node.args[1] if len(node.args) > 1 else None
        if not (isinstance(attribute, ast.Constant) and isinstance(attribute.value, str)):
            return f"calls {name} with a computed attribute name"
        if attribute.value.startswith("__") or attribute.value.lstrip("_") in _REFUSED_ATTRIBUTES:
            return f"reaches .{attribute.value} through {name}"
    for keyword in node.keywords:
        if keyword.arg is None and name in ("load", "loads"):
            return f"passes **options to {name}"
        if keyword.arg == "pickle_module" or (
            keyword.arg in ("weights_only", "allow_pickle")
            and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is (keyword.arg == "weights_only"))
        ):
            return f"switches on unpickling ({keyword.arg}=...), which runs code from the file"
    if name in ("load", "loads") and len(node.args) > 2:
        return f"passes unpickling options to {name} by position"
    return None


def _module_path_problem(node: ast.Attribute, bound: Mapping[str, str]) -> str | None:
    """A dotted path from a given module (``torch.os``) that leaves it for another module."""
    parts: list[str] = []
    current: ast.AST = node
    while isinstance(current, ast.Attribute):
        parts.insert(0, current.attr)
        current = current.value
    if not isinstance(current, ast.Name) or current.id not in bound:
        return None
    return _dotted_problem(bound[current.id], parts)


def _dotted_problem(module_name: str, parts: list[str]) -> str | None:
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError:  # "pathlib.Path" from "from pathlib import Path": start from its module
        module_name, _, name = module_name.rpartition(".")
        try:
            value = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError, ValueError):
            return None  # the expression fails when it runs
    root = module_name.split(".")[0]
    for part in parts:
        if not isinstance(value, types.ModuleType):
            return None
        value = getattr(value, part, None)
        if isinstance(value, types.ModuleType) and value.__name__.split(".")[0] != root:
            return f"reaches module {value.__name__} through {module_name}.{'.'.join(parts)}"
    return None


def _target_problem(target: str) -> str | None:
    """Why a ``_target_`` is an import: outside torch, monai and numpy, or a part that loads code."""
    if target.startswith(("$", "@", "%")):
        return None  # an expression or reference: checked as one
    parts = target.split(".")
    if set(part.lstrip("_") for part in parts) & _REFUSED_ATTRIBUTES or any(p.startswith("__") for p in parts):
        return f"instantiates {target}"
    if len(parts) == 1:  # a MONAI component name: ConfigParser looks it up among monai's classes and functions
        from monai.bundle.config_item import ComponentLocator

        found = ComponentLocator().get_component_module_name(target) or []
        for module in [found] if isinstance(found, str) else found:
            if module.split(".")[1:2] in (["bundle"], ["apps"]):  # runs other configs, downloads bundles
                return f"instantiates {module}.{target}"
        return None
    if parts[0] not in ("torch", "monai", "numpy"):
        return f"imports module {parts[0]} to instantiate {target}"
    return _dotted_problem(parts[0], parts[1:])


def _strings(config: Any, path: str) -> Iterator[tuple[str, Any, bool]]:
    """``(entry path, value, is a _target_)`` of every string in a config (``network_def#features#0``)."""
    if isinstance(config, Mapping):
        for key, value in config.items():
            child = f"{path}#{key}" if path else str(key)
            if key == "_target_" and isinstance(value, str):
                yield child, value, True
            else:
                yield from _strings(value, child)
    elif isinstance(config, (list, tuple)):
        for index, value in enumerate(config):
            yield from _strings(value, f"{path}#{index}" if path else str(index))
    elif isinstance(config, str):
        yield path, config, False


def untrusted_entries(config: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(entry path, value, why)`` of every entry of a bundle config that imports (see the module docstring)."""
    bound = dict(EXPRESSION_GLOBALS)
    found = []
    entries = list(_strings(config, ""))
    # MONAI runs every import entry first, wherever it sits: bind the allowed ones before the others are read.
    ordered = sorted(entries, key=lambda entry: not (entry[1].startswith("$") and "import" in entry[1]))
    for path, value, is_target in ordered:
        if is_target:
            problem = _target_problem(value)
        elif value.startswith("$"):
            problem = _expression_problem(value[1:], bound)
        elif value.startswith("%") and value[1:].split("#")[0].split("::")[0]:
            problem = "pulls in config from another file"
        else:
            problem = None
        if problem:
            found.append((path, value, problem))
    return found


def check_bundle_trust(config_files: list[Path], *, trust: bool) -> None:
    """Refuse a bundle whose config files import modules, unless ``trust`` (``--trust-bundle``).

    Args:
        config_files: the files ConfigParser reads (``configs/inference.json``; ``metadata.json`` as ``_meta_``).
        trust: the user trusts this bundle: nothing is checked.

    Raises:
        FedKPerError: naming the file, the entry's config path, its value and why it is an import.
    """
    import json

    if trust:
        return
    for path in config_files:
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise FedKPerError(f"{path}: cannot read the bundle config: {error}") from None
        found = untrusted_entries(config if isinstance(config, Mapping) else {})
        if found:
            entry, value, why = found[0]
            shown = value if len(value) <= 80 else value[:77] + "..."
            raise FedKPerError(
                f"{path}: {entry}: {shown!r} {why}: a bundle config is code and this one reaches beyond torch, monai "
                f"and numpy ({len(found)} such entr{'y' if len(found) == 1 else 'ies'}); pass --trust-bundle to run a "
                "bundle whose source you trust"
            )
