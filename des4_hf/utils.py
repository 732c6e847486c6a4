"""Small helpers every layer uses: the one way this package writes a file, and where it caches derived files."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block succeeds, fsync it and rename it onto ``path``.

    Readers see the old file or the new one, never a partial one, and a failed write leaves no temporary.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; the result is readable like any other file
        os.replace(temporary, path)
        fsync_directory(path.parent)  # the rename itself survives a power cut
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def fsync_directory(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (new names, renames) to disk; a no-op where folders cannot be opened (Windows)."""
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def fsync_tree(folder: str | os.PathLike[str]) -> None:
    """Flush every file under ``folder``, then the folders themselves: what a checkpoint needs before it is marked
    complete, so that a crash never leaves a "complete" checkpoint with data still in the page cache."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as stream:
                os.fsync(stream.fileno())
        fsync_directory(root)


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Indented JSON (numpy/torch scalars as floats) through :func:`atomic_write`."""
    return atomic_write(path, json.dumps(payload, indent=2, default=float) + "\n")


def des4_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where derived files go (converted weights, Cityscapes train-id masks), never a possibly read-only source:
    ``cache_dir``, ``$DES4_CACHE``, ``$HF_HOME/des4_hf``, ``$XDG_CACHE_HOME/des4_hf`` or ``~/.cache/des4_hf``."""
    if cache_dir is not None or os.environ.get("DES4_CACHE"):
        return Path(cache_dir if cache_dir is not None else os.environ["DES4_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(home).expanduser() / "des4_hf"
