"""Each ready experiment end to end on a tiny budget: `python train.py experiment=NAME` runs its whole
grid as a multirun by itself (one seed here), every job completes with its task's metrics and a
per-epoch history, and scripts/reproduce_results.py turns a sweep into a per-dataset report."""
from __future__ import annotations

import json
from itertools import product

import pytest
import yaml

from tests.helpers.configs import compose_sweep_params
from tests.helpers.scripts import explain, job_dirs, results, run_script, run_sweep

pytestmark = pytest.mark.slow  # every ready experiment's grid as a multirun, then reproduce_results.py

# One seed, two training batches, one epoch... of the experiment's real datasets and models.
TINY_BUDGET = [
    "seed=10", "trainer.max_epochs=2", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1", "logger=csv", "extras.print_config=false", "callbacks.model_summary=null",
    "callbacks.rich_progress_bar=null", "callbacks.prediction_plot=null", "+trainer.enable_progress_bar=false",
]


# greff_jsb: four chorales per split, parsed into the test's own cache (not the user's)
EXTRA = {"greff_jsb": ["data.limit_chorales=4", "data.cache_dir=${hydra:runtime.cwd}/chorales"]}


@pytest.mark.parametrize("experiment", ["gers_timing", "peephole_ablation", "greff_variants", "greff_jsb",
                                        "gers_msd_external"])
def test_experiment_runs_its_grid_by_itself(experiment, tmp_path):
    params, cfg = compose_sweep_params(experiment)
    params.pop("seed")
    proc = run_sweep(f"experiment={experiment}", *TINY_BUDGET, *EXTRA.get(experiment, []), cwd=tmp_path,
                     timeout=900)  # no -m
    assert proc.returncode == 0, explain(proc)
    jobs = job_dirs(tmp_path / "sweep")
    assert len(jobs) == len(list(product(*params.values())))  # every arm of the grid ran
    for job in jobs:
        res = results(job)
        assert res["status"] == "completed", res["error"]
        data = yaml.safe_load((job / "config.yaml").read_text())["data"]
        if data["_target_"].endswith("TimingDataModule") and data["task"] != "pfg":  # a task with exact timing
            assert {"val/solve_rate", "test/solve_rate", "test/timing_error"} <= set(res["metrics"])
        elif data["_target_"].endswith("JSBChoralesDataModule"):
            assert "test/nll" in res["metrics"] and "test/solve_rate" not in res["metrics"]
        else:
            assert "test/nrmse" in res["metrics"] and "test/solve_rate" not in res["metrics"]
        history = (job / "history.csv").read_text().splitlines()
        assert history[0].startswith("epoch,") and [r.split(",")[0] for r in history[1:]] == ["0", "1"]


def test_reproduce_results_writes_the_report_and_the_wall_time(tmp_path):
    proc = run_script("scripts/reproduce_results.py", "gers_msd_external", "--out", tmp_path / "docs",
                      "--runs", tmp_path / "runs", "--", *TINY_BUDGET, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "docs" / "gers_msd_external"
    run = json.loads((out / "run.json").read_text())
    assert run["wall_seconds"] > 0 and run["command"].startswith("python train.py experiment=gers_msd_external")
    report = (out / "report.md").read_text()
    assert "model.peephole=none" in report and "model.peephole=diagonal" in report
    assert "test/solve_rate" in report
