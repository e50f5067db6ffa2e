"""Export a checkpoint written by train.py to ONNX and check it with onnxruntime on its test split.

`python scripts/export.py <run dir or .ckpt>` calls `export_checkpoint`. The model is rebuilt from the
checkpoint's saved config exactly as eval.py does (uncompiled: `model.compile` only concerns training),
exported with `torch.onnx.export` (dynamic batch and sequence dimensions; each PeepholeLSTM layer as
ONNX's LSTM operator where it can be, docs/export.md), then every test batch runs through both PyTorch
and onnxruntime: predictions are compared element-wise and the test loss is computed from each.

Needs the `[export]` extra (onnx, onnxscript, onnxruntime).
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import hydra.utils
import numpy as np
import torch
from torch import Tensor, nn
from torch.export import Dim

from peephole_lstm import rundir
from peephole_lstm.training.module import SequenceModel, task_loss
from peephole_lstm.training.errors import ConfigError
from peephole_lstm.training.run import load_checkpoint


class ExportCheckError(RuntimeError):
    """onnxruntime's predictions differ from PyTorch's by more than the tolerance."""


def find_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A .ckpt file as given, or the `best` (lowest val/loss) or `last` checkpoint of a run directory."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ConfigError(f"{str(path)!r} is neither a checkpoint file nor a run directory")
    if which == "last":
        found = [p for p in [rundir.last_checkpoint(path)] if p.is_file()]
    else:
        found = sorted(rundir.checkpoint_dir(path).glob(rundir.BEST_CHECKPOINT_GLOB))
    if len(found) != 1:
        raise ConfigError(f"{str(path)!r}: expected one {which} checkpoint in checkpoints/, found "
                          f"{[p.name for p in found] or 'none'}; pass the .ckpt file itself")
    return found[0]


class _Exported(nn.Module):
    """What the ONNX model computes: predictions from inputs, and for a stateful LM the state as an input
    and an output too (nn.GRU's state is one tensor, an LSTM's two)."""

    def __init__(self, model: SequenceModel, stateful: bool):
        super().__init__()
        self.model, self.stateful = model, stateful

    def forward(self, x: Tensor, state: tuple = ()):
        if not self.stateful:
            return self.model(x)[0]
        pred, new = self.model(x, state[0] if len(state) == 1 else tuple(state))
        return (pred, *(new if isinstance(new, tuple) else (new,)))


def _initial_state(model: SequenceModel, batch: int) -> tuple[Tensor, ...]:
    rnn = model.rnn
    n = rnn.num_layers * (2 if rnn.bidirectional else 1)
    h = torch.zeros(n, batch, getattr(rnn, "proj_size", 0) or rnn.hidden_size)
    if isinstance(rnn, nn.GRU):
        return (h,)
    return h, torch.zeros(n, batch, rnn.hidden_size)


def export_checkpoint(checkpoint_path: str | Path, out: Optional[str | Path] = None, which: str = "best",
                      tolerance: float = 1e-4) -> dict:
    """Export, check on the test split, and return a report; raises ExportCheckError when onnxruntime's
    predictions differ from PyTorch's by more than `tolerance` (absolute, relative to max(1, |value|))."""
    import onnxruntime as ort  # the [export] extra

    ckpt_path = find_checkpoint(checkpoint_path, which)
    checkpoint = load_checkpoint(ckpt_path)
    datamodule = hydra.utils.instantiate(checkpoint["run_config"]["data"])
    spec = asdict(datamodule.spec)
    hparams = copy.deepcopy(dict(checkpoint["hyper_parameters"]))
    hparams["model"] = {**hparams["model"], "compile": False}  # export traces the plain model
    model = SequenceModel(**hparams)
    for key in ("task", "input_size", "output_size", "horizon"):
        if spec.get(key) != model.spec.get(key):
            raise ConfigError(f"the data no longer matches the checkpoint: {key} is {spec.get(key)!r}, "
                              f"the model was trained with {model.spec.get(key)!r}")
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    stateful = bool(model.spec.get("stateful"))
    wrapper = _Exported(model, stateful).eval()

    batches = list(datamodule.test_dataloader())
    if not batches:
        raise ConfigError(f"{ckpt_path}: the test split is empty")
    x0 = batches[0][0]
    batch, seq = Dim("batch"), Dim("seq")
    x_dims = {0: batch, 1: seq}
    if stateful:
        state0 = _initial_state(model, x0.shape[0])
        args, dims = (x0, state0), (x_dims, tuple({1: batch} for _ in state0))
    else:
        args, dims = (x0,), (x_dims,)
    out = Path(out) if out is not None else ckpt_path.with_suffix(".onnx")
    with torch.no_grad():
        program = torch.onnx.export(wrapper, args, dynamic_shapes=dims, dynamo=True, verbose=False)
    program.save(str(out))
    ops = [node.op_type for node in program.model.graph]

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    worst, n, torch_loss, onnx_loss = 0.0, 0, 0.0, 0.0
    state, onnx_state = None, None
    with torch.no_grad():
        for x, y in batches:
            if stateful and (state is None or state[0].shape[1] != x.shape[0]):
                state = onnx_state = _initial_state(model, x.shape[0])  # a new stream, as in training
            outputs = wrapper(x, state) if stateful else wrapper(x)
            got = session.run(None, dict(zip(names, [t.numpy() for t in (x, *(onnx_state if stateful else ()))])))
            want = outputs if stateful else (outputs,)
            for g, w in zip(got, want):
                w = w.numpy()
                worst = max(worst, float(np.max(np.abs(g - w) / np.maximum(1.0, np.abs(w)))) if w.size else 0.0)
            if stateful:
                state, onnx_state = tuple(want[1:]), tuple(torch.from_numpy(g) for g in got[1:])
            pred = want[0]
            torch_loss += task_loss(model.task, pred, y).item() * x.shape[0]
            onnx_loss += task_loss(model.task, torch.from_numpy(got[0]), y).item() * x.shape[0]
            n += x.shape[0]
    report = {
        "checkpoint": str(ckpt_path), "onnx": str(out), "task": model.task, "test_samples": n,
        "test_batches": len(batches), "onnx_ops": {op: ops.count(op) for op in ("LSTM", "GRU", "Scan") if op in ops},
        "max_rel_diff": worst, "tolerance": tolerance,
        "test_loss_torch": torch_loss / n, "test_loss_onnx": onnx_loss / n,
    }
    if not worst <= tolerance or not math.isfinite(report["test_loss_onnx"]):
        raise ExportCheckError(f"onnxruntime differs from PyTorch on the test split by {worst:.3g} "
                               f"(tolerance {tolerance:g}); the ONNX file is {out}")
    return report
