"""train() / evaluate() on composed configs, in-process: one fast_dev_run per datamodule, arch and task."""
from __future__ import annotations

import pytest
import torch

from peephole_lstm.data import DataError, DigitsDataModule
from peephole_lstm.training import SequenceModel, train
from peephole_lstm.training.wandb_offline import offline_runs
from tests.helpers.configs import CONF, FAST, compose_config
from tests.helpers.scripts import results

TASK_METRICS = {  # forecast and seq2seq share the regression metrics
    "regression": {"val/mse", "val/mae", "val/nrmse"},
    "classify": {"val/acc"},
    "lm": {"val/bpc", "val/ppl"},
    "multilabel": {"val/nll"},
}
# Every datamodule and task; small sizes so each fast_dev_run builds in about a second.
DATA_CASES = {
    "mackey_glass": ["data=mackey_glass", "data.length=300"],
    "sunspots": ["data=sunspots"],
    "timing_msd": ["data=timing", "data.n_train=64", "data.n_val=32", "data.n_test=32"],
    "timing_msd_per_step": ["data=timing", "data.msd_target=per_step", "data.n_train=64", "data.n_val=32",
                            "data.n_test=32"],
    "timing_gts": ["data=timing", "data.task=gts", "data.n_train=64", "data.n_val=32", "data.n_test=32"],
    "timing_pfg": ["data=timing", "data.task=pfg", "data.n_train=64", "data.n_val=32", "data.n_test=32"],
    # the ready experiments' timing tasks (conf/data/gers_*.yaml)
    **{name: [f"data={name}", "data.n_train=64", "data.n_val=32", "data.n_test=32"]
       for name in ("gers_msd", "gers_msd_echo", "gers_msd_fine", "gers_gts", "gers_pfg")},
    "digits": ["data=digits"],
    "chars": ["data=chars", "data.max_chars=20000", "data.seq_len=32"],
    "chars_stateful": ["data=chars", "data.stateful=true", "data.max_chars=20000", "data.seq_len=32",
                       "data.batch_size=8"],
    # two chorales per split, parsed into the run's own cache (not the user's)
    "jsb_chorales": ["data=jsb_chorales", "data.limit_chorales=2", "data.cache_dir=${paths.output_dir}/cache"],
}


# One case per task in the fast lane (forecast, a CSV file, exact timing, characters); the other timing
# tasks, the experiments' variants of them and the stateful LM run in the full suite (docs/testing.md).
FAST_CASES = {"mackey_glass", "sunspots", "timing_msd", "chars"}


def _lane(values, fast):
    return [v if v in fast else pytest.param(v, marks=pytest.mark.slow) for v in values]


def test_every_datamodule_config_has_a_case():
    covered = {case[0].split("=")[1] for case in DATA_CASES.values()} | {"csv"}  # sunspots is csv
    assert {p.stem for p in (CONF / "data").glob("*.yaml")} <= covered


def fit(tmp_path, *overrides):
    cfg = compose_config("train", ["logger=none", "debug=fdr", *FAST, *overrides], output_dir=tmp_path)
    value = train(cfg)
    return cfg, value, results(tmp_path)


@pytest.mark.parametrize("case", _lane(sorted(DATA_CASES), FAST_CASES))
def test_fast_dev_run_per_datamodule_and_task(tmp_path, case):
    _, value, res = fit(tmp_path, *DATA_CASES[case])
    assert res["status"] == "completed" and res["error"] is None
    metrics = set(res["metrics"])
    assert {"train/loss", "val/loss", "test/loss"} <= metrics
    (task,) = [t for t, names in TASK_METRICS.items() if names <= metrics]
    assert {m.replace("val/", "test/") for m in TASK_METRICS[task]} <= metrics
    timing = case.startswith(("timing_msd", "timing_gts", "gers_msd", "gers_gts"))  # the tasks with exact timing
    assert ({"val/solve_rate", "test/solve_rate", "test/timing_error"} <= metrics) == timing
    assert value == res["metrics"]["val/loss"]
    assert res["overrides"][:2] == ["logger=none", "debug=fdr"]
    plots = list(tmp_path.glob("plots/test_*.png"))  # prediction plots for regression tasks only
    assert len(plots) == 1 if task == "regression" else not plots


# The fast lane trains this package's architecture; the torch.nn LSTM and GRU ones (composed in the fast
# lane by tests/training/test_config.py) and the model variants train in the full suite.
@pytest.mark.parametrize("model", _lane(["model.arch=peephole", "model.arch=lstm", "model.arch=gru", "model=bilstm",
                                         "model.variant=CIFG", "model.peephole=full"],
                                        {"model.arch=peephole"}))
def test_fast_dev_run_per_architecture(tmp_path, model):
    _, _, res = fit(tmp_path, model, "data.length=300")
    assert res["status"] == "completed"
    assert {"test/nrmse", "val/nrmse"} <= set(res["metrics"])


def test_data_error_fails_before_training_and_is_recorded(tmp_path):
    with pytest.raises(DataError, match="window"):
        fit(tmp_path, "data.length=300", "data.window=400")
    res = results(tmp_path)
    assert res["status"] == "failed" and "DataError" in res["error"] and res["metrics"] == {}
    assert not (tmp_path / "checkpoints").exists()


