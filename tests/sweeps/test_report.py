"""The sweep report on hand-written job dirs in exactly the run-directory contract's format."""
from __future__ import annotations

import csv
import json
import math
import statistics
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml
from scipy.stats import ttest_ind

from peephole_lstm.sweeps import discover_jobs, jobs_from_runs, read_history, split_groups, write_report
from peephole_lstm.sweeps.aggregate import ci95, epochs_to_threshold, holm, median_epochs
from peephole_lstm.sweeps.plot import curve_band
from peephole_lstm.sweeps.wandb_api import WandbUnavailable, fetch_runs
from tests.helpers.scripts import run_script

PEEPHOLES = ["none", "diagonal", "full"]
SEEDS = [0, 1, 2, 3]
FAILED_JOB, MISSING_JOB = 4, 7  # (diagonal, seed 0) and (diagonal, seed 3)
# Student t quantiles t_{0.975, df} from a printed table, independent of the code under test.
T975 = {1: 12.706, 2: 4.3027, 3: 3.1824, 4: 2.7764}


def nrmse(peephole: str, seed: int) -> float:
    # Distinct, irregular values so a wrong grouping or an off-by-one changes the statistics.
    return round(0.1 * (1 + PEEPHOLES.index(peephole)) + 0.013 * seed**2 + 0.001 * len(peephole), 6)


def write_job(sweep: Path, num: int, overrides: list[str], results: dict | None, history: str | None = None) -> Path:
    """One Hydra multirun job dir as train.py leaves it (see docs/configuration.md, "Run directory")."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (job / ".hydra" / "hydra.yaml").write_text("hydra: {}\n")
    (job / "config.yaml").write_text("seed: 0\n")
    if results is not None:
        (job / "results.json").write_text(json.dumps(results))
    if history is not None:
        (job / "history.csv").write_text(history)
    return job


def results(overrides, seed, status="completed", metrics=None, error=None, run_dir="") -> dict:
    return {
        "status": status, "error": error, "metrics": metrics or {}, "overrides": overrides, "seed": seed,
        "run_dir": run_dir, "package_version": "0.1.0", "git_commit": None,
        "wandb": {"id": "abc", "group": "sweep", "dir": f"{run_dir}/wandb"},
    }


def write_sweep(sweep: Path, jobs: list[tuple[list[str], dict | None, str | None]]) -> Path:
    """Job dirs 0..N-1 from (overrides, metrics or None for a missing results.json, history.csv text)."""
    for num, (overrides, metrics, history) in enumerate(jobs):
        seed = int(next(o.split("=")[1] for o in overrides if o.startswith("seed=")))
        res = None if metrics is None else results(overrides, seed, metrics=metrics)
        write_job(sweep, num, overrides, res, history)
    return sweep


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


def sections(markdown: str) -> dict[str, str]:
    """The report's "## " sections: heading -> text."""
    parts = markdown.split("\n## ")[1:]
    return {p.split("\n", 1)[0]: p.split("\n", 1)[1] for p in parts}


def table_rows(markdown: str, metric: str | None = None) -> dict[str, list[str]]:
    """The first Markdown table (after the "### <metric>" heading, if given): first cell -> its cells."""
    if metric is not None:
        markdown = markdown.split(f"\n### {metric} ", 1)[1]
    rows, in_table = {}, False
    for line in markdown.splitlines():
        if line.startswith("| arm"):
            in_table = True
        elif in_table and line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
        elif in_table and not line.startswith("|"):
            break
    return rows


def assert_png_not_blank(png: Path) -> None:
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 400
    # lines, boxes, points and labels: many distinct colours, not a blank canvas
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20


# --- one group: the classic peephole ablation -------------------------------------------------


def test_discover_reads_statuses_in_job_order(sweep):
    jobs = discover_jobs(sweep)
    assert [j.name for j in jobs] == [str(i) for i in range(12)]
    statuses = {j.name: j.status for j in jobs}
    assert statuses.pop(str(FAILED_JOB)) == "failed"
    assert statuses.pop(str(MISSING_JOB)) == "missing"
    assert set(statuses.values()) == {"completed"}
    assert jobs[MISSING_JOB].seed == 3  # recovered from .hydra/overrides.yaml
    assert jobs[5].metrics["test/nrmse"] == nrmse("diagonal", 1)
    assert all(j.history == {} for j in jobs)  # no history.csv


