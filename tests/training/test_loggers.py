"""W&B mode selection (offline without credentials, online with them, WANDB_MODE and the config win),
the offline run reader on real W&B runs, and the CSV logger that a killed run cannot empty."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from peephole_lstm.training.loggers import CSVLogger, resolve_wandb_mode, wandb_has_credentials


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # does not exist yet
    return tmp_path / "netrc"


def test_offline_without_credentials(no_credentials):
    assert not wandb_has_credentials()
    assert resolve_wandb_mode(None) == "offline"


def test_online_with_an_api_key_or_a_netrc_entry(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode(None) == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    no_credentials.write_text("machine example.org login a password b\n")
    assert resolve_wandb_mode(None) == "offline"  # an entry for another host is not a W&B login
    no_credentials.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    assert resolve_wandb_mode(None) == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.mycompany.com")  # self-hosted server
    assert resolve_wandb_mode(None) == "offline"


def test_wandb_mode_env_and_config_take_precedence(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode(None) == "offline"
    assert resolve_wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_wandb_mode(None) == "offline"


def test_invalid_mode_lists_the_allowed_values(no_credentials):
    with pytest.raises(ValueError, match="logger.wandb.mode='onlin' is not valid; allowed values: null"):
        resolve_wandb_mode("onlin")


@pytest.mark.slow  # a real W&B offline run (wandb-core starts), long enough to span blocks
def test_offline_run_reader_reads_back_a_real_run_across_blocks(tmp_path):
    import wandb

    from peephole_lstm.training.wandb_offline import offline_runs

    run = wandb.init(mode="offline", dir=tmp_path, project="p", group="g", job_type="train", tags=["a", "b"],
                     config={"model": {"hidden_size": 8, "peephole": "full"}, "seed": 3})
    for step in range(400):  # enough records to span several 32 KiB blocks of the log
        run.log({"val/loss": 1.0 / (step + 1), "text": "x" * 50})
    run.finish(exit_code=1)
    # finish() can return before W&B's service process has written the last records (a fresh-clone CI run
    # read 373 of the 400 rows and no exit record); teardown waits for it, as a job's exit does.
    wandb.teardown()
    (read,) = offline_runs(tmp_path)
    assert sum(f.stat().st_size for f in read.path.glob("run-*.wandb")) > 3 * 32768
    assert (read.run_id, read.group, read.job_type, read.tags) == (run.id, "g", "train", ["a", "b"])
    assert read.config["model"] == {"hidden_size": 8, "peephole": "full"} and read.config["seed"] == 3
    assert read.history_rows == 400 and read.summary["val/loss"] == pytest.approx(1 / 400)
    assert read.exit_code == 1


def test_offline_run_reader_rejects_other_files(tmp_path):
    from peephole_lstm.training.wandb_offline import records

    (tmp_path / "run-x.wandb").write_bytes(b"not a wandb file")
    with pytest.raises(ValueError, match="is not a W&B run file"):
        list(records(tmp_path / "run-x.wandb"))


def test_csv_logger_keeps_its_rows_when_a_rewrite_for_new_columns_dies(tmp_path, monkeypatch):
    """The first training row adds columns to metrics.csv, and Lightning then rewrites the whole file; a
    process killed during that rewrite (here: dying in the middle of writing the rows) must leave the
    rows it had, as a resume from last.ckpt only logs the epochs after the checkpoint again."""
    logger = CSVLogger(tmp_path, name="csv", version="")
    logger.log_metrics({"val/loss": 0.5, "epoch": 0}, step=21)
    logger.save()
    path = Path(logger.experiment.metrics_file_path)
    before = path.read_text()
    assert "val/loss" in before

    def killed(self, rows):
        raise KeyboardInterrupt("killed during the rewrite")

    monkeypatch.setattr(csv.DictWriter, "writerows", killed)
    logger.log_metrics({"train/loss": 0.7, "epoch": 0}, step=21)
    with pytest.raises(KeyboardInterrupt):
        logger.save()
    assert path.read_text() == before
    monkeypatch.undo()
    # Uninterrupted, the rewrite gives both rows under the new header.
    fresh = CSVLogger(tmp_path / "fresh", name="csv", version="")
    fresh.log_metrics({"val/loss": 0.5, "epoch": 0}, step=21)
    fresh.save()
    fresh.log_metrics({"train/loss": 0.7, "epoch": 0}, step=21)
    fresh.save()
    rows = list(csv.DictReader(Path(fresh.experiment.metrics_file_path).open()))
    assert [(r["val/loss"], r["train/loss"]) for r in rows] == [("0.5", ""), ("", "0.7")]
