"""DDP inside a multirun, and the submitit launcher with a real preemption, requeue and resume."""
from __future__ import annotations

import json
import os
import textwrap

import pytest
import submitit
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
from omegaconf import OmegaConf

from peephole_lstm.sweeps import discover_jobs, group_jobs
from peephole_lstm.sweeps.launcher import record_lost_job, resume_overrides
from peephole_lstm.training import register_configs
from peephole_lstm.training.wandb_offline import offline_runs
from tests.helpers.configs import TINY_SWEEP
from tests.helpers.scripts import ROOT, explain, job_dirs, results, run_sweep


@pytest.mark.slow
def test_ddp_cpu_inside_multirun_gives_one_run_dir_and_one_wandb_run_per_job(tmp_path):
    proc = run_sweep("-m", "trainer=ddp_cpu", "trainer.devices=2", "model.peephole=none,full", *TINY_SWEEP, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    # rank 1 of each job joins rank 0's run dir: no extra job dirs, no outputs/ of its own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]
    jobs = job_dirs(tmp_path / "sweep")
    assert [j.name for j in jobs] == ["0", "1"]
    for job, peephole in zip(jobs, ["none", "full"]):
        res = results(job)
        assert res["status"] == "completed", res["error"]
        assert f"model.peephole={peephole}" in res["overrides"]
        assert (job / "ddp_rank1.log").is_file()  # rank 1 really ran, in this job's dir
        (run,) = offline_runs(job)  # rank 1 created no W&B run
        assert run.run_id == res["wandb"]["id"] and run.exit_code == 0
        assert "test/nrmse" in run.summary
    assert len({results(j)["wandb"]["id"] for j in jobs}) == 2


PREEMPT = textwrap.dedent('''
    """Preempts its job once, as SLURM would: the requeue signal once the first epoch is checkpointed."""
    import os
    import signal
    from pathlib import Path

    from lightning.pytorch.callbacks import Callback


    class PreemptOnce(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            marker = Path(trainer.default_root_dir) / "preempted_at_epoch"
            if trainer.current_epoch >= 1 and not marker.exists():
                marker.write_text(str(trainer.current_epoch))
                os.kill(os.getpid(), signal.SIGUSR2)  # submitit's preemption/timeout signal
''')


@pytest.mark.slow
def test_local_submitit_multirun_requeues_a_preempted_job_and_resumes_from_last_ckpt(tmp_path):
    (tmp_path / "preempt_once.py").write_text(PREEMPT)
    proc = run_sweep(
        "-m", "hydra/launcher=local", "model.peephole=none,full", *TINY_SWEEP, "trainer.max_epochs=2",
        "+callbacks.preempt._target_=preempt_once.PreemptOnce",
        cwd=tmp_path, pythonpath=[tmp_path], sweep_dir=False,  # Hydra's timestamped sweep dir
    )
    assert proc.returncode == 0, explain(proc)
    (sweep,) = tmp_path.glob("multirun/*/*")
    jobs = job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1"]  # the requeued jobs came back to their own run dirs
    submitit_logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.*"))  # Hydra logs to stdout
    for job in jobs:
        res = results(job)
        assert res["status"] == "completed", res["error"]
        assert (job / "preempted_at_epoch").read_text() == "1"
        last = job / "checkpoints" / "last.ckpt"
        assert "ckpt_path=last" in res["overrides"]  # added by the launcher on requeue
        assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1  # both epochs done
        assert f"Restoring states from the checkpoint path at {last.resolve()}" in submitit_logs  # resumed
        runs = offline_runs(job)
        assert len(runs) == 2  # the interrupted attempt and the resumed one ...
        assert {r.run_id for r in runs} == {res["wandb"]["id"]}  # ... are one W&B run
        assert [r.exit_code for r in runs] == [1, 0]
    # the resume override does not split a job from its variant in the report
    variants, varying = group_jobs(discover_jobs(sweep))
    assert [v.label for v in variants] == ["model.peephole=none", "model.peephole=full"] and varying == ["model.peephole"]


def test_resume_override_only_once_a_last_checkpoint_exists(tmp_path):
    overrides = ["model.peephole=full", "ckpt_path=/elsewhere/x.ckpt", "seed=1"]
    assert resume_overrides(overrides, str(tmp_path)) == overrides  # nothing to resume yet: restart as submitted
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resume_overrides(overrides, str(tmp_path)) == ["model.peephole=full", "seed=1", "ckpt_path=last"]
    assert resume_overrides(overrides, None) == overrides


def test_a_lost_job_is_recorded_as_failed_and_a_completed_one_is_kept(tmp_path):
    lost = tmp_path / "0"  # killed before writing anything: the launcher writes its results.json
    record_lost_job(str(lost), ["seed=3"], 3, "42_0", "ended CANCELLED without a result")
    res = results(lost)
    assert (res["status"], res["error"], res["seed"], res["overrides"]) == (
        "failed", "job 42_0 ended CANCELLED without a result", 3, ["seed=3"])
    # a job that recorded its own failure keeps its metrics and W&B run; its error follows ours
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "results.json").write_text(json.dumps(
        {"status": "failed", "error": "NonFiniteError: boom", "metrics": {"val/loss": 0.5}, "seed": 1,
         "wandb": {"id": "abc"}}))
    record_lost_job(str(tmp_path / "1"), ["seed=1"], 1, "42_1", "ended TIMEOUT without a result")
    res = results(tmp_path / "1")
    assert res["error"] == "job 42_1 ended TIMEOUT without a result; the job recorded: NonFiniteError: boom"
    assert res["metrics"] == {"val/loss": 0.5} and res["wandb"] == {"id": "abc"}
    # one that completed (killed after finishing) is left as it is
    done = json.dumps({"status": "completed", "error": None, "metrics": {"val/loss": 0.1}})
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "results.json").write_text(done)
    record_lost_job(str(tmp_path / "2"), ["seed=2"], 2, "42_2", "ended CANCELLED without a result")
    assert (tmp_path / "2" / "results.json").read_text() == done


