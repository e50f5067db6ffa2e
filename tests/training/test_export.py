"""scripts/export.py: a checkpoint of a real (tiny) training run exported to ONNX and checked with
onnxruntime on its test split."""
from __future__ import annotations

import json

import pytest

from peephole_lstm.training import train
from tests.helpers.configs import FAST, compose_config
from tests.helpers.scripts import results, run_script

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# FAST limits the test split to 2 batches; the export check reads the whole split, so this does not.
TINY = [o for o in FAST if "limit_test_batches" not in o]


def fit(run_dir, *overrides):
    train(compose_config("train", ["logger=none", *TINY, *overrides], output_dir=run_dir))
    return results(run_dir)


@pytest.mark.slow  # scripts/export.py as a process
def test_export_script_on_a_run_directory(tmp_path):
    run = tmp_path / "run"
    res = fit(run, "data.length=400")
    out = tmp_path / "model.onnx"
    done = run_script("scripts/export.py", run, "--out", out, "--json", "-", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["checkpoint"].endswith(".ckpt") and "best-" in report["checkpoint"] and out.is_file()
    assert report["onnx_ops"] == {"LSTM": 1}  # the default diagonal-peephole layer as ONNX's operator
    assert report["max_rel_diff"] <= 1e-5
    # the same weights and test split as the run's own test: the same loss, from PyTorch and from ONNX
    assert report["test_loss_torch"] == pytest.approx(res["metrics"]["test/loss"], rel=1e-5)
    assert report["test_loss_onnx"] == pytest.approx(report["test_loss_torch"], rel=1e-5)


@pytest.mark.slow  # trains a character LM, then exports a Scan loop and runs it in onnxruntime
def test_stateful_language_model_carries_its_state_through_onnx(tmp_path):
    """A stateful LM: the ONNX model takes and returns the state, carried across test batches as in training."""
    from peephole_lstm.training.export_onnx import export_checkpoint

    run = tmp_path / "run"
    fit(run, "data=chars", "data.stateful=true", "data.max_chars=20000", "data.seq_len=16", "data.batch_size=8",
        "model.peephole=full")  # full peepholes: exported as a Scan loop
    report = export_checkpoint(run, tmp_path / "lm.onnx", which="last")
    assert report["task"] == "lm" and report["test_batches"] > 1
    assert report["onnx_ops"] == {"Scan": 1}
    assert report["max_rel_diff"] <= 1e-5
    assert report["test_loss_onnx"] == pytest.approx(report["test_loss_torch"], rel=1e-5)


@pytest.mark.slow
def test_export_script_refuses_a_directory_without_checkpoints(tmp_path):
    done = run_script("scripts/export.py", tmp_path)
    assert done.returncode == 1 and "expected one best checkpoint in checkpoints/" in done.stderr
