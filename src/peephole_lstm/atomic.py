"""One way to write a file that a kill or a full disk cannot leave half-written, for every file a run
keeps (checkpoints, results.json, the parsed-data caches).

`atomic_write` writes a temp file next to the target (`.<name>.<random>.tmp`, so the rename stays on one
file system), fsyncs it and renames it over the target: a reader, another job of a multirun included,
sees the old file or the new one, never part of one. Temp files left by a write that was killed are
removed by the next write of the same target.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def temp_prefix(path: Path) -> str:
    return f".{path.name}."


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call write(binary file) on a temp file beside `path`, fsync it, rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{temp_prefix(path)}*.tmp"):  # left by a write that was killed
        with contextlib.suppress(OSError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The rename itself is only durable once the directory entry is on disk.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