def test_markdown_table_has_stats_per_arm(sweep, tmp_path):
    report = write_report(discover_jobs(sweep), tmp_path / "out", metrics=["test/nrmse"])
    md = report.markdown.read_text()
    assert list(sections(md)) == ["(all jobs)", "Failed or incomplete jobs"]  # no data overrides: one group
    rows = table_rows(md, "test/nrmse")
    assert set(rows) == {f"model.peephole={p}" for p in PEEPHOLES}  # common override and seed left out
    for p in PEEPHOLES:
        values = expected(p)
        _, jobs, failed, n, mean_std, ci, per_seed, best, p_cell, p_holm = rows[f"model.peephole={p}"]
        assert jobs == "4"
        assert failed == ("2" if p == "diagonal" else "0")
        assert n == str(len(values))
        assert mean_std.strip("*") == f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.4g}"
        # the CI by hand (t from a printed table, to its 5 digits), then as printed
        half = T975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))
        row = report.table.set_index("arm").loc[f"model.peephole={p}"]
        assert row["test/nrmse_ci_low"] == pytest.approx(statistics.mean(values) - half, abs=1e-4 * half)
        assert row["test/nrmse_ci_high"] == pytest.approx(statistics.mean(values) + half, abs=1e-4 * half)
        assert ci == f"[{row['test/nrmse_ci_low']:.4g}, {row['test/nrmse_ci_high']:.4g}]"
        assert per_seed == ", ".join(f"{v:.4g}" for v in values)
        assert best == f"{min(values):.4g}"
        # the default reference: the peephole-free arm (no vanilla here)
        if p == "none":
            assert (p_cell, p_holm) == ("ref.", "ref.")
        else:
            assert float(p_cell) <= float(p_holm) <= 1
    # lower is better for nrmse: "none" has the smallest values and its mean is the bold one
    assert rows["model.peephole=none"][4].startswith("**")
    assert not rows["model.peephole=full"][4].startswith("**")
    assert "Reference arm: `model.peephole=none`" in md and "4 seeds (0, 1, 2, 3)" in md
    assert "Set in every job: `trainer.max_epochs=1`" in md
    failed_section = sections(md)["Failed or incomplete jobs"]
    assert "RuntimeError: boom at step 3" in failed_section
    assert "| 7 | (all jobs) | model.peephole=diagonal | 3 | missing |" in failed_section
    assert "box_test_nrmse__all.png" in md


@pytest.mark.slow  # each report renders its plots (most of a second); the fast lane keeps the markdown table
def test_csv_columns_and_values(sweep, tmp_path):
    report = write_report(discover_jobs(sweep), tmp_path / "out", metrics=["test/nrmse", "test/loss"])
    with open(report.csv) as f:
        rows = list(csv.DictReader(f))
    stats = ["n", "mean", "std", "ci_low", "ci_high", "best", "values", "p", "p_holm"]
    assert list(rows[0]) == (["group", "arm", "model.peephole", "reference", "jobs", "failed"]
                             + [f"test/nrmse_{s}" for s in stats] + [f"test/loss_{s}" for s in stats])
    assert [r["model.peephole"] for r in rows] == PEEPHOLES  # sweep order
    assert {r["group"] for r in rows} == {"(all jobs)"}
    for r in rows:
        values = expected(r["model.peephole"])
        assert float(r["test/nrmse_mean"]) == pytest.approx(statistics.mean(values))
        assert float(r["test/nrmse_std"]) == pytest.approx(statistics.stdev(values))
        assert float(r["test/loss_best"]) == pytest.approx(min(v * v for v in values))
        assert int(r["test/nrmse_n"]) == len(values)
        assert [float(v) for v in r["test/nrmse_values"].split(", ")] == values
    with open(report.jobs_csv) as f:
        jobs = list(csv.DictReader(f))
    assert len(jobs) == 12 and jobs[FAILED_JOB]["status"] == "failed" and jobs[MISSING_JOB]["status"] == "missing"
    assert jobs[5]["group"] == "(all jobs)" and jobs[5]["arm"] == "model.peephole=diagonal"


