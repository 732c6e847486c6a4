"""Which folders a training run may write into, continue or empty (``--resume``, ``--overwrite``).

A run folder is proved by its marker, ``.des4-run.json`` (the run's id), which the trainer writes only once a run has
started: data loaded, model built, any resume accepted. A lock file or a ``train_config.yaml`` proves nothing. A run
folder is continued or emptied only while it holds nothing but what training writes; a claim that is refused, or a
run that fails before it starts, leaves the folder as it found it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import IO, Any

from ..utils import atomic_write_json

MARKER = ".des4-run.json"
LOCK_NAME = ".des4-train.lock"
#: every top-level name training writes into its folder (the trainer, Accelerate, des4-train's figures)
RUN_ENTRIES = frozenset({
    MARKER, LOCK_NAME, "train_config.yaml", "split", "log.jsonl", "checkpoints", "damaged-checkpoints", "eval",
    "best", "last", ".tmp-best", ".tmp-last", ".old-best", ".old-last", "results.json", "cache", "logs", "overlays"})


class OutputDirError(Exception):
    """The output folder cannot be used as asked: reported as one line, exit status 2."""


def read_marker(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run record of ``folder`` (``tool`` and ``run_id``), or None when it holds none that can be read."""
    try:
        record = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    valid = isinstance(record, dict) and record.get("tool") == "des4-train" and isinstance(record.get("run_id"), str)
    return record if valid else None


def write_marker(folder: str | os.PathLike[str]) -> str:
    """Mark ``folder`` as a started run (a resumed run keeps its id); the run id."""
    record = read_marker(folder) or {"tool": "des4-train", "run_id": uuid.uuid4().hex,
                                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(Path(folder) / MARKER, record)
    return record["run_id"]


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


class OutputDirClaim:
    """``output_dir`` held by this process (its lock) until :meth:`release`."""

    def __init__(self, output_dir: Path, handle: IO[str] | None, existed: bool, before: set[str]) -> None:
        self.output_dir, self.handle, self.existed, self.before = output_dir, handle, existed, before

    def release(self) -> None:
        """Unlock; when no run started here (no marker), remove what this claim and the failed start created."""
        if self.handle is None:
            return
        self.handle.close()
        self.handle = None
        if read_marker(self.output_dir) is not None:
            return
        if not self.existed:
            shutil.rmtree(self.output_dir, ignore_errors=True)
            return
        for name in sorted(set(os.listdir(self.output_dir)) - self.before):
            path = self.output_dir / name
            if name in RUN_ENTRIES:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def claim_output_dir(output_dir: str | os.PathLike[str], resuming: bool, overwrite: bool) -> OutputDirClaim:
    """Make ``output_dir`` this run's, or raise :class:`OutputDirError` having changed nothing.

    An empty or missing folder is fresh. A used one is taken only when it is a run folder (its marker) holding
    nothing but what training writes: continued when ``resuming``, emptied with ``overwrite``. The lock refuses a
    second concurrent run; it is taken by the main process only (``RANK`` 0)."""
    output_dir = Path(output_dir)
    main_process = int(os.environ.get("RANK", "0")) == 0
    existed = output_dir.is_dir()
    before = set(os.listdir(output_dir)) if existed else set()
    handle = _lock(output_dir) if main_process and LOCK_NAME in before else None
    try:
        held = sorted(before - {LOCK_NAME})
        if held:
            flag = "--resume" if resuming else "--overwrite"
            if not resuming and not overwrite:
                raise OutputDirError(f"--output-dir {output_dir} already holds files ({_listed(held)}). Continue that "
                                     "run with --resume latest, start over with --overwrite (deletes it), or pick a new "
                                     "folder.")
            if read_marker(output_dir) is None:
                raise OutputDirError(f"{flag}: {output_dir} holds files but no record of a des4-train run ({MARKER}), "
                                     "so it was not made by des4-train and nothing is changed; pick another "
                                     "--output-dir, or empty it yourself.")
            foreign = [name for name in held if name not in RUN_ENTRIES]
            if foreign:
                raise OutputDirError(f"{flag}: {output_dir} holds files des4-train did not write ({_listed(foreign)}); "
                                     "nothing is changed. Move them out of the run folder first.")
            if not resuming and main_process:  # --overwrite of a proved run folder: only what training wrote
                for name in held:
                    path = output_dir / name
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        if main_process and handle is None:
            output_dir.mkdir(parents=True, exist_ok=True)
            handle = _lock(output_dir)
    except BaseException:
        if handle is not None:
            handle.close()
        if main_process and not existed:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    return OutputDirClaim(output_dir, handle, existed, before)


def _lock(output_dir: Path) -> IO[str]:
    handle = open(output_dir / LOCK_NAME, "a")  # noqa: SIM115 - held open for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OutputDirError(f"--output-dir {output_dir}: another training run is writing there. Wait for it to "
                             "finish, or pick another folder.") from None
    return handle
