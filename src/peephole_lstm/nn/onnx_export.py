"""PeepholeLSTM as ONNX's own LSTM operator under torch.onnx.export (the dynamo exporter, its default).

ONNX's LSTM (https://onnx.ai/onnx/operators/onnx__LSTM.html) computes, per direction,

    i = sigmoid(W_i x + R_i h + P_i * c_{t-1} + b_i)      f = sigmoid(W_f x + R_f h + P_f * c_{t-1} + b_f)
    g = G(W_c x + R_c h + b_c)      c_t = f * c_{t-1} + i * g      o = sigmoid(W_o x + R_o h + P_o * c_t + b_o)
    h_t = o * Hact(c_t)

with its gate blocks in the order i, o, f, c and peepholes in the order i, o, f: exactly a layer with
diagonal peepholes (any subset of gates; the others get a zero row), o reading the new cell, and all
three gates. G and Hact are tanh, or the identity (ONNX's "Affine" with alpha 1, beta 0) for
input_activation / output_activation = "identity". Each layer becomes one LSTM node (both directions in
one, direction="bidirectional"), variable lengths its `sequence_lens` input.

CIFG (coupled, i = 1 - f) is written without ONNX's `input_forget` attribute: the spec does not say
which gate it derives from which, and onnxruntime computes f = 1 - i, the opposite coupling (tested in
tests/nn/test_onnx.py). Instead the input gate's block is the forget gate's negated, so that
i = sigmoid(-z_f - p_f * c) = 1 - f exactly, under the plain equations every runtime implements.

The weights are re-ordered with torch ops on the parameters; the exporter folds them into constants.

A layer with options the LSTM operator cannot express (`unsupported` names the first) exports as an
ONNX Scan, a loop whose body is one time step of the eager equations (functional.lstm_step) traced once:
any option, any length, but a loop of small ops per step instead of one operator.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from peephole_lstm.nn.functional import StepFlags, lstm_step
from peephole_lstm.nn.options import CellOptions


def unsupported(opts: CellOptions) -> Optional[str]:
    """Why ONNX's LSTM operator cannot compute a layer with these options (None when it can)."""
    reasons = [
        (opts.peephole == "full", "peephole='full' (ONNX's peephole input P is diagonal)"),
        (bool(opts.proj_size), f"proj_size={opts.proj_size} (ONNX's LSTM has no projection)"),
        (opts.layer_norm, "layer_norm=True"),
        (opts.gate_recurrence, "gate_recurrence=True"),
        (opts.cell_clip is not None,
         f"cell_clip={opts.cell_clip} (ONNX's `clip` attribute clips the gate inputs, not the cell)"),
        (opts.zoneout > 0, f"zoneout={opts.zoneout}"),
        (not opts.input_gate, "input_gate=False (ONNX's LSTM always has an input gate)"),
        (not opts.forget_gate, "forget_gate=False (ONNX's LSTM always has a forget gate)"),
        (not opts.output_gate, "output_gate=False (ONNX's LSTM always has an output gate)"),
        ("o" in opts.peephole_rows and opts.output_peephole == "previous",
         "output_peephole='previous' (ONNX's output gate peeks at the new cell)"),
    ]
    for bad, reason in reasons:
        if bad:
            return reason
    return None


def _onnx_gates(w: Tensor, opts: CellOptions) -> Tensor:
    """Blocks of a stacked weight or bias (nn.LSTM's order i, f, g, o, the absent ones left out) in
    ONNX's order i, o, f, c; CIFG's input block is the negated forget block (see the module docstring)."""
    H = opts.hidden_size
    # Slices, not split(): the exporter folds single-output ops on parameters into constants.
    blocks = {b: w[k * H:(k + 1) * H] for k, b in enumerate(opts.blocks)}
    i = -blocks["f"] if opts.coupled else blocks["i"]
    return torch.cat([i, blocks["o"], blocks["f"], blocks["g"]])


def _onnx_peepholes(w_ch: Optional[Tensor], opts: CellOptions, like: Tensor) -> Tensor:
    """(3H,) diagonal peepholes in ONNX's order i, o, f; zero for gates without one."""
    zero = like.new_zeros(opts.hidden_size)
    rows = {g: w_ch[k] for k, g in enumerate(opts.peephole_rows)} if w_ch is not None else {}
    p_f, p_o = rows.get("f", zero), rows.get("o", zero)
    p_i = -p_f if opts.coupled else rows.get("i", zero)
    return torch.cat([p_i, p_o, p_f])


