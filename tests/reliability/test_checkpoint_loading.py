"""Hostile or broken checkpoint files give a clear error naming the file, through eval.py and through a
`ckpt_path` resume, and a pickle that would run code is refused without running it."""
from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

from peephole_lstm.training import evaluate, train
from peephole_lstm.training.checkpointing import AtomicCheckpointIO, CheckpointError
from tests.helpers.configs import TINY_CSV, compose_config
from tests.helpers.scripts import run_script

CORRUPT = "is truncated, corrupt or not a PyTorch checkpoint"


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A real checkpoint written by train(), and broken or hostile files next to it."""
    root = tmp_path_factory.mktemp("checkpoints")
    cfg = compose_config("train", [*TINY_CSV, "test=false"], output_dir=root / "run")
    train(cfg)
    real = (root / "run" / "checkpoints" / "last.ckpt").read_bytes()
    marker = root / "CODE_RAN"
    paths = {"real": root / "run" / "checkpoints" / "last.ckpt", "marker": marker}
    for name, content in {"truncated": real[: len(real) // 2], "random": os.urandom(4096), "empty": b"",
                          "pickle": pickle.dumps({"state_dict": RunsCode(marker)})}.items():
        paths[name] = root / f"{name}.ckpt"
        paths[name].write_bytes(content)
    paths["torch_pickle"] = root / "torch_pickle.ckpt"
    torch.save({"state_dict": RunsCode(marker), "epoch": 0}, paths["torch_pickle"])
    paths["foreign"] = root / "foreign.ckpt"
    torch.save(nn.Linear(3, 2).state_dict(), paths["foreign"])
    return paths


# (file, what the error says in eval.py, what it says on resume)
CASES = [
    ("truncated", CORRUPT, CORRUPT),
    ("random", CORRUPT, CORRUPT),
    ("empty", "is empty (0 bytes)", "is empty (0 bytes)"),
    ("pickle", CORRUPT, CORRUPT),
    ("torch_pickle", "refers to posix.system, which is code", "refers to posix.system, which is code"),
    ("foreign", "is not a checkpoint written by train.py (no run_config)",
     "is not a checkpoint written by train.py (missing state_dict, epoch, global_step, loops, optimizer_states, run_config; "
     "it has: weight, bias)"),
]


def _eval_cfg(path, run_dir):
    return compose_config(
        "eval", [f"ckpt_path={path}", "logger=none", "callbacks=none", "extras.print_config=false"], output_dir=run_dir)


# The fast lane: one file of the three that get the "corrupt" message ("truncated"; torch_pickle is its file
# that would run code); "random" and "pickle" run in the full suite.
@pytest.mark.parametrize("name,in_eval,on_resume",
                         [pytest.param(*c, marks=pytest.mark.slow) if c[0] in ("random", "pickle") else c for c in CASES])
def test_bad_checkpoint_gives_a_clear_error_in_eval_and_on_resume(files, tmp_path, name, in_eval, on_resume):
    path = files[name]
    with pytest.raises(CheckpointError if name != "foreign" else ValueError) as e:
        evaluate(_eval_cfg(path, tmp_path / "eval"))
    assert f"ckpt_path={str(path)!r}" in str(e.value) and in_eval in str(e.value)

    cfg = compose_config("train", [*TINY_CSV, f"ckpt_path={path}"], output_dir=tmp_path / "train")
    with pytest.raises(CheckpointError) as e:
        train(cfg)
    assert f"ckpt_path={str(path)!r}" in str(e.value) and on_resume in str(e.value)
    assert not (tmp_path / "train" / "checkpoints").exists()  # failed before training
    assert not files["marker"].exists()


def test_lightning_loads_go_through_weights_only_whatever_the_caller_asks(files):
    with pytest.raises(CheckpointError, match="refers to posix.system"):
        AtomicCheckpointIO().load_checkpoint(files["torch_pickle"], weights_only=False)
    assert not files["marker"].exists()
    assert AtomicCheckpointIO().load_checkpoint(files["real"])["epoch"] == 1  # a real one loads


@pytest.mark.slow
@pytest.mark.parametrize("script,overrides", [
    ("eval.py", ["logger=none"]),
    ("train.py", TINY_CSV),
])
def test_a_checkpoint_that_would_run_code_is_refused_by_the_scripts(files, tmp_path, script, overrides):
    proc = run_script(script, *overrides, f"ckpt_path={files['torch_pickle']}", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode != 0
    assert f"ckpt_path={str(files['torch_pickle'])!r} was not loaded: it refers to posix.system" in proc.stderr
    assert not files["marker"].exists()
