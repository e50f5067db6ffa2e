"""Read an offline W&B run from disk, with no network and no W&B account: what a job logged, before syncing.

wandb >= 0.18 writes runs from its Go core and ships no Python reader for `run-<id>.wandb`. That file is
a LevelDB-style log: a 7-byte header (b":W&B", magic 0xBEE1, version), then 32 KiB blocks of chunks, each
with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last; a block tail too short for
a header is zero padding); the assembled payloads are `wandb_internal_pb2.Record` protobufs.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

_BLOCK = 32768
_CHUNK = struct.Struct("<IHB")  # crc32, length, chunk type
_FILE_HEADER = struct.Struct("<4sHB")  # b":W&B", magic, version
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator:
    """The `Record` protobufs of one `run-<id>.wandb` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, _ = _FILE_HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B run file (header {data[:7]!r})")
    pos, pending = _FILE_HEADER.size, b""
    while pos + _CHUNK.size <= len(data):
        tail = _BLOCK - pos % _BLOCK
        if tail < _CHUNK.size:
            pos += tail
            continue
        _, length, kind = _CHUNK.unpack_from(data, pos)
        if kind == 0:  # preallocated, not yet written
            break
        chunk = data[pos + _CHUNK.size : pos + _CHUNK.size + length]
        pos += _CHUNK.size + length
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


@dataclass
class OfflineRun:
    """What one offline W&B run recorded."""

    path: Path  # the offline-run-* directory
    run_id: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)  # top-level key -> value (nested dicts as logged)
    summary: dict = field(default_factory=dict)  # final values, nested keys joined with "/"
    history_keys: set[str] = field(default_factory=set)
    history_rows: int = 0
    exit_code: Optional[int] = None  # None: the run never finished (killed, or still running)

    @property
    def config_keys(self) -> set[str]:
        return set(self.config)


def _key(update) -> str:
    return update.key or "/".join(update.nested_key)


def read_offline_run(run_dir: Path) -> OfflineRun:
    """`run_dir` is one `wandb/offline-run-*` directory."""
    (log,) = Path(run_dir).glob("run-*.wandb")
    run = OfflineRun(path=Path(run_dir))
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.group, run.job_type, run.tags = r.run_id, r.run_group, r.job_type, list(r.tags)
            run.config.update({_key(u): json.loads(u.value_json) for u in r.config.update})
        elif kind == "config":
            run.config.update({_key(u): json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            run.history_rows += 1
            run.history_keys.update(_key(item) for item in record.history.item)
        elif kind == "summary":
            run.summary.update({_key(u): json.loads(u.value_json) for u in record.summary.update})
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def offline_runs(job_dir: Path) -> list[OfflineRun]:
    """Every offline W&B run of a job (or run) directory: <job_dir>/wandb/offline-run-*."""
    return [read_offline_run(d) for d in sorted(Path(job_dir).glob("wandb/offline-run-*"))]
