"""The sweep report on hand-written job dirs in exactly the run-directory contract's format."""
from __future__ import annotations

import csv
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml

from peephole_lstm.sweeps import discover_jobs, jobs_from_runs, write_report
from peephole_lstm.sweeps.wandb_api import WandbUnavailable, fetch_runs

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "sweep_report.py"
PEEPHOLES = ["none", "diagonal", "full"]
SEEDS = [0, 1, 2, 3]
FAILED_JOB, MISSING_JOB = 4, 7  # (diagonal, seed 0) and (diagonal, seed 3)


def nrmse(peephole: str, seed: int) -> float:
    # Distinct, irregular values so a wrong grouping or an off-by-one changes the statistics.
    return round(0.1 * (1 + PEEPHOLES.index(peephole)) + 0.013 * seed**2 + 0.001 * len(peephole), 6)


def write_job(sweep: Path, num: int, overrides: list[str], results: dict | None) -> Path:
    """One Hydra multirun job dir as train.py leaves it (see docs/configuration.md, "Run directory")."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (job / ".hydra" / "hydra.yaml").write_text("hydra: {}\n")
    (job / "config.yaml").write_text("seed: 0\n")
    if results is not None:
        (job / "results.json").write_text(json.dumps(results))
    return job


def results(overrides, seed, status="completed", metrics=None, error=None, run_dir="") -> dict:
    return {
        "status": status, "error": error, "metrics": metrics or {}, "overrides": overrides, "seed": seed,
        "run_dir": run_dir, "package_version": "0.1.0", "git_commit": None,
        "wandb": {"id": "abc", "group": "sweep", "dir": f"{run_dir}/wandb"},
    }


@pytest.fixture
def sweep(tmp_path) -> Path:
    """3 peephole settings x 4 seeds = 12 jobs (so job "10" must sort after "9"); one failed, one missing."""
    sweep = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    num = 0
    for peephole in PEEPHOLES:
        for seed in SEEDS:
            # Hydra's order: the sweep's overrides then the common ones given on the command line.
            overrides = [f"model.peephole={peephole}", f"seed={seed}", "trainer.max_epochs=1"]
            if num == FAILED_JOB:
                res = results(overrides, seed, status="failed", error="Traceback ...\nRuntimeError: boom at step 3")
            elif num == MISSING_JOB:
                res = None
            else:
                v = nrmse(peephole, seed)
                res = results(overrides, seed, metrics={"val/loss": v / 2, "test/loss": v * v, "test/nrmse": v})
            write_job(sweep, num, overrides, res)
            num += 1
    (sweep / "multirun.yaml").write_text("hydra: {}\n")  # Hydra's sweep-level file, not a job
    return sweep


def expected(peephole: str) -> list[float]:
    bad = {FAILED_JOB, MISSING_JOB}
    return [nrmse(peephole, s) for s in SEEDS if PEEPHOLES.index(peephole) * len(SEEDS) + s not in bad]


def table_rows(markdown: str) -> dict[str, list[str]]:
    """First Markdown table of the report: variant -> its cells."""
    rows, in_table = {}, False
    for line in markdown.splitlines():
        if line.startswith("| variant"):
            in_table = True
        elif in_table and line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
        elif in_table and not line.startswith("|"):
            break
    return rows


def test_discover_reads_statuses_in_job_order(sweep):
    jobs = discover_jobs(sweep)
    assert [j.name for j in jobs] == [str(i) for i in range(12)]
    statuses = {j.name: j.status for j in jobs}
    assert statuses.pop(str(FAILED_JOB)) == "failed"
    assert statuses.pop(str(MISSING_JOB)) == "missing"
    assert set(statuses.values()) == {"completed"}
    assert jobs[MISSING_JOB].seed == 3  # recovered from .hydra/overrides.yaml
    assert jobs[5].metrics["test/nrmse"] == nrmse("diagonal", 1)


def test_markdown_table_has_mean_std_best_per_variant(sweep, tmp_path):
    report = write_report(discover_jobs(sweep), tmp_path / "out", metrics=["test/nrmse"])
    md = report.markdown.read_text()
    rows = table_rows(md)
    assert set(rows) == {f"model.peephole={p}" for p in PEEPHOLES}  # common override and seed left out
    for p in PEEPHOLES:
        values = expected(p)
        _, jobs, failed, mean_std, best, n = rows[f"model.peephole={p}"]
        assert jobs == "4"
        assert failed == ("2" if p == "diagonal" else "0")
        assert mean_std.strip("*") == f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.4g}"
        assert best == f"{min(values):.4g}"
        assert n == str(len(values))
    # lower is better for nrmse: "none" has the smallest values and its mean is the bold one
    assert rows["model.peephole=none"][3].startswith("**")
    assert not rows["model.peephole=full"][3].startswith("**")
    failed_section = md.split("## Failed or incomplete jobs", 1)[1]
    assert "RuntimeError: boom at step 3" in failed_section
    assert "| 7 | model.peephole=diagonal | 3 | missing |" in failed_section
    assert "box_test_nrmse.png" in md


def test_csv_columns_and_values(sweep, tmp_path):
    report = write_report(discover_jobs(sweep), tmp_path / "out", metrics=["test/nrmse", "test/loss"])
    with open(report.csv) as f:
        rows = list(csv.DictReader(f))
    stats = ["n", "mean", "std", "best"]
    assert list(rows[0]) == (["variant", "model.peephole", "jobs", "failed"]
                             + [f"test/nrmse_{s}" for s in stats] + [f"test/loss_{s}" for s in stats])
    assert [r["model.peephole"] for r in rows] == PEEPHOLES  # sweep order
    for r in rows:
        values = expected(r["model.peephole"])
        assert float(r["test/nrmse_mean"]) == pytest.approx(statistics.mean(values))
        assert float(r["test/nrmse_std"]) == pytest.approx(statistics.stdev(values))
        assert float(r["test/loss_best"]) == pytest.approx(min(v * v for v in values))
        assert int(r["test/nrmse_n"]) == len(values)
    with open(report.jobs_csv) as f:
        jobs = list(csv.DictReader(f))
    assert len(jobs) == 12 and jobs[FAILED_JOB]["status"] == "failed" and jobs[MISSING_JOB]["status"] == "missing"


def test_box_plot_png_is_written_and_not_blank(sweep, tmp_path):
    report = write_report(discover_jobs(sweep), tmp_path / "out")
    assert set(report.plots) == {"test/loss", "test/nrmse"}  # default: every test metric
    png = report.plots["test/nrmse"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 400
    # boxes, points and labels: many distinct colours, not a blank canvas
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20


def test_greff_reference_gets_welch_p_values(tmp_path):
    sweep = tmp_path / "sweep"
    num = 0
    for variant, centre in [("vanilla", 1.0), ("NIG", 1.0), ("NFG", 3.0)]:
        for seed in range(4):
            overrides = [f"model.variant={variant}", f"seed={seed}"]
            value = centre + 0.1 * seed * (-1) ** seed
            write_job(sweep, num, overrides, results(overrides, seed, metrics={"test/nrmse": value}))
            num += 1
    report = write_report(discover_jobs(sweep), tmp_path / "out")
    p = {r["variant"]: r["test/nrmse_p_vs_ref"] for _, r in report.table.iterrows()}
    assert math.isnan(p["model.variant=vanilla"])
    assert p["model.variant=NIG"] > 0.5  # same values as vanilla
    assert p["model.variant=NFG"] < 0.001  # clearly worse
    assert "Welch t-test against the reference variant `model.variant=vanilla`" in report.markdown.read_text()


def test_single_variant_and_unreadable_results(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in range(2):
        write_job(sweep, seed, [f"seed={seed}"], results([f"seed={seed}"], seed, metrics={"val/loss": seed + 1.0}))
    (write_job(sweep, 2, ["seed=2"], None) / "results.json").write_text("{not json")
    jobs = discover_jobs(sweep)
    assert jobs[2].status == "invalid" and "unreadable results.json" in jobs[2].error
    report = write_report(jobs, tmp_path / "out")  # no test metrics: falls back to val
    assert list(report.plots) == ["val/loss"]
    row = table_rows(report.markdown.read_text())["(all jobs)"]
    assert row[1:4] == ["3", "1", "**1.5 ± 0.7071**"]


def test_bad_input_errors(sweep, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_jobs(tmp_path / "nope")
    with pytest.raises(ValueError, match="no Hydra job dirs"):
        discover_jobs(tmp_path)
    with pytest.raises(ValueError, match=r"test/acc.*available: test/loss, test/nrmse, val/loss"):
        write_report(discover_jobs(sweep), tmp_path / "out", metrics=["test/acc"])
    with pytest.raises(ValueError, match="mode='best'.*'min', 'max'"):
        write_report(discover_jobs(sweep), tmp_path / "out", mode="best")
    with pytest.raises(ValueError, match="reference 'LSTM' matches 0 variants"):
        write_report(discover_jobs(sweep), tmp_path / "out", reference="LSTM")


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_writes_into_sweep_dir_by_default(sweep):
    proc = run_cli(sweep, "--metric", "test/nrmse", "--mode", "min")
    assert proc.returncode == 0, proc.stderr
    assert {"report.md", "report.csv", "jobs.csv", "box_test_nrmse.png"} <= {p.name for p in sweep.iterdir()}
    assert "model.peephole=full" in proc.stdout
    assert len(discover_jobs(sweep)) == 12  # the report files are not mistaken for jobs


def test_cli_errors_are_clear(sweep, tmp_path):
    proc = run_cli(tmp_path / "missing")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = run_cli(sweep, "--metric", "test/bpc", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "available: test/loss" in proc.stderr
    proc = run_cli(sweep, "--wandb", "me/proj")
    assert proc.returncode == 2 and "exactly one of SWEEP_DIR or --wandb" in proc.stderr
    proc = run_cli("--wandb", "me/proj", env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 2 and "WANDB_MODE=offline" in proc.stderr and "wandb login" in proc.stderr


# --- W&B source: aggregation on run-like records; the API only up to its credential checks ---------


def wandb_run(name, peephole, seed, state="finished", value=None, with_overrides=False):
    config = {
        "seed": seed,
        "model": {"peephole": peephole, "hidden_size": 32},
        "data": {"_target_": "peephole_lstm.data.TimingDataModule", "seed": seed},
        "paths": {"output_dir": f"/runs/{name}"},
        "run_dir": f"/runs/{name}",
    }
    if with_overrides:
        config["overrides"] = [f"model.peephole={peephole}", f"seed={seed}"]
    summary = {"test/nrmse": value, "_step": 10, "_runtime": 3.2} if value is not None else {"_step": 2}
    return {"name": name, "state": state, "config": config, "summary": summary}


@pytest.mark.parametrize("with_overrides", [False, True])
def test_wandb_runs_aggregate_like_local_jobs(tmp_path, with_overrides):
    runs, values = [], {p: [] for p in PEEPHOLES}
    for i, (p, seed) in enumerate((p, s) for p in PEEPHOLES for s in range(3)):
        if (p, seed) == ("full", 2):
            runs.append(wandb_run(f"run{i}", p, seed, state="crashed", with_overrides=with_overrides))
            continue
        values[p].append(0.5 + PEEPHOLES.index(p) + 0.07 * seed**2)
        runs.append(wandb_run(f"run{i}", p, seed, value=values[p][-1], with_overrides=with_overrides))
    jobs = jobs_from_runs(runs)
    assert [j.seed for j in jobs] == [0, 1, 2] * 3
    assert jobs[-1].status == "failed" and "crashed" in jobs[-1].error
    report = write_report(jobs, tmp_path / "out")
    table = report.table.set_index("variant")
    assert list(table.index) == [f"model.peephole={p}" for p in PEEPHOLES]
    for p in PEEPHOLES:
        row = table.loc[f"model.peephole={p}"]
        assert row["test/nrmse_mean"] == pytest.approx(statistics.mean(values[p]))
        assert row["test/nrmse_std"] == pytest.approx(statistics.stdev(values[p]))
        assert row["failed"] == (1 if p == "full" else 0)


def test_wandb_api_refuses_offline_mode(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(WandbUnavailable, match="WANDB_MODE=offline.*wandb login"):
        fetch_runs("me/proj", group="sweep")


def test_wandb_api_without_credentials_is_a_clear_error(monkeypatch, tmp_path):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    # an empty home and config dir: no netrc, no wandb settings, so no key to find
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    with pytest.raises(WandbUnavailable, match="No API key configured.*wandb login"):
        fetch_runs("me/proj")
    with pytest.raises(ValueError, match="ENTITY/PROJECT"):
        fetch_runs("just-a-project")
