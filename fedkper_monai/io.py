"""Atomic file output shared by every layer: nothing is ever left half-written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from fedkper_monai.errors import FedKPerError

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_directory", "OutputExistsError"]


class OutputExistsError(FedKPerError, FileExistsError):
    """An output folder already holds something and the caller did not ask to replace it."""


def _umask() -> int:
    """The process umask (read by setting it, then restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A reader sees either the old file or the complete new one, never a partial write.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp makes the file private (0600); outputs get the usual permissions of a new file.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Serialize ``obj`` as JSON and write it atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


@contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a whole output folder in a temporary sibling and move it into place only on success.

    Yields the temporary folder to write into. On any exception the temporary folder is removed and
    ``path`` is untouched, so a failed command leaves no partial output behind.

    Args:
        path: the final folder.
        overwrite: replace an existing non-empty ``path``; otherwise it is an error.

    Raises:
        OutputExistsError: ``path`` exists, is not empty and ``overwrite`` is False (a ``FileExistsError``).
    """
    target = Path(path)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise OutputExistsError(f"{target}: output folder exists and is not empty (use --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's folder is private (0700)
        yield staging
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(target, backup)
            os.replace(staging, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
