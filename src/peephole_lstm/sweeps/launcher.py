"""Resume and bookkeeping for submitit-launched jobs (`hydra/launcher=local|slurm`).

Requeue and resume. A job can be requeued two ways, and both continue from the run dir's last checkpoint
in the same run dir and the same W&B run (train.py's `ckpt_path=last`, peephole_lstm.training.checkpointing):
- by submitit, on the signal the launcher config names (`signal_delay_s` before the time limit, or on
  preemption): submitit calls the job's `checkpoint` in the job process and requeues what it returns;
  `ResumeOnRequeue.checkpoint` adds `ckpt_path=last` once `<run dir>/checkpoints/last.ckpt` exists;
- by SLURM itself (`scontrol requeue`, preemption with PreemptMode=REQUEUE, a node failure): the job
  restarts from its original submission, with SLURM_RESTART_COUNT > 0; `ResumeOnRequeue.__call__`
  then adds the same override when the run dir has a last checkpoint.
The requeued job lands in the same run dir because the sweep dir's `${now:}` is cached in the pickled
config.

Bookkeeping (`launch`): the launcher waits for all jobs of the batch and logs each job's state change
once; a job that ends without a result (cancelled, killed, out of time for good) gets `results.json`
with status "failed" and the SLURM state, and the other jobs go on. As with Hydra's own launcher, the
sweep reports the failure once the batch is over (an Optuna sweep records the trial as failed).

With SLURM-launched DDP (`tasks_per_node` > 1) every task runs this job: ranks > 0 run it in rank 0's
run dir without writing `.hydra/`, and log to `ddp_rank<N>.log`.

The launcher classes themselves live in `hydra_plugins.peephole_lstm_launcher` (Hydra accepts
launchers only from the hydra_plugins namespace).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

from peephole_lstm import rundir
from peephole_lstm.sweeps.jobs import RESUME_KEYS, split_override

log = logging.getLogger(__name__)


def resume_overrides(overrides: list[str], run_dir: Optional[str]) -> list[str]:
    """`overrides` with `ckpt_path=last` when the interrupted job in `run_dir` left a last checkpoint.

    Until then the job restarts as submitted, keeping a ckpt_path it was given (e.g. to fine-tune).
    """
    if run_dir is None or not rundir.last_checkpoint(run_dir).is_file():
        return list(overrides)
    return [o for o in overrides if split_override(o)[0] not in RESUME_KEYS] + ["ckpt_path=last"]


def _current_run_dir() -> Optional[str]:
    """Run dir of the job running in this process (the signal arrives inside its task function)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None


def requeued_by_slurm() -> bool:
    """True in a SLURM job that SLURM restarted (scontrol requeue, preemption, node failure)."""
    return os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0")


def slurm_rank() -> int:
    return int(os.environ.get("SLURM_PROCID") or 0)


def _note_sigterm() -> threading.Event:
    """An event set when this process gets SIGTERM; the handler in place (submitit's) still runs.

    Lightning's own SIGTERM handler calls the one it finds, so the event is set during training too.
    """
    event = threading.Event()
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        event.set()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
    return event


