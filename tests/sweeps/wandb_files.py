"""Read what an offline W&B run wrote: its run record (group, tags), final summary and exit code.

wandb >= 0.18 writes offline runs from its Go core and ships no Python reader for the
`run-<id>.wandb` file, which is a LevelDB-style log (32 KiB blocks of checksummed chunks) of
`wandb_internal_pb2.Record` protobufs; this is the minimal reader the tests need.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK = 32768
_HEADER = struct.Struct("<IHB")  # crc32, length, chunk type
_FILE_HEADER = struct.Struct("<4sHB")  # b":W&B", magic 0xBEE1, version
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path):
    data = path.read_bytes()
    ident, magic, _ = _FILE_HEADER.unpack_from(data)
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B transaction log"
    pos, pending = _FILE_HEADER.size, b""
    while pos + _HEADER.size <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER.size:  # block tail too small for a header: zero padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = _HEADER.unpack_from(data, pos)
        if kind == 0:  # preallocated / unwritten space
            break
        chunk = data[pos + _HEADER.size: pos + _HEADER.size + length]
        pos += _HEADER.size + length
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


@dataclass
class OfflineRun:
    path: Path
    run_id: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config_keys: set[str] = field(default_factory=set)
    summary: dict = field(default_factory=dict)
    history_rows: int = 0
    exit_code: int | None = None


def read_offline_run(run_dir: Path) -> OfflineRun:
    """`run_dir` is one `wandb/offline-run-*` directory."""
    (log,) = run_dir.glob("run-*.wandb")
    run = OfflineRun(path=run_dir)
    for record in _records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.group, run.tags = record.run.run_id, record.run.run_group, list(record.run.tags)
            run.config_keys |= {u.key for u in record.run.config.update}
        elif kind == "config":
            run.config_keys |= {u.key for u in record.config.update}
        elif kind == "history":
            run.history_rows += 1
        elif kind == "summary":
            for u in record.summary.update:
                run.summary[u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def offline_runs(job_dir: Path) -> list[OfflineRun]:
    return [read_offline_run(d) for d in sorted((job_dir / "wandb").glob("offline-run-*"))]
