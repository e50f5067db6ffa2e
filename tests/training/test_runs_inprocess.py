"""train() / evaluate() on composed configs, in-process: one fast_dev_run per datamodule, arch and task."""
from __future__ import annotations

import pytest

from conftest import CONF, FAST, compose_config, results
from peephole_lstm.data import DataError
from peephole_lstm.training import train

TASK_METRICS = {
    "forecast": {"val/mse", "val/mae", "val/nrmse"},
    "seq2seq": {"val/mse", "val/mae", "val/nrmse"},
    "classify": {"val/acc"},
    "lm": {"val/bpc", "val/ppl"},
}
# Small data so a fast_dev_run builds in well under a second (sizes are each datamodule's own args).
DATA_SIZES = {"mackey_glass": ["data.length=300"]}


def datamodule_options() -> list[str]:
    return sorted(p.stem for p in (CONF / "data").glob("*.yaml") if p.stem != "csv")  # csv: needs a path


def fit(tmp_path, *overrides):
    cfg = compose_config("train", ["logger=none", "debug=fdr", *FAST, *overrides], output_dir=tmp_path)
    value = train(cfg)
    return cfg, value, results(tmp_path)


@pytest.mark.parametrize("data", datamodule_options())
def test_fast_dev_run_per_datamodule(tmp_path, data):
    cfg, value, res = fit(tmp_path, f"data={data}", *DATA_SIZES.get(data, []))
    assert res["status"] == "completed" and res["error"] is None
    metrics = set(res["metrics"])
    assert {"train/loss", "val/loss", "test/loss"} <= metrics
    assert any(TASK_METRICS[t] <= metrics for t in TASK_METRICS), metrics
    assert value == res["metrics"]["val/loss"]
    assert res["overrides"][:2] == ["logger=none", "debug=fdr"]


@pytest.mark.parametrize("model", ["model.arch=peephole", "model.arch=lstm", "model.arch=gru", "model=bilstm",
                                   "model.variant=CIFG", "model.peephole=full"])
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
