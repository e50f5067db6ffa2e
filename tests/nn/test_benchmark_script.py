"""Smoke run of scripts/benchmark.py at a tiny shape: the JSON report has every column for every row."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_json_at_a_tiny_shape():
    impls = "nn.LSTM,naive-loop,auto/diagonal,auto/full,eager/diagonal,auto+head/diagonal"
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--shapes", "2x4x3x5,stream", "--impls", impls,
           "--repeats", "2", "--min-seconds", "0", "--json", "-"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["machine"]["torch_threads"] >= 1
    rows = report["results"]
    assert [(r["shape"], r["impl"]) for r in rows] == [(s, i) for s in ("2x4x3x5", "stream") for i in impls.split(",")]
    for r in rows:
        assert r["ms_per_step"] > 0 and r["tokens_per_s"] > 0 and r["gflops"] > 0 and r["warmup_s"] > 0
        assert r["ratio_vs_lstm"] > 0
    by = {(r["shape"], r["impl"]): r for r in rows}
    assert by[("2x4x3x5", "nn.LSTM")]["ratio_vs_lstm"] == 1.0
    expected = "fused-cpp" if report["machine"]["fused_extension"] else "fused-torch"
    assert by[("2x4x3x5", "auto/diagonal")]["path"] == expected
    assert by[("2x4x3x5", "eager/diagonal")]["path"] == "eager"
    assert by[("2x4x3x5", "auto+head/diagonal")]["path"] == expected
    assert by[("stream", "auto/full")]["T"] == 200 and by[("stream", "auto/full")]["B"] == 1


def test_benchmark_rejects_an_unknown_shape():
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--shapes", "huge"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode != 0 and "unknown shape 'huge'" in done.stderr