def test_optimized_metric_is_returned_and_checked(tmp_path):
    _, value, res = fit(tmp_path / "a", "data.length=300", "optimized_metric=test/nrmse")
    assert value == res["metrics"]["test/nrmse"]
    with pytest.raises(ValueError, match="optimized_metric='val/acc' was not produced"):
        fit(tmp_path / "b", "data.length=300", "optimized_metric=val/acc")


# TensorBoard's records are read back by tests/training/test_tensorboard.py in the fast lane.
@pytest.mark.parametrize("logger, files", [("csv", "csv/metrics.csv"),
                                           pytest.param("tensorboard", "tensorboard/events.out.tfevents.*",
                                                        marks=pytest.mark.slow)])
def test_file_loggers_write_into_the_run_dir(tmp_path, logger, files):
    cfg = compose_config("train", [f"logger={logger}", *FAST, "data.length=300"], output_dir=tmp_path)
    train(cfg)
    assert list(tmp_path.glob(files)), sorted(p.name for p in tmp_path.rglob("*"))
    assert results(tmp_path)["wandb"] is None


def test_a_failing_job_ends_its_wandb_run_as_failed(tmp_path):
    # Adam rejects the NaN learning rate inside fit, after the W&B run has started.
    cfg = compose_config("train", ["logger=wandb", *FAST, "data.length=300", "model.lr=nan"], output_dir=tmp_path)
    with pytest.raises(ValueError, match="learning rate"):
        train(cfg)
    res = results(tmp_path)
    assert res["status"] == "failed" and "learning rate" in res["error"]
    import wandb

    assert wandb.run is None  # finished: nothing leaks into the next job of a multirun
    # W&B's service process may still be flushing the run's transaction log when finish() returns (seen on a
    # loaded machine); teardown waits for it, as a job's exit does (as in tests/training/test_loggers.py).
    wandb.teardown()
    (run,) = offline_runs(tmp_path)
    assert run.run_id == res["wandb"]["id"] and run.exit_code == 1


def test_classification_task_end_to_end(tmp_path):
    cfg = compose_config("train", ["logger=csv", "data=digits", *FAST, "trainer.max_epochs=2"], output_dir=tmp_path)
    train(cfg)
    res = results(tmp_path)
    assert res["status"] == "completed"
    # val/acc is the accuracy of the best checkpoint on the validated batches (FAST: the first 2 batches)
    (best,) = tmp_path.glob("checkpoints/best-*.ckpt")
    model = SequenceModel.load_from_checkpoint(best, weights_only=True).eval()
    dm = DigitsDataModule()
    dm.setup()
    for split in ("val", "test"):
        x, y = dm.datasets[split][:2 * dm.batch_size]
        with torch.no_grad():
            accuracy = (model(x)[0].argmax(-1) == y).float().mean().item()
        assert res["metrics"][f"{split}/acc"] == pytest.approx(accuracy)
    assert not list(tmp_path.glob("plots/*.png"))  # prediction plots are for regression tasks


@pytest.mark.slow  # trains 8 epochs; test_classification_task_end_to_end is the fast lane's classification run
def test_the_shipped_classification_task_is_learned(tmp_path):
    """The default peephole LSTM (32 units) reads the 8x8 digits row by row: 8 epochs on the whole
    training split (about 11 s of CPU time) give a test accuracy far above chance (0.10); this run
    scores 0.87."""
    cfg = compose_config("train", ["logger=none", "data=digits", "trainer.max_epochs=8", "extras.print_config=false",
                                   "callbacks.model_summary=null", "callbacks.rich_progress_bar=null",
                                   "+trainer.enable_progress_bar=false"], output_dir=tmp_path)
    train(cfg)
    res = results(tmp_path)
    assert res["status"] == "completed"
    assert res["metrics"]["test/acc"] >= 0.75, res["metrics"]


@pytest.mark.parametrize("data, epochs_run", [("gers_gts", 1), pytest.param("gers_pfg", 3, marks=pytest.mark.slow)])
def test_stop_when_solved_stops_only_a_solved_timing_run(tmp_path, data, epochs_run):
    """gers_timing's callback (conf/callbacks/stop_when_solved.yaml) reads the logged val/solve_rate: with
    a threshold every solve rate passes, a spike task stops after its first epoch; PFG, which has no solve
    rate, trains every epoch of its budget instead of failing on the missing metric."""
    cfg = compose_config("train", ["logger=none", "callbacks=[default,stop_when_solved]", *FAST, "trainer.max_epochs=3",
                                   "callbacks.stop_when_solved.stopping_threshold=-1", f"data={data}",
                                   "data.n_train=64", "data.n_val=32", "data.n_test=32"], output_dir=tmp_path)
    train(cfg)
    epochs = [row.split(",")[0] for row in (tmp_path / "history.csv").read_text().splitlines()[1:]]
    assert epochs == [str(e) for e in range(epochs_run)]
    assert results(tmp_path)["status"] == "completed"
