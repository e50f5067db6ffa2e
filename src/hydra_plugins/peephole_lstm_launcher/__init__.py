"""Hydra launcher plugins (`hydra/launcher=submitit_local|slurm` in conf/): hydra-submitit-launcher's,
with requeued jobs resuming from their last checkpoint (see peephole_lstm.sweeps.launcher)."""
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

from peephole_lstm.sweeps.launcher import ResumeOnRequeue


class ResumingLocalLauncher(ResumeOnRequeue, LocalLauncher):
    pass


class ResumingSlurmLauncher(ResumeOnRequeue, SlurmLauncher):
    pass
