"""Run-file helpers: atomic writes and validated JSON reads.

Writes go to a temporary file in the target's folder, renamed over the final name, so an
interruption never leaves a half-written file under a final name (the temporary file is removed on
error). Files get ordinary permissions (0666 minus the umask), not mkstemp's 0600. JSON files that
pgolf reads back (summary, audit, manifest) must hold an object; anything else is an InputError
naming the file.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pgolf.errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` (suffix keeps e.g. '.png')."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Indented JSON with sorted keys (deterministic bytes) and a final newline."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json_object(path: str | os.PathLike, missing: dict | None = None) -> dict | None:
    """The JSON object in `path`, or `missing` when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return missing
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a JSON object")
    return obj


def update_json(path: str | os.PathLike, values: dict) -> dict:
    """Merge `values` into the JSON object in `path` (created if absent), atomically; returns it."""
    obj = read_json_object(path, missing={})
    obj.update(values)
    atomic_write_json(path, obj)
    return obj

