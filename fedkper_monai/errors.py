"""Errors that users see: each names the file and the field (or entry) that is wrong."""

from __future__ import annotations

import os

__all__ = ["FedKPerError", "DataError"]


class FedKPerError(Exception):
    """Base of every error this package raises on purpose; the CLI prints it without a traceback."""


class DataError(FedKPerError, ValueError):
    """Bad input data: a missing or corrupt file, a wrong schema, a label out of range, ...

    Args:
        path: the file (or folder) that holds the problem.
        message: what is wrong.
        field: the field, key or entry that is wrong (for example ``training[3].label``).

    Example:
        >>> str(DataError("site-1.json", "label 7 is out of range [0, 5)", field="training[3].label"))
        'site-1.json: training[3].label: label 7 is out of range [0, 5)'
    """

    def __init__(self, path: str | os.PathLike, message: str, *, field: str | None = None) -> None:
        self.path = os.fspath(path)
        self.field = field
        self.reason = message
        where = f"{self.path}: {field}: " if field else f"{self.path}: "
        super().__init__(where + message)
