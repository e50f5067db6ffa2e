"""A real `python train.py` killed with SIGKILL and resumed with `ckpt_path=last` ends exactly like an
uninterrupted run (metrics, every epoch once in the metrics CSV, the same W&B run); the same seed and
config give identical metrics, and the run dir records config, package version and git commit."""
from __future__ import annotations

import shutil
import signal
import subprocess
import time

import pytest
import torch
import yaml

import peephole_lstm
from tests.helpers.configs import QUIET
from tests.helpers.scripts import ROOT, csv_rows, results, run_script, start_script

pytestmark = pytest.mark.slow  # every test starts train.py, several times

# Full training epochs (~22 batches each) so that the kill lands while the run is still training; dropout
# so that the random generators' states must be resumed too, not only weights and optimizer.
RUN = [*QUIET, "logger=[csv,wandb]", "trainer.max_epochs=4", "+trainer.limit_val_batches=3",
       "+trainer.limit_test_batches=3", "model.head_dropout=0.2"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("reference")
    proc = run_script("train.py", *RUN, "hydra.run.dir=run", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "run"


def _kill_after_first_checkpoint(run, cwd) -> int:
    proc = start_script("train.py", *RUN, f"hydra.run.dir={run}", cwd=cwd,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run / "results.json").exists()
    return torch.load(last, weights_only=True)["epoch"]


def test_sigkill_then_resume_with_ckpt_path_last_equals_an_uninterrupted_run(tmp_path, reference):
    run = tmp_path / "run"
    killed_in_epoch = _kill_after_first_checkpoint(run, tmp_path)
    assert killed_in_epoch < 3  # epochs were left to train

    proc = run_script("train.py", *RUN, "ckpt_path=last", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res, ref = results(run), results(reference)
    assert res["status"] == "completed"
    assert res["metrics"].keys() == ref["metrics"].keys()
    assert res["metrics"] == pytest.approx(ref["metrics"], rel=1e-6, abs=1e-9)

    # No epoch lost or repeated: the CSV holds exactly the uninterrupted run's rows, in order.
    rows, ref_rows = csv_rows(run), csv_rows(reference)
    assert [int(r["epoch"]) for r in rows if r["train/loss"]] == [0, 1, 2, 3]
    assert [(r["epoch"], r["step"]) for r in rows] == [(r["epoch"], r["step"]) for r in ref_rows]
    for row, ref_row in zip(rows, ref_rows):
        assert {k: float(v) for k, v in row.items() if v} == pytest.approx(
            {k: float(v) for k, v in ref_row.items() if v}, rel=1e-6)

    # The resumed process continued the killed run's W&B run (same id) instead of starting another.
    offline = sorted(run.glob("wandb/offline-run-*"))
    assert len(offline) == 2  # one directory per process...
    assert {p.name.rsplit("-", 1)[1] for p in offline} == {res["wandb"]["id"]}  # ...one W&B run


def test_resume_refuses_another_config_and_a_run_dir_without_checkpoint(tmp_path, reference):
    run = tmp_path / "copy"
    shutil.copytree(reference, run)
    proc = run_script("train.py", *RUN, "model.hidden_size=16", "ckpt_path=last", f"hydra.run.dir={run}",
                      cwd=tmp_path)
    assert proc.returncode != 0
    assert "model.hidden_size: 32 in the checkpoint, 16 now" in proc.stderr
    assert "resume with the run's original overrides" in proc.stderr
    for record in ("results.json", "config.yaml", "checkpoints/last.ckpt"):  # the run's records are untouched
        assert (run / record).read_bytes() == (reference / record).read_bytes(), record

    proc = run_script("train.py", *RUN, "ckpt_path=last", f"hydra.run.dir={tmp_path / 'fresh'}", cwd=tmp_path)
    assert proc.returncode != 0
    assert f"ckpt_path=last: there is no '{tmp_path / 'fresh' / 'checkpoints' / 'last.ckpt'}'" in proc.stderr
    assert not (tmp_path / "fresh" / "checkpoints").exists()  # failed before training


def test_resume_to_train_longer_continues_the_run_and_its_schedule(tmp_path, reference):
    run = tmp_path / "longer"
    shutil.copytree(reference, run)
    before = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert before["epoch"] == 3 and before["lr_schedulers"][0]["T_max"] == 4
    # trainer.max_epochs changes model.scheduler.T_max (${trainer.max_epochs}); that is not another run
    RUN6 = [o if o != "trainer.max_epochs=4" else "trainer.max_epochs=6" for o in RUN]
    proc = run_script("train.py", *RUN6, "ckpt_path=last", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["epoch"] == 5 and after["lr_schedulers"][0]["T_max"] == 6  # the new horizon
    # the schedule is the one of a 6-epoch run: the 4-epoch cosine had reached 0, this one has not, and it
    # ends where a 6-epoch run ends
    (base,) = before["lr_schedulers"][0]["base_lrs"]
    assert before["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)
    assert after["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)  # cos(pi * 6 / 6)
    assert after["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(base)
    # ... so epochs 4 and 5 trained (at lr 0 the weights would still be the checkpoint's)
    moved = [k for k, v in after["state_dict"].items() if not torch.equal(v, before["state_dict"][k])]
    assert "rnn.weight_hh_l0" in moved, moved
    assert [int(r["epoch"]) for r in csv_rows(run) if r["train/loss"]] == [0, 1, 2, 3, 4, 5]
    assert results(run)["status"] == "completed"


def test_same_seed_and_config_give_identical_metrics_and_the_run_dir_records_provenance(tmp_path, reference):
    run = tmp_path / "run"
    proc = run_script("train.py", *RUN, f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(run)
    assert res["metrics"] == results(reference)["metrics"]  # bitwise: deterministic mode on CPU
    assert csv_rows(run) == csv_rows(reference)

    text = (run / "config.yaml").read_text()
    config = yaml.safe_load(text)
    assert "${" not in text and config["seed"] == 0 and config["trainer"]["deterministic"] is True
    assert config["model"]["hidden_size"] == 32 and config["data"]["_target_"].endswith("MackeyGlassDataModule")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert res["package_version"] == peephole_lstm.__version__
    assert res["git_commit"] == head
