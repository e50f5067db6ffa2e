"""The trials a dead Optuna sweeper left RUNNING are settled from their run dirs (a real SQLite study)."""
from __future__ import annotations

import json
import socket

import optuna
from optuna.trial import TrialState

from peephole_lstm.sweeps.optuna_resume import OWNER, RUN_DIR, settle_orphans, sweeper_alive, this_sweeper


def test_orphaned_trials_are_completed_failed_or_rerun_from_their_results_and_live_ones_kept(tmp_path):
    storage = optuna.storages.get_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="minimize")
    dead = f"{socket.gethostname()}:999999999:12345"  # no such pid on this host
    trials = [study.ask() for _ in range(4)]
    lrs = [t.suggest_float("lr", 1e-4, 1e-1, log=True) for t in trials]
    outcomes = [("completed", {"val/loss": 0.5}), ("failed", {}), None, None]
    for trial, outcome in zip(trials, outcomes):
        run_dir = tmp_path / str(trial.number)
        run_dir.mkdir()
        trial.set_user_attr(RUN_DIR, str(run_dir))
        trial.set_user_attr(OWNER, dead if trial.number < 3 else this_sweeper())
        if outcome:
            (run_dir / "results.json").write_text(json.dumps({"status": outcome[0], "metrics": outcome[1]}))

    # the restarted sweeper: a new process, with its own connection to the study
    storage = optuna.storages.get_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.load_study(study_name="s", storage=storage)
    assert settle_orphans(study, storage, "val/loss") == {0: "completed", 1: "failed", 2: "rerun"}
    states = {t.number: (t.state, t.value) for t in study.get_trials()}
    assert states == {0: (TrialState.COMPLETE, 0.5), 1: (TrialState.FAIL, None), 2: (TrialState.WAITING, None),
                      3: (TrialState.RUNNING, None)}  # trial 3's sweeper (this process) is alive
    rerun = study.ask()  # the interrupted trial comes back under its own number, with its parameters
    assert rerun.number == 2 and rerun.suggest_float("lr", 1e-4, 1e-1, log=True) == lrs[2]
    assert len(study.get_trials()) == 4
    rerun.set_user_attr(OWNER, this_sweeper())  # as the sweeper records when it launches the trial
    assert settle_orphans(study, storage, "val/loss") == {}  # nothing left to settle


def test_a_sweeper_on_another_host_is_alive_while_its_heartbeat_is_recent():
    assert sweeper_alive(this_sweeper(), None)
    assert sweeper_alive("elsewhere:1:1", heartbeat=1000.0, now=1000.0 + 60)
    assert not sweeper_alive("elsewhere:1:1", heartbeat=1000.0, now=1000.0 + 3600)
    assert not sweeper_alive("elsewhere:1:1", heartbeat=None)
