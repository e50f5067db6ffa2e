"""Sweeps on a real SLURM cluster: the one-node cluster of scripts/slurm_cluster.sh (`pytest -k slurm`).

No fake srun: jobs go through sbatch, SLURM starts them (and, for DDP, their ranks), requeues and
cancels them. Without SLURM installed, or without root to start the cluster, these tests skip.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import torch

from peephole_lstm.training.wandb_offline import offline_runs
from tests.helpers.configs import TINY_SWEEP
from tests.helpers.scripts import ROOT, command, explain, job_dirs, results, run_script, script_env

# A real cluster, real sbatch jobs: minutes, not seconds (and a skip where SLURM is missing).
pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "slurm_cluster.sh"
# CPU jobs sized for a small node; two epochs so that a job can be interrupted after the first.
ON_SLURM = ["hydra/launcher=slurm_cpu", *TINY_SWEEP, "trainer.max_epochs=2"]
VARIANTS = "model.peephole=none,full"


def _cluster_answers() -> bool:
    try:
        out = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated", "completing"))


@pytest.fixture(scope="session")
def slurm_cluster():
    """A SLURM cluster that answers: the running one, or the local one started (and stopped) here."""
    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        pytest.skip("SLURM is not installed: apt-get install -y slurm-wlm munge, then scripts/slurm_cluster.sh start")
    started = False
    if not _cluster_answers():
        if os.geteuid() != 0:
            pytest.skip("no SLURM cluster answers, and starting the local one needs root: "
                        "sudo scripts/slurm_cluster.sh start")
        proc = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"the local SLURM cluster did not start: {reason}")
        started = True
    yield
    if started:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120)


def _env(tmp_path: Path) -> dict:
    # The jobs inherit this environment (sbatch --export=ALL): script_env keeps out what another job or
    # DDP run could leak in (SLURM_*, ranks); tmp_path holds the tests' own callback modules.
    return script_env(pythonpath=[tmp_path], full_error=True)


def _train_cmd(*overrides: str, sweep: Path) -> list[str]:
    return command("train.py", "-m", *overrides, f"hydra.sweep.dir={sweep}")


def _sweep(tmp_path: Path, *overrides: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, Path]:
    sweep = tmp_path / "sweep"
    proc = run_script("train.py", "-m", *overrides, f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=timeout,
                      pythonpath=[tmp_path], full_error=True)
    return proc, sweep


def _squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%T", f"--jobs={job_id}"],
                         capture_output=True, text=True)
    return out.stdout.strip()


def _scontrol_job(job_id: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True, check=True)
    return dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)


def _final_job(job_id: str) -> dict:
    """scontrol's record of a job once it has ended: the launcher returns as soon as the job's result is
    written, while SLURM may still show the job RUNNING/COMPLETING until its process has exited (seconds,
    more on a loaded machine)."""
    return _wait_for(lambda: (lambda info: info if info["JobState"] not in ("PENDING", "RUNNING", "COMPLETING")
                              else None)(_scontrol_job(job_id)), f"job {job_id} to end", timeout=120)


def _wait_for(predicate, what: str, timeout: float = 600, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended (exit {proc.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _metrics_equal(res: dict, ref: dict) -> None:
    assert res["metrics"].keys() == ref["metrics"].keys()
    assert res["metrics"] == pytest.approx(ref["metrics"], rel=1e-6, abs=1e-9)


# --- the peephole ablation: one array, every job completed, one run dir, results.json and W&B run each --------


@pytest.fixture(scope="module")
def ablation(slurm_cluster, tmp_path_factory):
    """The uninterrupted sweep; also the reference the interrupted jobs must match."""
    tmp_path = tmp_path_factory.mktemp("ablation")
    proc, sweep = _sweep(tmp_path, *ON_SLURM, VARIANTS)
    assert proc.returncode == 0, explain(proc)
    return proc, sweep


def test_slurm_peephole_ablation_runs_as_one_array_with_a_run_dir_results_and_wandb_run_per_job(ablation):
    proc, sweep = ablation
    jobs = job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1"]
    # one SLURM array: the jobs are tasks <array id>_0 and _1, and SLURM says both completed
    folders = sorted(p.name for p in (sweep / ".submitit").iterdir() if p.is_dir())
    array_id = folders[0]  # the one submission: an sbatch --array script
    assert folders == [array_id, f"{array_id}_0", f"{array_id}_1"]
    assert "#SBATCH --array=0-1%2\n" in (sweep / ".submitit" / array_id / f"{array_id}_submission.sh").read_text()
    job_ids = folders[1:]
    for job_id in job_ids:
        info = _final_job(job_id)
        assert info["JobState"] == "COMPLETED" and info["ArrayJobId"] == array_id, info
    groups = set()
    for job, peephole in zip(jobs, ["none", "full"]):
        res = results(job)
        assert res["status"] == "completed", res["error"]
        assert f"model.peephole={peephole}" in res["overrides"]
        (run,) = offline_runs(job)
        assert run.run_id == res["wandb"]["id"] and run.exit_code == 0 and "test/nrmse" in run.summary
        groups.add(run.group)
    assert groups == {f"{sweep.parent.name}_{sweep.name}"}  # one W&B group: the sweep dir's name
    # each job's state change shown once, and no warning per poll about sacct
    out = proc.stdout + proc.stderr
    for job_id in job_ids:
        assert out.count(f"job {job_id} ") == len({line for line in out.splitlines() if f"job {job_id} " in line})
        assert f"job {job_id} (" in out and "-> COMPLETED" in out
    assert "Bypassing sacct error" not in out
    assert out.count("reading job states from squeue") <= 1


# --- preemption: scontrol requeue and a time limit resume from last.ckpt; a cancelled job is recorded -------

STALL = textwrap.dedent('''
    """Holds chosen jobs after their first checkpointed epoch, on their first attempt, until SLURM interrupts them."""
    import os
    import time
    from pathlib import Path

    from lightning.pytorch.callbacks import Callback


    class StallOnce(Callback):
        def __init__(self, jobs: str):
            self.jobs = str(jobs).split("+")

        def on_train_epoch_start(self, trainer, pl_module):
            run_dir = Path(trainer.default_root_dir)
            marker = run_dir / "stalled"
            if run_dir.name not in self.jobs or trainer.current_epoch < 1 or marker.exists():
                return
            if trainer.is_global_zero:
                job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
                marker.write_text(f"{job} {trainer.current_epoch}")
            deadline = time.monotonic() + 300  # the test fails on its own timeout long before
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.2)  # a requeue signal (USR2) ends this through submitit's handler
''')


def _stalled(run_dir: Path):
    marker = run_dir / "stalled"
    return marker.read_text().split() if marker.is_file() else None


def test_slurm_requeue_and_time_limit_resume_from_last_ckpt_and_a_cancelled_job_is_recorded(ablation, tmp_path):
    (tmp_path / "stall_once.py").write_text(STALL)
    _, reference = ablation
    sweep = tmp_path / "sweep"
    # job 0: requeued by `scontrol requeue`; job 1: its time limit fires the launcher's signal (USR2,
    # signal_delay_s before the limit); job 2: cancelled for good. Each once it checkpointed epoch 0.
    proc = subprocess.Popen(
        _train_cmd(*ON_SLURM, "model.peephole=none,full,diagonal", "hydra.launcher.timeout_min=10",
                   "hydra.launcher.signal_delay_s=120", "+callbacks.stall._target_=stall_once.StallOnce",
                   "+callbacks.stall.jobs=0+1+2", sweep=sweep),
        cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        job0, _ = _wait_for(lambda: _stalled(sweep / "0"), "job 0 to checkpoint epoch 0", proc=proc)
        subprocess.run(["scontrol", "requeue", job0], check=True)

        job1, _ = _wait_for(lambda: _stalled(sweep / "1"), "job 1 to checkpoint epoch 0", proc=proc)
        # Two minutes in all leaves less than signal_delay_s: SLURM sends the signal at its next time check.
        subprocess.run(["scontrol", "update", f"JobId={job1}", "TimeLimit=2"], check=True)
        _wait_for(lambda: _squeue_state(job1) in ("PENDING", "REQUEUED"), "job 1 to be requeued", proc=proc)
        # Back to its own limit for the second attempt (a requeued job keeps the limit it had).
        subprocess.run(["scontrol", "update", f"JobId={job1}", "TimeLimit=10"], check=True)

        job2, _ = _wait_for(lambda: _stalled(sweep / "2"), "job 2 to checkpoint epoch 0", proc=proc)
        subprocess.run(["scancel", job2], check=True)

        out, _ = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run(["scancel", "--name=train"], check=False)
    # The cancelled job fails the sweep, after the others finished (as Hydra's own launcher does).
    assert proc.returncode != 0, out[-3000:]
    assert f"job {job2} (#2) ended CANCELLED without a result" in out, out[-3000:]

    submitit_logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.*"))
    for num, job_id in ((0, job0), (1, job1)):
        run_dir = sweep / str(num)
        res = results(run_dir)
        assert res["status"] == "completed", f"{res['error']}\n{out[-4000:]}"
        _metrics_equal(res, results(reference / str(num)))  # the same as the uninterrupted job
        assert _scontrol_job(job_id)["Restarts"] == "1"  # one requeue, by SLURM (0) or by submitit (1)
        last = run_dir / "checkpoints" / "last.ckpt"
        assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1
        assert f"Restoring states from the checkpoint path at {last.resolve()}" in submitit_logs
        # Both attempts wrote into one W&B run (offline-run-<time>-<run id>). SLURM's signals reach W&B's
        # service process too, so the interrupted attempt's file may lack its last records; the resumed
        # attempt's holds the run and its exit.
        attempts = sorted(run_dir.glob("wandb/offline-run-*"))
        assert len(attempts) == 2 and {p.name.rsplit("-", 1)[1] for p in attempts} == {res["wandb"]["id"]}
        resumed = offline_runs(run_dir)[-1]
        assert resumed.run_id == res["wandb"]["id"] and resumed.exit_code == 0
        assert "ckpt_path=last" in res["overrides"]
    assert "Caught signal SIGUSR2" in (sweep / ".submitit" / job1 / f"{job1}_0_log.err").read_text() + \
        (sweep / ".submitit" / job1 / f"{job1}_0_log.out").read_text()

    cancelled = results(sweep / "2")
    assert cancelled["status"] == "failed"
    assert cancelled["error"].startswith(f"job {job2} ended CANCELLED without a result")
    assert "model.peephole=diagonal" in cancelled["overrides"]


# --- SLURM-launched DDP: SLURM starts both ranks; one run dir, one W&B run, metrics synchronised ------------

RANK_METRICS = textwrap.dedent('''
    """Each rank writes the metrics it ends with, and where its rank came from."""
    import hashlib
    import json
    import os
    from pathlib import Path

    from lightning.pytorch.callbacks import Callback


    class RankMetrics(Callback):
        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            if batch_idx == 0:  # which samples this rank got
                self.first_batch = hashlib.sha1(b"".join(t.cpu().numpy().tobytes() for t in batch)).hexdigest()

        def on_test_end(self, trainer, pl_module):
            record = {
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
                "world_size": trainer.world_size, "global_rank": trainer.global_rank,
                "slurm_procid": os.environ.get("SLURM_PROCID"), "pid": os.getpid(),
                "cluster_environment": type(trainer.strategy.cluster_environment).__name__,
                "first_batch": self.first_batch,
            }
            Path(trainer.default_root_dir, f"rank{trainer.global_rank}_metrics.json").write_text(json.dumps(record))
''')


def test_slurm_launched_ddp_gives_one_run_dir_one_wandb_run_and_synchronised_metrics(slurm_cluster, tmp_path):
    (tmp_path / "rank_metrics.py").write_text(RANK_METRICS)
    proc, sweep = _sweep(tmp_path, *ON_SLURM, "trainer=ddp_cpu", "trainer.devices=2", "model.peephole=full",
                         "+callbacks.rank_metrics._target_=rank_metrics.RankMetrics")
    assert proc.returncode == 0, explain(proc)
    (job,) = job_dirs(sweep)
    (job_id,) = [p.name for p in (sweep / ".submitit").iterdir() if p.is_dir()]  # a single job, not an array
    info = _final_job(job_id)
    assert info["NumTasks"] == "2" and info["JobState"] == "COMPLETED", info
    res = results(job)
    assert res["status"] == "completed", res["error"]
    ranks = [json.loads((job / f"rank{r}_metrics.json").read_text()) for r in (0, 1)]
    # SLURM, not Lightning, started the ranks: two processes with SLURM's PROCIDs, in one world
    assert [r["slurm_procid"] for r in ranks] == ["0", "1"] and ranks[0]["pid"] != ranks[1]["pid"]
    assert {r["cluster_environment"] for r in ranks} == {"SLURMEnvironment"}
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert (job / "ddp_rank1.log").is_file() and not (sweep / "1").exists()
    # each rank tested its own shard of the data, and both end with the same (reduced) metrics: the job's
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"]
    assert ranks[0]["metrics"] == pytest.approx(ranks[1]["metrics"], rel=1e-6)
    assert ranks[0]["metrics"] == pytest.approx({k: v for k, v in res["metrics"].items() if k.startswith("test/")})
    (run,) = offline_runs(job)  # rank 1 created no W&B run
    assert run.run_id == res["wandb"]["id"] and run.exit_code == 0


# --- Optuna on the cluster: a persistent study that resumes after its sweeper died ----------------------------


def test_slurm_optuna_study_resumes_after_its_sweeper_dies_without_losing_or_repeating_a_trial(slurm_cluster, tmp_path):
    import optuna

    from peephole_lstm.sweeps.optuna_resume import RUN_DIR

    db = tmp_path / "study.db"
    sweep = tmp_path / "sweep"
    args = ["hydra/launcher=slurm_cpu", *TINY_SWEEP, "logger=csv", "hparams_search=optuna",
            f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.study_name=s",
            "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2"]
    first = subprocess.Popen(_train_cmd(*args, sweep=sweep), cwd=tmp_path, env=_env(tmp_path),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # the sweeper dies once its first batch (an array of two trials) is on the cluster
        _wait_for(lambda: list(sweep.glob(".submitit/*_1")), "the first two trials to be submitted", proc=first)
    finally:
        first.kill()
        first.wait()
    # its jobs go on without it
    _wait_for(lambda: all((sweep / n / "results.json").is_file() for n in "01"), "the orphaned trials to finish")

    second = subprocess.run(_train_cmd(*args, sweep=sweep), cwd=tmp_path, env=_env(tmp_path),
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, explain(second)
    out = second.stdout + second.stderr
    # the restarted sweep took the orphans' results and ran only the two trials still missing
    for n in (0, 1):
        assert f"trial {n} of the interrupted sweep" in out and f"({sweep / str(n)}): completed" in out
    assert "#2 : " in out and "#3 : " in out and "#0 : " not in out and "#4 : " not in out

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    assert [(t.number, t.state.name) for t in trials] == [(n, "COMPLETE") for n in range(4)]
    assert [t.user_attrs[RUN_DIR] for t in trials] == [str(sweep / str(n)) for n in range(4)]
    assert [j.name for j in job_dirs(sweep)] == ["0", "1", "2", "3"]  # one job per trial, none twice
    for trial in trials:
        res = results(Path(trial.user_attrs[RUN_DIR]))
        assert res["status"] == "completed" and res["metrics"]["val/loss"] == pytest.approx(trial.value)
        assert {f"{k}={v}" for k, v in trial.params.items()} <= set(res["overrides"])
    best = (sweep / "optimization_results.yaml").read_text()
    assert f"best_value: {study.best_value}" in best