@pytest.mark.slow  # matplotlib renders and reads back the PNG
def test_box_plot_png_is_written_and_not_blank(sweep, tmp_path):
    report = write_report(discover_jobs(sweep), tmp_path / "out")
    (group,) = report.groups
    assert set(group.box_plots) == {"test/loss", "test/nrmse"}  # default: every test metric
    assert group.curve_plots == {}  # no history.csv, no learning curves
    assert_png_not_blank(group.box_plots["test/nrmse"])


@pytest.mark.slow  # renders plots; test_markdown_table_has_stats_per_arm checks p-values in the fast lane
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
    p = {r["arm"]: r["test/nrmse_p"] for _, r in report.table.iterrows()}
    assert math.isnan(p["model.variant=vanilla"])
    assert p["model.variant=NIG"] > 0.5  # same values as vanilla
    assert p["model.variant=NFG"] < 0.001  # clearly worse
    md = report.markdown.read_text()
    assert "Reference arm: `model.variant=vanilla`" in md
    assert "k = 2 comparisons with `model.variant=vanilla`" in md


def test_single_variant_and_unreadable_results(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in range(2):
        write_job(sweep, seed, [f"seed={seed}"], results([f"seed={seed}"], seed, metrics={"val/loss": seed + 1.0}))
    (write_job(sweep, 2, ["seed=2"], None) / "results.json").write_text("{not json")
    jobs = discover_jobs(sweep)
    assert jobs[2].status == "invalid" and "unreadable results.json" in jobs[2].error
    report = write_report(jobs, tmp_path / "out")  # no test metrics: falls back to val
    assert list(report.groups[0].box_plots) == ["val/loss"]
    row = table_rows(report.markdown.read_text())["(all jobs)"]
    assert row[1:5] == ["3", "1", "2", "**1.5 ± 0.7071**"]
    assert "no p-values" not in report.markdown.read_text()  # one arm: nothing to compare


# --- never pooled: one group per dataset/task -------------------------------------------------

DATASETS = {"timing": 10.0, "mackey_glass": 0.0}  # offsets far apart: pooling would show at once


@pytest.fixture
def two_datasets(tmp_path) -> Path:
    """data=timing: 3 arms x 3 seeds; data=mackey_glass: 2 arms x 4 seeds (its n differs)."""
    jobs = []
    for data, offset in DATASETS.items():
        arms = PEEPHOLES if data == "timing" else PEEPHOLES[:2]
        seeds = [0, 1, 2] if data == "timing" else [0, 1, 2, 3]
        for p in arms:
            for s in seeds:
                metrics = {"test/nrmse": offset + nrmse(p, s)}
                jobs.append(([f"data={data}", f"model.peephole={p}", f"seed={s}"], metrics, None))
    return write_sweep(tmp_path / "sweep", jobs)


def test_datasets_are_never_pooled(two_datasets, tmp_path):
    report = write_report(discover_jobs(two_datasets), tmp_path / "out")
    assert [g.group.label for g in report.groups] == ["data=timing", "data=mackey_glass"]
    md = report.markdown.read_text()
    assert list(sections(md)) == ["data=timing", "data=mackey_glass"]
    for heading, text in sections(md).items():
        data = heading.split("=")[1]
        seeds = [0, 1, 2] if data == "timing" else [0, 1, 2, 3]
        rows = table_rows(text, "test/nrmse")
        assert set(rows) == {f"model.peephole={p}" for p in (PEEPHOLES if data == "timing" else PEEPHOLES[:2])}
        for arm, cells in rows.items():
            values = [DATASETS[data] + nrmse(arm.split("=")[1], s) for s in seeds]
            assert cells[3] == str(len(seeds))  # n: this group's seeds only
            assert cells[4].strip("*") == f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.4g}"
        assert f"box_test_nrmse__data-{data}.png" in text  # a figure per group, named after it
    assert {p.name for p in report.plots} == {"box_test_nrmse__data-timing.png", "box_test_nrmse__data-mackey_glass.png"}
    with open(report.csv) as f:
        rows = list(csv.DictReader(f))
    assert [(r["group"], r["data"], r["arm"]) for r in rows] == (
        [("data=timing", "timing", f"model.peephole={p}") for p in PEEPHOLES]
        + [("data=mackey_glass", "mackey_glass", f"model.peephole={p}") for p in PEEPHOLES[:2]])
    # the Welch test compares arms within a group: the timing offset never enters a p-value
    none = [DATASETS["mackey_glass"] + nrmse("none", s) for s in range(4)]
    diag = [DATASETS["mackey_glass"] + nrmse("diagonal", s) for s in range(4)]
    assert float(rows[4]["test/nrmse_p"]) == pytest.approx(ttest_ind(diag, none, equal_var=False).pvalue)


