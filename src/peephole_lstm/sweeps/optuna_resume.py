"""An Optuna search that resumes: `hparams_search=optuna` with a persistent `hydra.sweeper.storage`.

hydra-optuna-sweeper runs `n_trials` new trials on every start and forgets the trials it had in flight
when it dies: they stay RUNNING in the study for ever, and their jobs' results are lost (with the SLURM
launcher the jobs even finish after the sweeper is gone). `ResumingStudy` makes `n_trials` the size of
the study instead:
- each trial records its run dir, its job number and its sweeper (host, pid, heartbeat) in the study;
- on start, the trials of a sweeper that is gone (its process ended, or no heartbeat for
  `STALE_AFTER_S`) are settled from their run dir's results.json: completed -> COMPLETE with the
  job's `optimized_metric`, failed -> FAIL; a trial whose job left no result is set back to WAITING, so
  the next batch runs it again under its own number with the same parameters;
- batches are asked for until the study holds `n_trials` finished or running trials, so a restarted
  sweep runs only what is missing, and several sweepers can share one study.
Storage: SQLite (`sqlite:////abs/path/study.db`), which serialises concurrent writers with its file
lock; it must be on a file system with working locks (a local disk; not NFS). Optuna's JournalFileStorage
would need optuna >= 3.1, which hydra-optuna-sweeper (optuna < 3) does not allow.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

from peephole_lstm import rundir

log = logging.getLogger(__name__)

RUN_DIR, JOB_NUM, SWEEP_DIR, OWNER, HEARTBEAT = (
    "peephole_lstm.run_dir", "peephole_lstm.job_num", "peephole_lstm.sweep_dir", "peephole_lstm.sweeper",
    "peephole_lstm.heartbeat")
HEARTBEAT_S = 60
STALE_AFTER_S = 600  # a sweeper on another host without a heartbeat this long is gone


def _start_ticks(pid: int) -> Optional[str]:
    """The process's start time (field 22 of /proc/<pid>/stat): tells a pid from a later one reusing it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def this_sweeper() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or '?'}"


def sweeper_alive(owner: str, heartbeat: Optional[float], now: Optional[float] = None) -> bool:
    """Is the sweeper `owner` (this_sweeper() of its process) still running?"""
    host, pid, ticks = owner.rsplit(":", 2)
    if host == socket.gethostname() and ticks != "?":
        return _start_ticks(int(pid)) == ticks
    return heartbeat is not None and (now or time.time()) - heartbeat < STALE_AFTER_S


def settle_orphans(study: Any, storage: Any, metric: str,
                   alive: Callable[[str, Optional[float]], bool] = sweeper_alive) -> dict:
    """Settle the RUNNING trials of sweepers that are gone; returns {trial number: what was done}.

    `storage`: the study's storage object (optuna.storages.get_storage(url)).
    """
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    done = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(OWNER)
        if owner is None or alive(owner, trial.user_attrs.get(HEARTBEAT)):
            continue
        run_dir = trial.user_attrs.get(RUN_DIR)
        res = _results(run_dir)
        if res.get("status") == rundir.COMPLETED and isinstance((res.get("metrics") or {}).get(metric), (int, float)):
            study.tell(trial.number, res["metrics"][metric])
            done[trial.number] = "completed"
        elif res.get("status") in (rundir.COMPLETED, rundir.FAILED):
            study.tell(trial.number, state=TrialState.FAIL)
            done[trial.number] = "failed"
        else:  # no result: run it again
            storage.set_trial_state(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number),
                                    TrialState.WAITING)
            done[trial.number] = "rerun"
        log.info(f"trial {trial.number} of the interrupted sweep {owner} ({run_dir}): {done[trial.number]}")
    return done


def _results(run_dir: Optional[str]) -> dict:
    try:
        return (rundir.read_results(run_dir) or {}) if run_dir else {}
    except (OSError, ValueError):
        return {}


class ResumingStudy(OptunaSweeperImpl):
    """hydra-optuna-sweeper's sweeper with the resume behaviour of this module."""

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.owner = this_sweeper()

    def _configure_trials(self, trials: list, search_space_distributions: dict, fixed_params: dict) -> Any:
        from peephole_lstm.sweeps.launcher import job_config

        overrides = super()._configure_trials(trials, search_space_distributions, fixed_params)
        for i, (trial, trial_overrides) in enumerate(zip(trials, overrides)):
            _, run_dir = job_config(self.hydra_context, self.config, trial_overrides, self.job_idx + i)
            for key, value in ((RUN_DIR, os.path.abspath(run_dir)), (JOB_NUM, self.job_idx + i),
                               (SWEEP_DIR, self._sweep_dir()), (OWNER, self.owner), (HEARTBEAT, time.time())):
                trial.set_user_attr(key, value)
        return overrides

    def _sweep_dir(self) -> str:
        return os.path.abspath(str(self.config.hydra.sweep.dir))

    def _heartbeat(self, study: Any, storage: Any, stop: threading.Event) -> None:
        from optuna.trial import TrialState

        study_id = storage.get_study_id_from_name(study.study_name)
        while not stop.wait(HEARTBEAT_S):
            try:
                for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    if trial.user_attrs.get(OWNER) == self.owner:
                        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
                        storage.set_trial_user_attr(trial_id, HEARTBEAT, time.time())
            except Exception as e:  # a missed heartbeat only makes the trials look stale later
                log.warning(f"optuna heartbeat: {e}")

    def sweep(self, arguments: list[str]) -> None:
        import functools

        import optuna
        from optuna.trial import TrialState

        grid = isinstance(self.sampler, functools.partial) and self.sampler.func == optuna.samplers.GridSampler
        if self.storage is None or grid:  # nothing persists (or the grid fixes the trials): as upstream
            return super().sweep(arguments)
        storage = optuna.storages.get_storage(self.storage)
        study = optuna.create_study(study_name=self.study_name, storage=storage, sampler=self.sampler,
                                    directions=self._get_directions(), load_if_exists=True)
        settle_orphans(study, storage, str(self.config.optimized_metric))
        nums = [t.user_attrs.get(JOB_NUM, -1) for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get(SWEEP_DIR) == self._sweep_dir()]
        self.job_idx = max(nums, default=-1) + 1  # a restart in the same sweep dir adds job dirs after its own
        target, batch = self.n_trials, self.n_jobs
        stop = threading.Event()
        threading.Thread(target=self._heartbeat, args=(study, storage, stop), daemon=True).start()
        try:
            while True:
                trials = study.get_trials(deepcopy=False)
                taken = sum(t.state.is_finished() or t.state == TrialState.RUNNING for t in trials)
                if taken >= target:
                    break
                log.info(f"study {self.study_name}: {taken} of {target} trials finished or running; "
                         f"asking for {min(batch, target - taken)}")
                self.n_trials = min(batch, target - taken)
                super().sweep(arguments)
            if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
                self.n_trials = 0
                super().sweep(arguments)  # runs nothing; writes optimization_results.yaml for the whole study
        finally:
            stop.set()
            self.n_trials = target
