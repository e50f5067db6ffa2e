"""Smoke run of scripts/benchmark.py at a tiny shape: the JSON report has every column for every row."""
from __future__ import annotations

import json

import pytest

from tests.helpers.scripts import run_script

pytestmark = pytest.mark.slow  # each test starts scripts/benchmark.py


def test_benchmark_json_at_a_tiny_shape():
    impls = "nn.LSTM,naive-loop,auto/diagonal,auto/full,eager/diagonal,auto+head/diagonal"
    done = run_script("scripts/benchmark.py", "--shapes", "2x4x3x5,stream", "--impls", impls,
                      "--repeats", "2", "--min-seconds", "0", "--json", "-")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["machine"]["torch_threads"] >= 1
    rows = report["results"]
    runs = [("2x4x3x5", "train"), ("2x4x3x5", "infer"), ("stream", "stream")]
    assert [(r["shape"], r["mode"], r["impl"]) for r in rows] == [(s, m, i) for s, m in runs for i in impls.split(",")]
    for r in rows:
        assert r["ms_per_step"] > 0 and r["tokens_per_s"] > 0 and r["gflops"] > 0 and r["warmup_s"] > 0
        assert r["ratio_vs_lstm"] > 0
        assert r["device"] == "cpu" and r["dtype"] == "float32"
    by = {(r["shape"], r["mode"], r["impl"]): r for r in rows}
    for mode in ("train", "infer"):
        assert by[("2x4x3x5", mode, "nn.LSTM")]["ratio_vs_lstm"] == 1.0
        expected = "fused-cpp" if report["machine"]["fused_extension"] else "fused-torch"
        assert by[("2x4x3x5", mode, "auto/diagonal")]["path"] == expected
        assert by[("2x4x3x5", mode, "eager/diagonal")]["path"] == "eager"
        assert by[("2x4x3x5", mode, "auto+head/diagonal")]["path"] == expected
    # A training step does three times the forward's GEMM work.
    train, infer = by[("2x4x3x5", "train", "auto/full")], by[("2x4x3x5", "infer", "auto/full")]
    assert train["gflops"] * train["ms_per_step"] == pytest.approx(3 * infer["gflops"] * infer["ms_per_step"])
    assert by[("stream", "stream", "auto/full")]["T"] == 200 and by[("stream", "stream", "auto/full")]["B"] == 1
    assert report["machine"]["date"]


def test_benchmark_times_the_isa_probe_apart_from_the_compiled_rows():
    done = run_script("scripts/benchmark.py", "--shapes", "2x4x3x5", "--impls", "nn.LSTM,torch.compile/diagonal",
                      "--modes", "train", "--repeats", "1", "--min-seconds", "0", "--json", "-")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["machine"]["inductor_isa_probe_s"] >= 0
    compiled = report["results"][1]
    assert compiled["impl"] == "torch.compile/diagonal" and compiled["warmup_s"] > 0 and compiled["ms_per_step"] > 0
    plain = run_script("scripts/benchmark.py", "--shapes", "2x4x3x5", "--impls", "nn.LSTM", "--modes", "train",
                       "--repeats", "1", "--min-seconds", "0", "--json", "-")
    assert "inductor_isa_probe_s" not in json.loads(plain.stdout)["machine"]  # no compiled rows, no probe


@pytest.mark.parametrize("args, message", [(["--shapes", "huge"], "unknown shape 'huge'"),
                                           (["--modes", "fly"], "--modes: choose from train, infer"),
                                           (["--dtypes", "int8"], "--dtypes: choose from")])
def test_benchmark_rejects_bad_arguments(args, message):
    done = run_script("scripts/benchmark.py", *args, timeout=120)
    assert done.returncode != 0 and message in done.stderr