def test_recipes_are_datasets_too(tmp_path):
    # gers_timing and peephole_ablation sweep recipe=... (a dataset with its budget), not data=...
    jobs = [([f"recipe={r}", f"model.peephole={p}", f"seed={s}"], {"test/nrmse": 1.0 + s}, None)
            for r in ["gers_gts", "mackey_glass"] for p in ["none", "full"] for s in range(2)]
    groups = split_groups(discover_jobs(write_sweep(tmp_path / "sweep", jobs)))
    assert [g.label for g in groups] == ["recipe=gers_gts", "recipe=mackey_glass"]
    assert [[a.label for a in g.arms] for g in groups] == [["model.peephole=none", "model.peephole=full"]] * 2


@pytest.mark.slow
def test_data_sub_keys_define_groups_and_group_by_overrides_them(tmp_path):
    jobs = []
    for task in ["msd", "gts"]:
        for p in ["none", "diagonal"]:
            for s in range(2):
                value = (1.0 if task == "msd" else 5.0) + PEEPHOLES.index(p) + 0.1 * s
                jobs.append(([f"data.task={task}", f"model.peephole={p}", f"seed={s}", "data.msd_target=spike"],
                             {"test/nrmse": value}, None))
    sweep = write_sweep(tmp_path / "sweep", jobs)
    groups = split_groups(discover_jobs(sweep))
    assert [g.label for g in groups] == ["data.msd_target=spike, data.task=msd", "data.msd_target=spike, data.task=gts"]
    assert [[a.label for a in g.arms] for g in groups] == [["model.peephole=none", "model.peephole=diagonal"]] * 2

    proc = run_cli(sweep, "--group-by", "model.peephole", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "o" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    # now the peephole setting is the group and the task is the arm
    assert [(r["group"], r["arm"]) for r in rows] == [
        ("model.peephole=none", "data.task=msd"), ("model.peephole=none", "data.task=gts"),
        ("model.peephole=diagonal", "data.task=msd"), ("model.peephole=diagonal", "data.task=gts")]
    assert float(rows[1]["test/nrmse_mean"]) == pytest.approx(5.05)
    assert (tmp_path / "o" / "box_test_nrmse__model.peephole-diagonal.png").is_file()

    report = write_report(discover_jobs(sweep), tmp_path / "o2", group_by=["data.task", "model.peephole"])
    md = report.markdown.read_text()
    # task x peephole: four groups of one arm each; data.msd_target (same everywhere) is now an arm key
    assert list(sections(md)) == ["data.task=msd, model.peephole=none", "data.task=msd, model.peephole=diagonal",
                                  "data.task=gts, model.peephole=none", "data.task=gts, model.peephole=diagonal"]
    assert "Set in every job: `data.msd_target=spike`" in md


# --- statistics by hand -----------------------------------------------------------------------


def test_ci95_by_hand():
    values = [1.0, 2.0, 4.0]
    mean, s = 7 / 3, math.sqrt(7 / 3)  # sum of squared deviations 42/9, over n - 1 = 2
    low, high = ci95(values)
    assert low == pytest.approx(mean - T975[2] * s / math.sqrt(3), rel=1e-4)
    assert high == pytest.approx(mean + T975[2] * s / math.sqrt(3), rel=1e-4)
    assert all(math.isnan(x) for x in ci95([1.0]))
    assert ci95([2.0, 2.0]) == (2.0, 2.0)


def hand_holm(ps: list[float]) -> list[float]:
    """Holm by hand: sorted p_i * (m - rank), made monotone, capped at 1."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, ps[i] * (m - rank)))
        adjusted[i] = running
    return adjusted


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 0.04 * 1 raised to 0.06: monotone
    assert holm([0.5, 0.6, 0.7]) == pytest.approx([1.0, 1.0, 1.0])  # capped at 1
    adjusted = holm([0.01, float("nan"), 0.04])  # a comparison without a p-value is not in the family
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)


@pytest.mark.slow  # each report renders its plots (most of a second): test_holm_by_hand is the fast lane's check
def test_report_holm_over_three_comparisons_by_hand(tmp_path):
    ref = [1.0, 1.1, 0.9, 1.05]
    arms = {"none": ref, "A": [x + 0.3 for x in ref], "B": [x + 0.15 + 0.01 * i for i, x in enumerate(ref)],
            "C": [x + 0.17 - 0.02 * i for i, x in enumerate(ref)]}
    jobs = [([f"model.peephole={a}", f"seed={s}"], {"test/nrmse": v}, None)
            for a, values in arms.items() for s, v in enumerate(values)]
    report = write_report(discover_jobs(write_sweep(tmp_path / "sweep", jobs)), tmp_path / "out")
    raw = [ttest_ind(arms[a], ref, equal_var=False).pvalue for a in "ABC"]
    want = hand_holm(raw)
    assert want[2] > raw[2]  # this data exercises the monotonicity step
    table = report.table.set_index("arm")
    for a, p, p_holm in zip("ABC", raw, want):
        assert table.loc[f"model.peephole={a}", "test/nrmse_p"] == pytest.approx(p)
        assert table.loc[f"model.peephole={a}", "test/nrmse_p_holm"] == pytest.approx(p_holm)
    rows = table_rows(report.markdown.read_text(), "test/nrmse")
    assert [rows[f"model.peephole={a}"][-2:] for a in "ABC"] == [[f"{p:.4g}", f"{h:.4g}"] for p, h in zip(raw, want)]
    assert "k = 3 comparisons with `model.peephole=none`" in report.markdown.read_text()


@pytest.mark.slow  # renders plots
def test_zero_variance_gives_no_made_up_p_value(tmp_path):
    solve = {"none": [1.0, 1.0, 1.0], "diagonal": [1.0, 1.0, 1.0], "full": [0.5, 0.7, 0.9]}
    jobs = [([f"model.peephole={a}", f"seed={s}"], {"test/solve_rate": v}, None)
            for a, values in solve.items() for s, v in enumerate(values)]
    report = write_report(discover_jobs(write_sweep(tmp_path / "sweep", jobs)), tmp_path / "out")
    md = report.markdown.read_text()
    rows = table_rows(md, "test/solve_rate")
    assert rows["model.peephole=diagonal"][-2:] == ["-†", "-†"]
    assert "† this arm and the reference gave the same value for every seed" in md
    # one arm without variance is still a valid Welch test; it is the only one in Holm's family
    with warnings.catch_warnings():  # scipy's precision warning on a constant sample
        warnings.simplefilter("ignore", RuntimeWarning)
        p = ttest_ind(solve["full"], solve["none"], equal_var=False).pvalue
    assert rows["model.peephole=full"][-2:] == [f"{p:.4g}", f"{p:.4g}"]
    assert "k = 1 comparison with" in md
    assert rows["model.peephole=none"][4] == "**1 ± 0**" and rows["model.peephole=none"][5] == "[1, 1]"


# --- the reference arm ------------------------------------------------------------------------


# Each report renders its plots (most of a second): the fast lane keeps the two refusals (no p-values, so
# fewer plots), the full suite the precedence rules.
@pytest.mark.parametrize("arms, want, note", [
    pytest.param(["model.variant=NIG", "model.variant=vanilla", "model.variant=NFG"], "model.variant=vanilla", None,
                 marks=pytest.mark.slow),
    # vanilla first, even when a peephole-free arm exists too
    pytest.param(["model.variant=vanilla model.peephole=diagonal", "model.variant=NP model.peephole=none"],
                 "model.peephole=diagonal, model.variant=vanilla", None, marks=pytest.mark.slow),
    pytest.param(["model.peephole=full", "model.peephole=none"], "model.peephole=none", None, marks=pytest.mark.slow),
    (["model.hidden_size=8", "model.hidden_size=16"], None, "no arm is labelled vanilla or peephole=none"),
    (["model.peephole=none model.hidden_size=8", "model.peephole=none model.hidden_size=16", "model.peephole=full"],
     None, "2 arms contain 'peephole=none'; choose one with --reference"),
])
def test_default_reference_rules(tmp_path, arms, want, note):
    jobs = [(["data=timing", *arm.split(), f"seed={s}"], {"test/nrmse": 1.0 + i + 0.1 * s * s}, None)
            for i, arm in enumerate(arms) for s in range(3)]
    report = write_report(discover_jobs(write_sweep(tmp_path / "sweep", jobs)), tmp_path / "out")
    ref = report.groups[0].group.reference
    md = report.markdown.read_text()
    if want is None:
        assert ref is None
        assert f"No reference arm ({note}" in md and "so no p-values." in md and "| p |" not in md
        assert report.table["test/nrmse_p"].isna().all()
    else:
        assert ref.label == want and f"Reference arm: `{want}`" in md
        assert report.table.set_index("arm")["test/nrmse_p"].notna().sum() == len(arms) - 1


@pytest.mark.slow  # four reports, each rendering its plots
def test_reference_option_per_group(tmp_path):
    sweep = tmp_path / "sweep"
    jobs = [([f"data={d}", f"model.hidden_size={h}", f"seed={s}"], {"test/nrmse": h + 0.1 * s * s}, None)
            for d, sizes in [("timing", [8, 16]), ("mackey_glass", [16, 32])] for h in sizes for s in range(3)]
    write_sweep(sweep, jobs)
    report = write_report(discover_jobs(sweep), tmp_path / "out", reference="size=8")
    timing, mg = (g.group for g in report.groups)
    assert timing.reference.label == "model.hidden_size=8"
    assert mg.reference is None  # it matches nothing there: that group has no tests, and says why
    assert "No reference arm (no arm matches --reference 'size=8')" in sections(report.markdown.read_text())["data=mackey_glass"]
    with pytest.raises(ValueError, match=r"reference 'size=' matches 2 arms in group 'data=timing'"):
        write_report(discover_jobs(sweep), tmp_path / "out", reference="size=")
    with pytest.raises(ValueError, match=r"reference 'LSTM' matches no arm; it must match one of: "):
        write_report(discover_jobs(sweep), tmp_path / "out", reference="LSTM")


# --- learning speed and learning curves from history.csv --------------------------------------


def history(solve: list[float | None], loss: list[float] | None = None) -> str:
    """history.csv as MetricHistory writes it: epoch (0-based), then metric columns; empty = missing."""
    loss = loss or [1.0 / (e + 1) for e in range(len(solve))]
    lines = ["epoch,train/loss,val/loss,val/solve_rate"]
    lines += [f"{e},{2 * l!r},{l!r},{'' if v is None else repr(v)}" for e, (v, l) in enumerate(zip(solve, loss))]
    return "\n".join(lines) + "\n"


SOLVE = {  # arm -> per seed val/solve_rate per epoch; None: a missing cell
    "diagonal": [[0.1, 0.5, 0.9, 1.0],          # seed 0: first >= 0.9 after 3 epochs
                 [0.95, 0.2, 1.0, 1.0],          # seed 1: after 1 epoch (a later dip does not matter)
                 [0.1, 0.3, None, 0.89]],        # seed 2: never within its 4 epochs
    "none": [[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.5, 0.9], [0.3, 0.3, 0.3, 0.3]],  # never, 4, never
}


@pytest.fixture
def with_history(tmp_path) -> Path:
    jobs = []
    for arm, seeds in SOLVE.items():
        for s, curve in reversed(list(enumerate(seeds))):  # jobs out of seed order: the report sorts them
            jobs.append(([f"model.peephole={arm}", f"seed={s}"], {"test/solve_rate": curve[-1] or 0.0}, history(curve)))
    jobs.append((["model.peephole=none", "seed=3"], None, history([1.0])))  # unfinished: not counted
    return write_sweep(tmp_path / "sweep", jobs)


def test_history_is_read_into_the_job(with_history):
    job = next(j for j in discover_jobs(with_history) if j.seed == 2 and "model.peephole=diagonal" in j.overrides)
    assert job.history["val/solve_rate"] == [(0, 0.1), (1, 0.3), (3, 0.89)]  # the empty cell is missing
    assert job.history["val/loss"] == [(0, 1.0), (1, 0.5), (2, 1 / 3), (3, 0.25)]


def test_epochs_to_threshold_per_seed_and_median(with_history, tmp_path):
    report = write_report(discover_jobs(with_history), tmp_path / "out")
    text = report.markdown.read_text().split("### Learning speed: epochs until val/solve_rate >= 0.9", 1)[1]
    rows = table_rows(text)
    assert rows["model.peephole=diagonal"] == ["model.peephole=diagonal", "3, 1, never", "3", "2/3"]
    assert rows["model.peephole=none"] == ["model.peephole=none", "never, 4, never", "never", "1/3"]
    table = report.table.set_index("arm")
    assert table.loc["model.peephole=diagonal", "speed_epochs"] == "3, 1, never"
    assert table.loc["model.peephole=none", "speed_reached"] == 1
    # the per-seed final values are listed in seed order too
    assert table_rows(report.markdown.read_text(), "test/solve_rate")["model.peephole=diagonal"][6] == "1, 1, 0.89"


@pytest.mark.slow
def test_speed_threshold_and_a_minimised_speed_metric(with_history, tmp_path):
    proc = run_cli(with_history, "--speed-metric", "val/loss", "--speed-threshold", "0.3", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    # val/loss = 1/(epoch+1) <= 0.3 first at 0-based epoch 3: after 4 epochs, in every seed
    text = proc.stdout.split("### Learning speed: epochs until val/loss <= 0.3", 1)[1]
    assert table_rows(text)["model.peephole=none"][1:] == ["4, 4, 4", "4", "3/3"]
    report = write_report(discover_jobs(with_history), tmp_path / "o2", speed_threshold=0.95)
    text = report.markdown.read_text().split("### Learning speed: epochs until val/solve_rate >= 0.95", 1)[1]
    assert table_rows(text)["model.peephole=diagonal"][1:] == ["4, 1, never", "4", "2/3"]


def test_epochs_to_threshold_and_median_rules():
    assert epochs_to_threshold([(0, 0.5), (1, 0.9)], 0.9, "max") == 2  # >= counts, 1-based
    assert epochs_to_threshold([(0, 0.5), (1, 0.89)], 0.9, "max") is None
    assert epochs_to_threshold([(2, 0.1), (0, 0.5)], 0.2, "min") == 3  # <= for a minimised metric, epoch order
    assert median_epochs([5, 1, 3]) == 3
    assert median_epochs([2, 4, 6, 8]) == 5
    assert median_epochs([2, None, 4, None]) is None  # half never: the median is never
    assert median_epochs([2, 4, None]) == 4


@pytest.mark.slow  # matplotlib renders and reads back the PNG
def test_learning_curve_png(with_history, tmp_path):
    report = write_report(discover_jobs(with_history), tmp_path / "out")
    (group,) = report.groups
    assert list(group.curve_plots) == ["val/solve_rate"]  # the default: val/solve_rate when present
    png = group.curve_plots["val/solve_rate"]
    assert png.name == "curve_val_solve_rate__all.png"
    assert_png_not_blank(png)
    assert f"![val/solve_rate, learning curves]({png.name})" in report.markdown.read_text()
    report = write_report(discover_jobs(with_history), tmp_path / "o2", curve_metrics=["val/loss", "train/loss"])
    assert list(report.groups[0].curve_plots) == ["val/loss", "train/loss"]
    with pytest.raises(ValueError, match=r"--curve-metric val/nrmse not in any completed job's history.csv; "
                                         r"available: train/loss, val/loss, val/solve_rate"):
        write_report(discover_jobs(with_history), tmp_path / "o3", curve_metrics=["val/nrmse"])


def test_curve_band_is_median_and_quartiles_across_seeds():
    curves = [{0: 0.2, 1: 0.5}, {0: 0.4, 1: 0.7}, {0: 0.9}]  # the third seed stopped after one epoch
    epochs, median, q25, q75 = curve_band(curves)
    assert epochs.tolist() == [0, 1]
    assert median.tolist() == pytest.approx([0.4, 0.6])
    assert q25.tolist() == pytest.approx([0.3, 0.55])  # linear interpolation between order statistics
    assert q75.tolist() == pytest.approx([0.65, 0.65])


def test_history_csv_errors(tmp_path):
    assert read_history(tmp_path / "none.csv") == {}
    bad = tmp_path / "h.csv"
    bad.write_text("step,val/loss\n0,1.0\n")
    with pytest.raises(ValueError, match="header must start with 'epoch'"):
        read_history(bad)
    bad.write_text("epoch,val/loss\n0,abc\n")
    with pytest.raises(ValueError, match=r"h.csv:2: not a number"):
        read_history(bad)


# --- errors and the command line --------------------------------------------------------------


def test_bad_input_errors(sweep, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_jobs(tmp_path / "nope")
    with pytest.raises(ValueError, match="no Hydra job dirs"):
        discover_jobs(tmp_path)
    with pytest.raises(ValueError, match=r"test/acc.*available: test/loss, test/nrmse, val/loss"):
        write_report(discover_jobs(sweep), tmp_path / "out", metrics=["test/acc"])
    with pytest.raises(ValueError, match="mode='best'.*'min', 'max'"):
        write_report(discover_jobs(sweep), tmp_path / "out", mode="best")
    with pytest.raises(ValueError, match="reference 'LSTM' matches no arm"):
        write_report(discover_jobs(sweep), tmp_path / "out", reference="LSTM")
    with pytest.raises(ValueError, match=r"--speed-metric val/solve_rate not in any .*none \(no completed job has"):
        write_report(discover_jobs(sweep), tmp_path / "out", speed_metric="val/solve_rate")
    with pytest.raises(ValueError, match="--group-by takes override keys"):
        write_report(discover_jobs(sweep), tmp_path / "out", group_by=["data=timing"])


def run_cli(*args):
    # generous: a loaded shared CPU took 140 s to import torch
    return run_script("scripts/sweep_report.py", *args, timeout=900)


@pytest.mark.slow
def test_cli_writes_into_sweep_dir_by_default(sweep):
    proc = run_cli(sweep, "--metric", "test/nrmse", "--mode", "min")
    assert proc.returncode == 0, proc.stderr
    assert {"report.md", "report.csv", "jobs.csv", "box_test_nrmse__all.png"} <= {p.name for p in sweep.iterdir()}
    assert "model.peephole=full" in proc.stdout
    assert len(discover_jobs(sweep)) == 12  # the report files are not mistaken for jobs


@pytest.mark.slow
def test_cli_errors_are_clear(sweep, tmp_path):
    proc = run_cli(tmp_path / "missing")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = run_cli(sweep, "--metric", "test/bpc", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "available: test/loss" in proc.stderr
    proc = run_cli(sweep, "--wandb", "me/proj")
    assert proc.returncode == 2 and "exactly one of SWEEP_DIR or --wandb" in proc.stderr
    proc = run_cli("--wandb", "me/proj")  # run_script's children run with WANDB_MODE=offline
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


@pytest.mark.slow  # two reports, each rendering its plots; the W&B client's errors below stay in the fast lane
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
    table = report.table.set_index("arm")
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
