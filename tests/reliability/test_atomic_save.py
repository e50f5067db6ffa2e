"""Checkpoint writes are all-or-nothing: a save that fails or is SIGKILLed midway leaves the previous
last.ckpt intact and loadable, and the stale temp file is cleaned up by the next save."""
from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch

from peephole_lstm.training.checkpointing import AtomicCheckpointIO, load_file
from tests.helpers.scripts import start_script


class ExplodesWhenPickled:
    def __reduce__(self):
        raise OSError("No space left on device (simulated)")


def _v1(path):
    AtomicCheckpointIO().save_checkpoint({"version": 1, "state_dict": {"w": torch.arange(10.0)}}, path)


def test_a_save_that_fails_midway_keeps_the_previous_checkpoint(tmp_path):
    last = tmp_path / "checkpoints" / "last.ckpt"
    _v1(last)
    poisoned = {"version": 2, "state_dict": {"w": torch.zeros(1_000_000)}, "extra": ExplodesWhenPickled()}
    with pytest.raises(OSError, match="simulated"):
        AtomicCheckpointIO().save_checkpoint(poisoned, last)
    checkpoint = AtomicCheckpointIO().load_checkpoint(last)
    assert checkpoint["version"] == 1 and torch.equal(checkpoint["state_dict"]["w"], torch.arange(10.0))
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]  # no temp file left behind


WRITER = """
import sys, torch
from peephole_lstm.training.checkpointing import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
io.save_checkpoint({"version": 1, "state_dict": {"w": torch.arange(10.0)}}, path)
print("saved v1", flush=True)
big = {"version": 2, "state_dict": {"w": torch.randn(10_000_000)}}  # 40 MB: long enough to be killed in
while True:
    io.save_checkpoint(big, path)
"""


@pytest.mark.slow
def test_sigkill_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    last = tmp_path / "last.ckpt"
    proc = start_script("-c", WRITER, last, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saved v1"
    deadline = time.monotonic() + 120
    partial = []
    while not partial and time.monotonic() < deadline:
        partial = [p for p in tmp_path.glob(".last.ckpt.*.tmp") if p.stat().st_size > 1_000_000]
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial, "the writer never got into a save"
    leftovers = list(tmp_path.glob(".last.ckpt.*.tmp"))
    if leftovers:  # killed mid-write (the usual case): a half-written file exists, but not under the real name
        assert leftovers[0].stat().st_size < 40_000_000
    checkpoint = load_file(last)
    # Either the old checkpoint or a complete new one, never a torn file.
    assert checkpoint["version"] in (1, 2)
    assert checkpoint["state_dict"]["w"].numel() == (10 if checkpoint["version"] == 1 else 10_000_000)

    AtomicCheckpointIO().save_checkpoint({"version": 3}, last)  # the next save removes stale temp files
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert load_file(last)["version"] == 3
