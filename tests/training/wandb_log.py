"""Read the records of an offline W&B run file (run-<id>.wandb) without network or wandb-core.

The file is a LevelDB-style log (wandb's own format): a 7-byte header, then 32 KiB blocks of chunks,
each with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last); every assembled
record is a protobuf `wandb.proto.wandb_internal_pb2.Record`.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7


def records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            full = chunk
        elif kind == 2:
            pending = chunk
            continue
        elif kind == 3:
            pending += chunk
            continue
        else:
            full = pending + chunk
        record = pb.Record()
        record.ParseFromString(full)
        yield record


def summary(path: Path) -> dict:
    """{"run": the run record, "config": merged config, "exit_code", "history_keys", "summary"} of a run file."""
    out = {"run": None, "config": {}, "exit_code": None, "history_keys": set(), "summary": {}}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["run"] = r.run
            out["config"].update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "history":
            out["history_keys"].update(item.key or "/".join(item.nested_key) for item in r.history.item)
        elif kind == "summary":
            out["summary"].update({(u.key or "/".join(u.nested_key)): json.loads(u.value_json) for u in r.summary.update})
        elif kind == "exit":
            out["exit_code"] = r.exit.exit_code
    return out