def _launcher_config(launcher: str) -> dict:
    """`hydra.launcher` as `python train.py -m hydra/launcher=<launcher>` composes it (unresolved)."""
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", return_hydra_config=True, overrides=[f"hydra/launcher={launcher}"])
    finally:
        GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg.hydra.launcher)


def test_our_launchers_extend_the_plugins_configs():
    """conf/hydra/launcher/{local,slurm}.yaml are hydra-submitit-launcher's configs plus our changes, so a
    key the plugin adds or a default it changes reaches them."""
    plugin = OmegaConf.to_container(OmegaConf.structured(LocalQueueConf))
    ours = {"_target_": "hydra_plugins.peephole_lstm_launcher.ResumingLocalLauncher", "cpus_per_task": 1,
            "gpus_per_node": 0}
    assert _launcher_config("local") == {**plugin, **ours}
    assert _launcher_config("submitit_local") == plugin  # the plugin's own config is not shadowed
    slurm = _launcher_config("slurm")
    assert slurm.keys() == OmegaConf.structured(SlurmQueueConf).keys()
    assert slurm["_target_"] == "hydra_plugins.peephole_lstm_launcher.ResumingSlurmLauncher"


def _render_sbatch(tmp_path, monkeypatch, overrides: list[str]) -> tuple[str, dict]:
    """The sbatch script `hydra/launcher=slurm` submits for `overrides`, and the composed config."""
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", return_hydra_config=True,
                          overrides=["hydra/launcher=slurm", *overrides, f"hydra.sweep.dir={tmp_path}"])
    finally:
        GlobalHydra.instance().clear()
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_") == "hydra_plugins.peephole_lstm_launcher.ResumingSlurmLauncher"
    # submitit refuses to build a SLURM executor without srun on PATH; this one is never run
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    # the parameter mapping of hydra_submitit_launcher's BaseSubmititLauncher.launch
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return executor._executor._make_submission_file_text("python -m submitit.core._submit x", "uid"), cfg


def test_slurm_launcher_config_gives_one_task_and_gpu_per_device_and_a_requeue_signal(tmp_path, monkeypatch):
    sbatch, _ = _render_sbatch(tmp_path, monkeypatch, ["trainer=ddp", "trainer.devices=4",
                                                       "hydra.launcher.partition=gpu"])
    for line in ["--gpus-per-node=4", "--ntasks-per-node=4", "--nodes=1", "--partition=gpu", "--signal=USR2@120",
                 "--time=240"]:
        assert f"#SBATCH {line}\n" in sbatch


NCCL = ["export NCCL_SOCKET_IFNAME=ib0", "export NCCL_DEBUG=WARN"]


def test_slurm_multinode_settings_give_n_nodes_of_g_ranks_and_lightning_agrees(tmp_path, monkeypatch):
    """docs/clusters.md's N nodes x G GPUs recipe (N=2, G=4): the sbatch script and the ranks Lightning derives."""
    sbatch, cfg = _render_sbatch(tmp_path, monkeypatch, [
        "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "hydra.launcher.partition=gpu",
        "hydra.launcher.setup=[" + ",".join(f'"{line}"' for line in NCCL) + "]"])
    for line in ["--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=4", "--signal=USR2@120"]:
        assert f"#SBATCH {line}\n" in sbatch
    # the NCCL settings are exported in the batch script, before srun starts the 8 tasks
    body = sbatch.split("# setup\n", 1)[1]
    assert body.index(NCCL[0]) < body.index(NCCL[1]) < body.index("srun ")

    # What SLURM hands task 5 (node 1, local task 1) of that job; Lightning takes its ranks and the main
    # node from it (MASTER_ADDR/MASTER_PORT need no setting).
    # Lightning's SLURMEnvironment exports MASTER_ADDR/MASTER_PORT into os.environ: setting each first makes
    # monkeypatch restore (remove) it afterwards, so no later test or job inherits gpu01.
    for var in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[01-02]")
    monkeypatch.setenv("SLURM_NODELIST", "gpu[01-02]")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    import lightning.pytorch as pl
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    # The Trainer records its global rank (5) in this process-wide setting, which makes every later
    # logger in this process a rank-5 dummy: restore it afterwards.
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)

    trainer_cfg = OmegaConf.to_container(cfg.trainer)
    trainer_cfg.pop("_target_")
    # this machine has no GPUs; the run dir comes from Hydra's runtime, not composed here
    trainer_cfg.update(accelerator="cpu", default_root_dir=str(tmp_path))
    trainer = pl.Trainer(**trainer_cfg, logger=False, enable_checkpointing=False)
    env = trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment)
    assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (2, 4, 8)
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank) == (5, 1, 1)
    assert env.main_address == "gpu01"
