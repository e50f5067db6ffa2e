"""Waiting for submitit jobs: job states without the per-poll warnings, each state change shown once.

submitit reads SLURM job states from `sacct`. A cluster without an accounting database (a small
cluster, `scripts/slurm_cluster.sh`) answers every such call with an error, which submitit turns into a
warning per poll, and it then never learns that a job ended without a result (cancelled, killed):
`job.done()` stays False for as long as the job's result file is missing. `SlurmStateWatcher` asks
`sacct` once; where accounting is off it reads the states from `squeue`, which knows finished jobs
for `MinJobAge` (300 s by default) after they end.
"""
from __future__ import annotations

import logging
import subprocess
import time
from typing import Callable, Optional, Sequence

from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

log = logging.getLogger(__name__)

# States in which a job may still produce its result. submitit's own list lacks CONFIGURING (nodes
# booting) and the requeue/hold states, which it would take for "ended".
_ACTIVE = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "PREEMPTED",
    "READY", "UNKNOWN",
})
# A job that squeue had shown and no longer knows: it ended more than MinJobAge ago.
GONE = "GONE"
GONE_AFTER_S = 60
_NO_ACCOUNTING = "accounting storage is disabled"


def is_active(state: str) -> bool:
    return state.split()[0].upper() in _ACTIVE if state else True


class SlurmStateWatcher(SlurmInfoWatcher):
    """submitit's watcher, falling back from sacct to squeue on clusters without accounting."""

    def __init__(self, delay_s: int = 60) -> None:
        super().__init__(delay_s)
        self.use_squeue: Optional[bool] = None  # decided by the first call
        self._last_error = ""
        self._missing_since: dict[str, float] = {}

    def _make_command(self) -> Optional[list[str]]:
        command = super()._make_command()
        if command is None or not self.use_squeue:
            return command
        ids = sorted({x.split("_")[0] for x in self._registered - self._finished})
        # --array: one line per array task; --states=all: finished jobs too (within MinJobAge)
        return ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%N", f"--jobs={','.join(ids)}"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if not self.use_squeue:
            return super().read_info(string)
        text = string.decode() if isinstance(string, bytes) else string
        return super().read_info("JobID|State|NodeList\n" + text)

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        return not is_active(self.get_state(job_id, mode=mode))

    def update(self) -> None:
        if self.use_squeue is None:
            self.use_squeue = False
        command = self._make_command()
        if command is None:
            return
        self._num_calls += 1
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0 and not self.use_squeue and _NO_ACCOUNTING in proc.stderr:
            log.info("sacct: %s on this cluster; reading job states from squeue", _NO_ACCOUNTING)
            self.use_squeue = True
            command = self._make_command()
            proc = subprocess.run(command, capture_output=True, text=True)
        self._last_status_check = time.time()
        if proc.returncode != 0:
            error = proc.stderr.strip()
            if self.use_squeue and "Invalid job id" in error:
                info: dict[str, dict[str, str]] = {}  # none of the jobs is known any more
            else:
                if error != self._last_error:  # once per distinct error, not once per poll
                    log.warning("%s failed: %s (job states may lag)", command[0], error)
                self._last_error = error
                return
        else:
            info = self.read_info(proc.stdout)
            self._last_error = ""
        if self.use_squeue:
            # squeue forgets jobs MinJobAge after they end: a job it showed before and has not listed for a
            # while has ended. (Not at once: a job being requeued can be missing from one listing.)
            now = time.monotonic()
            for job_id in self._registered - self._finished:
                if job_id in info or not self._info_dict.get(job_id, {}).get("State"):
                    self._missing_since.pop(job_id, None)
                elif now - self._missing_since.setdefault(job_id, now) > GONE_AFTER_S:
                    info[job_id] = {"JobID": job_id, "State": GONE, "NodeList": ""}
        self._info_dict.update(info)
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)


class WatchedSlurmJob(SlurmJob):
    """submitit's SlurmJob with `SlurmStateWatcher` (submitit creates array jobs as SlurmJob directly,
    so the launcher re-creates them as this class from their ids)."""

    watcher = SlurmStateWatcher(delay_s=60)


class StateLog:
    """Shows each job's state when it changes, once: `job 12_0 (#0 model.peephole=none): PENDING -> RUNNING`."""

    def __init__(self, jobs: Sequence, labels: Sequence[str], state: Callable, log_fn: Callable = log.info) -> None:
        self.jobs, self.labels, self.state, self.log_fn = list(jobs), list(labels), state, log_fn
        self.last: dict[str, str] = {}

    def report(self) -> None:
        for job, label in zip(self.jobs, self.labels):
            now = self.state(job)
            before = self.last.get(job.job_id)
            if now != before:
                self.log_fn(f"job {job.job_id} ({label}): {before + ' -> ' if before else ''}{now}")
                self.last[job.job_id] = now

    def wait(self, poll_s: float = 1.0) -> None:
        """Until every job is done (its result written, or the cluster says it ended)."""
        while True:
            done = all(job.done() for job in self.jobs)
            self.report()
            if done:
                return
            time.sleep(poll_s)

    def settle(self, refresh: Callable[[], None], timeout_s: float = 15.0) -> None:
        """After the results are in, wait briefly for the cluster to show the jobs' final states."""
        deadline = time.monotonic() + timeout_s
        while True:
            refresh()
            self.report()
            if not any(is_active(s) for s in self.last.values()) or time.monotonic() > deadline:
                return
            time.sleep(1.0)