def _activations(opts: CellOptions, directions: int) -> Dict[str, list]:
    names, alphas, betas = ["Sigmoid"], [], []
    for tanh in (opts.input_activation == "tanh", opts.output_activation == "tanh"):
        if tanh:
            names.append("Tanh")
        else:  # the identity: Affine(x) = alpha * x + beta; alphas are consumed by the functions that take one
            names.append("Affine")
            alphas.append(1.0)
            betas.append(0.0)
    attrs: Dict[str, list] = {"activations": names * directions}
    if alphas:
        attrs["activation_alpha"] = alphas * directions
        attrs["activation_beta"] = betas * directions
    return attrs


def lstm_layer(
    x: Tensor, h0: Tensor, c0: Tensor, lengths: Optional[Tensor], weights: List[Dict[str, Optional[Tensor]]],
    opts: CellOptions,
) -> Tuple[Tensor, Tensor, Tensor]:
    """One layer as one ONNX LSTM node. x (T, B, F); h0, c0 (directions, B, H); `weights` holds each
    direction's parameters by their cell names. Returns (output (T, B, directions * H), h_n, c_n)."""
    directions, H = len(weights), opts.hidden_size
    W = torch.stack([_onnx_gates(w["weight_ih"], opts) for w in weights])
    R = torch.stack([_onnx_gates(w["weight_hh"], opts) for w in weights])
    B = None
    if opts.bias:
        B = torch.stack([torch.cat([_onnx_gates(w["bias_ih"], opts), _onnx_gates(w["bias_hh"], opts)])
                         for w in weights])
    P = None
    if opts.peephole_rows:
        P = torch.stack([_onnx_peepholes(w["weight_ch"], opts, x) for w in weights])
    seq_lens = lengths.to(torch.int32) if lengths is not None else None
    T, batch = x.shape[0], x.shape[1]
    attrs = dict(hidden_size=H, direction="bidirectional" if directions == 2 else "forward",
                 **_activations(opts, directions))
    y, h_n, c_n = torch.onnx.ops.symbolic_multi_out(
        "LSTM", [x, W, R, B, seq_lens, h0, c0, P], attrs, dtypes=[x.dtype] * 3,
        shapes=[[T, directions, batch, H], [directions, batch, H], [directions, batch, H]],
    )
    # (T, directions, B, H) -> (T, B, directions * H): the directions side by side, as the layer concatenates.
    y = y.permute(0, 2, 1, 3).reshape(T, batch, directions * H)
    return y, h_n, c_n


def scan_sequence(xz: Tensor, h0: Tensor, c0: Tensor, a0: Tensor, lengths: Optional[Tensor], weights: tuple,
                  flags: StepFlags, training: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """functional.lstm_sequence(lstm_step, ...) as one scan over time, which the exporter writes as an ONNX
    Scan: one traced step for any length. Returns (output (T, B, out), h_T, c_T, a_T)."""
    # torch's scan is a prototype (torch._higher_order_ops); the ONNX exporter translates it to Scan.
    from torch._higher_order_ops.scan import scan

    steps = torch.arange(xz.shape[0], device=xz.device).unsqueeze(1)
    live = lengths.unsqueeze(0) > steps if lengths is not None else torch.ones_like(steps, dtype=torch.bool)
    # The gate activations are state only with gate recurrence; an empty (B, 0) carry trips scan's tracing.
    recurrent_gates = a0.shape[-1] > 0

    def step(carry, inputs):
        h, c = carry[:2]
        a = carry[2] if recurrent_gates else h.new_zeros(h.shape[0], 0)
        xz_t, live_t = inputs
        h_new, c_new, a_new = lstm_step(xz_t, h, c, a, *weights, *flags, training)
        keep = live_t.unsqueeze(-1)  # padded steps leave the state and output zeros, as lstm_sequence
        new = [torch.where(keep, h_new, h), torch.where(keep, c_new, c)]
        if recurrent_gates:
            new.append(torch.where(keep, a_new, a))
        return tuple(new), torch.where(keep, h_new, torch.zeros_like(h_new))

    carry, out = scan(step, (h0, c0, a0) if recurrent_gates else (h0, c0), (xz, live))
    return out, carry[0], carry[1], carry[2] if recurrent_gates else a0
