"""Hydra plugins (`hydra/launcher=local|slurm|slurm_cpu` and `hparams_search=optuna` in conf/):
hydra-submitit-launcher's launchers, with requeued jobs resuming from their last checkpoint and every job
watched and recorded (peephole_lstm.sweeps.launcher), and hydra-optuna-sweeper's sweeper with a study
that resumes (peephole_lstm.sweeps.optuna_resume). Hydra imports this module at every start: the heavy
imports wait until a plugin is used."""
from typing import Any

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

from peephole_lstm.sweeps.launcher import ResumeOnRequeue


class ResumingLocalLauncher(ResumeOnRequeue, LocalLauncher):
    pass


class ResumingSlurmLauncher(ResumeOnRequeue, SlurmLauncher):
    pass


class ResumingOptunaSweeper(OptunaSweeper):
    """OptunaSweeper whose study resumes on restart and counts `n_trials` for the whole study."""

    def __init__(self, sampler: Any, direction: Any, storage: Any, study_name: Any, n_trials: int, n_jobs: int,
                 max_failure_rate: float, search_space: Any, custom_search_space: Any, params: Any) -> None:
        from peephole_lstm.sweeps.optuna_resume import ResumingStudy

        self.sweeper = ResumingStudy(sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate,
                                     search_space, custom_search_space, params)
