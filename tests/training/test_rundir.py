"""The run-directory layout (peephole_lstm.rundir): one definition that the config, the writers and the
readers agree on, and that sweeps can read without the training code."""
from __future__ import annotations

import json
import math
from fnmatch import fnmatch
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.helpers.configs import compose_config
from peephole_lstm import rundir


def test_the_callbacks_write_where_the_layout_says(tmp_path):
    """conf/callbacks/*.yaml spell the run dir's paths out; they must be the ones rundir defines."""
    cfg = compose_config("train", output_dir=tmp_path)
    callbacks = OmegaConf.to_container(cfg.callbacks, resolve=True)
    last = instantiate(callbacks["last_checkpoint"])
    assert Path(last.dirpath) / f"{last.filename}{last.FILE_EXTENSION}" == rundir.last_checkpoint(tmp_path)
    assert Path(callbacks["model_checkpoint"]["dirpath"]) == rundir.checkpoint_dir(tmp_path)
    best = callbacks["model_checkpoint"]["filename"].format(epoch=7) + last.FILE_EXTENSION
    assert fnmatch(best, rundir.BEST_CHECKPOINT_GLOB) and not fnmatch(rundir.LAST_CHECKPOINT, rundir.BEST_CHECKPOINT_GLOB)
    assert Path(callbacks["metric_history"]["path"]) == rundir.history_path(tmp_path)
    assert Path(callbacks["prediction_plot"]["dirpath"]) == rundir.plots_dir(tmp_path)


def test_results_round_trip(tmp_path):
    assert rundir.read_results(tmp_path) is None  # no results.json: the job left no result
    path = rundir.write_results(tmp_path, status=rundir.FAILED, error="boom", seed=3, wandb=None,
                                metrics={"val/loss": 0.5, "test/nrmse": math.nan, "train/loss": math.inf},
                                overrides=["seed=3"])
    assert path == tmp_path / "results.json" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
    written = json.loads(path.read_text())  # plain JSON: NaN and Inf are null
    assert written["metrics"] == {"test/nrmse": None, "train/loss": None, "val/loss": 0.5}
    assert rundir.read_results(tmp_path) == written
    assert written["status"] == "failed" and written["error"] == "boom" and written["overrides"] == ["seed=3"]
    assert written["run_dir"] == str(tmp_path.resolve()) and written["seed"] == 3

    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="top level is not a JSON object"):
        rundir.read_results(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError):
        rundir.read_results(tmp_path)
