"""The DDP rank hand-over: extra ranks rebuild exactly rank 0's job; rank 0 cleans the launcher's env."""
from __future__ import annotations

import json
import os
import sys

from peephole_lstm.training import ddp


def test_extra_rank_argv_is_rank0s_job(monkeypatch):
    job = {"run_dir": "/runs/a b/0", "overrides": ["model.peephole=full", "seed=1"], "config_name": "train"}
    monkeypatch.setenv(ddp.JOB_ENV, json.dumps(job))
    monkeypatch.setenv("LOCAL_RANK", "1")
    # what Lightning's launcher re-executes for rank 1 of a multirun job: the whole sweep command line
    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "model.peephole=none,full", "seed=0,1",
                                      'hydra.run.dir="outputs/x"', "hydra.output_subdir=null"])
    ddp.rewrite_child_argv()
    assert sys.argv == ["train.py", "--config-name", "train", "model.peephole=full", "seed=1",
                        'hydra.run.dir="/runs/a b/0"', "hydra.output_subdir=null", "hydra.job.name=ddp_rank1"]


def test_rank0_keeps_its_argv(monkeypatch):
    monkeypatch.setenv(ddp.JOB_ENV, json.dumps({"run_dir": "x", "overrides": []}))
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "seed=0,1"])
    ddp.rewrite_child_argv()
    assert sys.argv == ["train.py", "-m", "seed=0,1"]


def test_ddp_job_restores_the_launcher_environment(monkeypatch):
    for var in ("LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", ddp.JOB_ENV):
        monkeypatch.delenv(var, raising=False)
    with ddp.ddp_job("/runs/0", ["seed=0"]):
        assert json.loads(os.environ[ddp.JOB_ENV])["overrides"] == ["seed=0"]
        os.environ.update(LOCAL_RANK="0", WORLD_SIZE="2", MASTER_PORT="12345")  # as Lightning's launcher does
    # left set, LOCAL_RANK would make Lightning assume the next job's ranks already exist
    assert not {"LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", ddp.JOB_ENV} & set(os.environ)