def job_config(hydra_context: Any, config: Any, overrides: Sequence[str], job_num: int, job_id: str = ""):
    """The config of job `job_num` of a sweep, and its run dir, as hydra.core.utils.run_job computes it.

    Hydra's global HydraConfig is left as it was (run_job sets it again for the job itself).
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.num = job_num
        cfg.hydra.job.id = job_id
    saved = HydraConfig.instance().cfg
    try:
        HydraConfig.instance().set_config(cfg)  # the subdir may read ${hydra:job.num} and the like
        run_dir = os.path.join(str(OmegaConf.select(cfg, "hydra.sweep.dir")),
                               str(OmegaConf.select(cfg, "hydra.sweep.subdir")))
    finally:
        HydraConfig.instance().cfg = saved
    return cfg, run_dir


def record_lost_job(run_dir: str, overrides: Sequence[str], seed: Any, job_id: str, reason: str) -> None:
    """results.json for a job that ended without a result: status failed, and why (e.g. the SLURM state).

    A results.json the job wrote itself is kept when it says "completed" (the job was killed after
    finishing), and otherwise extended: its metrics and W&B run stay, its error is kept after ours.
    """
    try:
        previous = rundir.read_results(run_dir) or {}
    except ValueError:
        previous = {}
    if previous.get("status") == rundir.COMPLETED:
        return
    error = f"job {job_id} {reason}"
    if previous.get("error"):
        error += f"; the job recorded: {previous['error']}"
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    rundir.write_results(run_dir, status=rundir.FAILED, error=error, metrics=previous.get("metrics") or {},
                         seed=previous.get("seed", seed), wandb=previous.get("wandb"), overrides=list(overrides))


class ResumeOnRequeue:
    """Mixin for hydra-submitit-launcher's launchers: resume on requeue, watch and record every job."""

    _EXECUTOR: str
    params: dict
    config: Any
    hydra_context: Any

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict) -> Any:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import setup_globals

        overrides = list(sweep_overrides)
        if requeued_by_slurm():
            Singleton.set_state(singleton_state)
            setup_globals()
            _, run_dir = job_config(self.hydra_context, self.config, overrides, job_num)
            overrides = resume_overrides(overrides, run_dir)
        if slurm_rank() > 0:  # an extra DDP rank started by SLURM: rank 0 writes the job's records
            overrides += ["hydra.output_subdir=null", f"hydra.job.name=ddp_rank{slurm_rank()}"]
        terminated = _note_sigterm()
        ret = super().__call__(overrides, job_dir_key, job_num, job_id, singleton_state)  # type: ignore[misc]
        if terminated.is_set() and ret.status.name == "FAILED":
            # SLURM is stopping this job (requeue, cancel, preemption) and SIGTERM reached every process of
            # it, W&B's service too: what failed is the shutdown. Ending without a result lets submitit see
            # the job as still owed: SLURM runs it again after a requeue, and a cancel is recorded as such.
            error = ret._return_value  # (the property would raise it)
            raise SystemExit(f"stopped by SIGTERM ({type(error).__name__}: {error})")
        return ret

    def checkpoint(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> Any:
        import submitit

        overrides = resume_overrides(list(sweep_overrides), _current_run_dir())
        return submitit.helpers.DelayedSubmission(self, overrides, *args, **kwargs)

    def _executor(self) -> Any:
        """The submitit executor, with the parameter mapping of hydra-submitit-launcher's launch()."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        init = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{
            k if k in base else f"{self._EXECUTOR}_{k}": v
            for k, v in self.params.items() if k not in ("submitit_folder", "max_num_timeout")
        })
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import JobReturn, JobStatus, filter_overrides

        assert self.config is not None
        executor = self._executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))

        nums = [initial_job_idx + i for i in range(len(job_overrides))]
        for n, o in zip(nums, job_overrides):
            log.info(f"\t#{n} : {' '.join(filter_overrides(o))}")
        # State lines name a job by its number and what sets it apart from the others of the batch.
        common = set.intersection(*(set(o) for o in job_overrides))
        labels = [" ".join([f"#{n}", *(x for x in filter_overrides(o) if x not in common)])
                  for n, o in zip(nums, job_overrides)]
        jobs = executor.map_array(self, *zip(*[
            (list(o), "hydra.sweep.dir", n, f"job_id_for_{n}", Singleton.get_state())
            for n, o in zip(nums, job_overrides)
        ]))

        if self._EXECUTOR == "slurm":
            from peephole_lstm.sweeps.slurm import StateLog, WatchedSlurmJob

            jobs = [WatchedSlurmJob(folder=executor.folder, job_id=j.job_id, tasks=list(range(j.num_tasks)))
                    for j in jobs]
            watcher = WatchedSlurmJob.watcher
            if len({j.job_id.split("_")[0] for j in jobs}) == 1 and len(jobs) > 1:
                log.info(f"SLURM job array {jobs[0].job_id.split('_')[0]}: {len(jobs)} jobs")
            states = StateLog(jobs, labels, lambda j: watcher.get_state(j.job_id, mode="cache"))
            states.wait()
            states.settle(watcher.update)
        else:
            from peephole_lstm.sweeps.slurm import StateLog

            states = StateLog(jobs, labels, lambda j: j.state)
            states.wait()
            states.report()

        returns = []
        for job, num, overrides in zip(jobs, nums, job_overrides):
            try:
                returns.append(job.results()[0])
            except Exception as e:  # submitit: no result (UncompletedJobError) or an error outside run_job
                from submitit.core.utils import UncompletedJobError

                cfg, run_dir = job_config(self.hydra_context, self.config, overrides, num, job.job_id)
                state = states.last.get(job.job_id, "UNKNOWN")
                if isinstance(e, UncompletedJobError):
                    reason = f"ended {state} without a result (cancelled, killed or out of time)"
                else:
                    lines = [x for x in str(e).splitlines() if x.strip() and not x.startswith(("-", " "))]
                    reason = f"failed before or after its training run: {lines[-1] if lines else type(e).__name__}"
                record_lost_job(run_dir, overrides, cfg.get("seed"), job.job_id, reason)
                log.error(f"job {job.job_id} (#{num}) {reason}; recorded as failed in {rundir.results_path(run_dir)}")
                returns.append(JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=e,
                                         working_dir=run_dir))
        return returns
