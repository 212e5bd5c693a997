"""Helpers for the report tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest


@pytest.fixture
def write_jsonl() -> Callable[[Path, list[Any]], Path]:
    """Write a metrics file: each item is a JSON-serializable object, or a raw string written as is."""

    def write(path: Path, lines: list[Any]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
        return path

    return write
