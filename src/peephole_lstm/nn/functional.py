"""The peephole LSTM equations, written once and shared by the cell, the layer and every backend.

Notation (Gers et al. 2002; TF's LSTMCell(use_peepholes=True)); x_t is the input, h the (projected)
hidden state, c the cell state, * elementwise, sigma the logistic sigmoid:

    z_t  = W_ih x_t + b_ih + b_hh + W_hh h_{t-1}          (LN(W_ih x_t) + LN(W_hh h_{t-1}) + b with layer_norm)
    i_t  = sigma(z_i + p_i . c_{t-1} + R_i a_{t-1})        (1 - f_t when coupled; 1 without an input gate)
    f_t  = sigma(z_f + p_f . c_{t-1} + R_f a_{t-1})        (1 without a forget gate)
    g_t  = act_in(z_g)
    c_t  = clip(LN(f_t * c_{t-1} + i_t * g_t))
    o_t  = sigma(z_o + p_o . c_t + R_o a_{t-1})            (c_{t-1} with output_peephole="previous")
    h_t  = W_hr (o_t * act_out(c_t))                       (W_hr only with proj_size > 0)

p . c is p * c for diagonal peepholes and P c for full ones; R a is the full gate recurrence (FGR) from
the previous step's gate activations a = [i, f, o]. Zoneout then keeps each unit of h and c at its
previous value with probability `zoneout` in training and mixes by that probability in eval.

`lstm_step` is TorchScript-compatible so the cell can be scripted; the layout of the gate blocks is
passed as `idx` = [block i, block f, block g, block o, peephole row i, row f, row o] (-1 when absent).
"""
# (No `from __future__ import annotations`: TorchScript reads StepFlags' field types as objects.)

from typing import Callable, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


class StepFlags(NamedTuple):
    """The static arguments of `lstm_step` that follow the weights, by name and in its order (the per-step
    loops pass them as `*flags, training`; a test holds the order to lstm_step's signature). Built from a
    CellOptions by `cell.step_flags`; the kernels take them regrouped by `fused.config`."""

    idx: List[int]  # `layout` of the gate blocks and peephole rows
    peep_full: bool  # peephole="full"
    peep_current: bool  # output_peephole="current"
    coupled: bool
    act_in_tanh: bool  # input_activation="tanh"
    act_out_tanh: bool  # output_activation="tanh"
    cell_clip: float  # 0.0: no clipping
    zoneout: float


def layout(blocks: str, peephole_rows: str) -> List[int]:
    """Encode which gate blocks and peephole rows exist as the index list `lstm_step` takes."""
    return [blocks.find(g) for g in "ifgo"] + [peephole_rows.find(g) for g in "ifo"]


def input_projection(
    x: Tensor,
    w_ih: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    ln_w: Optional[Tensor],
    ln_b: Optional[Tensor],
) -> Tensor:
    """The input's contribution to every gate, for any number of leading (time, batch) dimensions: one
    GEMM over all of them, with both biases folded into it (addmm) when there is no layer norm, so the
    (T, B, G*H) result is written once and its bias gradient is one reduction."""
    x2 = x.reshape(-1, x.shape[-1])
    if ln_w is None and b_ih is not None and b_hh is not None:
        z = torch.addmm(b_ih + b_hh, x2, w_ih.t())
    else:
        z = torch.matmul(x2, w_ih.t())
        if ln_w is not None:
            z = F.layer_norm(z, [z.shape[-1]], ln_w, ln_b, 1e-5)
        if b_ih is not None:
            z = z + b_ih
        if b_hh is not None:
            z = z + b_hh
    return z.view(list(x.shape[:-1]) + [z.shape[-1]])


def _peep(c: Tensor, w_ch: Optional[Tensor], row: int, full: bool) -> Tensor:
    assert w_ch is not None
    if full:
        return torch.matmul(c, w_ch[row].t())
    return c * w_ch[row]


def _gate(z: Tensor, c: Tensor, w_ch: Optional[Tensor], peep_row: int, full: bool, fgr: List[Tensor], k: int) -> Tensor:
    """sigma(z + the peephole from c, when this gate has peephole row `peep_row`, + its FGR term)."""
    if peep_row >= 0:
        z = z + _peep(c, w_ch, peep_row, full)
    if len(fgr) > 0:
        z = z + fgr[k]
    return torch.sigmoid(z)


def lstm_step(
    xz: Tensor,
    h: Tensor,
    c: Tensor,
    a: Tensor,
    w_hh: Tensor,
    w_ch: Optional[Tensor],
    w_gh: Optional[Tensor],
    w_hr: Optional[Tensor],
    ln_hh_w: Optional[Tensor],
    ln_hh_b: Optional[Tensor],
    ln_c_w: Optional[Tensor],
    ln_c_b: Optional[Tensor],
    idx: List[int],
    peep_full: bool,
    peep_current: bool,
    coupled: bool,
    act_in_tanh: bool,
    act_out_tanh: bool,
    cell_clip: float,
    zoneout: float,
    training: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """One time step. `xz` is `input_projection` of x_t; `a` holds the previous gate activations (FGR
    only, else an empty (B, 0) tensor). Returns the new (h, c, a)."""
    hidden = c.shape[-1]
    rec = torch.matmul(h, w_hh.t())
    if ln_hh_w is not None:
        rec = F.layer_norm(rec, [rec.shape[-1]], ln_hh_w, ln_hh_b, 1e-5)
    z = (xz + rec).split(hidden, -1)
    fgr: List[Tensor] = []
    if w_gh is not None:
        fgr = torch.matmul(a, w_gh.t()).split(hidden, -1)
    # FGR term positions among [i, f, o]: i first, f after i, o after both
    n_i, n_f = int(idx[0] >= 0), int(idx[1] >= 0)

    f = torch.ones_like(c)
    i = torch.ones_like(c)
    if idx[0] >= 0:
        i = _gate(z[idx[0]], c, w_ch, idx[4], peep_full, fgr, 0)
    if idx[1] >= 0:
        f = _gate(z[idx[1]], c, w_ch, idx[5], peep_full, fgr, n_i)
        if coupled:
            i = 1.0 - f
    g = z[idx[2]]
    if act_in_tanh:
        g = torch.tanh(g)

    c_new = f * c + i * g
    if ln_c_w is not None:
        c_new = F.layer_norm(c_new, [hidden], ln_c_w, ln_c_b, 1e-5)
    if cell_clip > 0.0:
        c_new = c_new.clamp(-cell_clip, cell_clip)

    o = torch.ones_like(c)
    if idx[3] >= 0:
        o = _gate(z[idx[3]], c_new if peep_current else c, w_ch, idx[6], peep_full, fgr, n_i + n_f)
    h_new = o * torch.tanh(c_new) if act_out_tanh else o * c_new
    if w_hr is not None:
        h_new = torch.matmul(h_new, w_hr.t())

    a_new = a
    if w_gh is not None:
        gates: List[Tensor] = []
        if idx[0] >= 0:
            gates.append(i)
        if idx[1] >= 0:
            gates.append(f)
        if idx[3] >= 0:
            gates.append(o)
        a_new = torch.cat(gates, -1)

    if zoneout > 0.0:
        if training:
            h_new = torch.where(torch.rand_like(h_new) < zoneout, h, h_new)
            c_new = torch.where(torch.rand_like(c_new) < zoneout, c, c_new)
        else:
            h_new = torch.lerp(h_new, h, zoneout)
            c_new = torch.lerp(c_new, c, zoneout)
    return h_new, c_new, a_new


def lstm_sequence(
    step: Callable[..., Tuple[Tensor, Tensor, Tensor]],
    xz: Tensor,
    h: Tensor,
    c: Tensor,
    a: Tensor,
    lengths: Optional[Tensor],
    weights: Tuple[Optional[Tensor], ...],
    flags: StepFlags,
    training: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run `step` over xz (T, B, G*H). With `lengths` (B,), steps t >= lengths[b] leave sequence b's state
    untouched and output zeros, so padding never changes a result. Returns (output, h, c, a)."""
    outputs = []
    # unbind, not xz[t]: the backward of T selects would write T full-size zero tensors (quadratic in T)
    for t, xz_t in enumerate(xz.unbind(0)):
        h_new, c_new, a_new = step(xz_t, h, c, a, *weights, *flags, training)
        if lengths is None:
            h, c, a = h_new, c_new, a_new
            outputs.append(h)
        else:
            live = (lengths > t).unsqueeze(-1)
            h = torch.where(live, h_new, h)
            c = torch.where(live, c_new, c)
            a = torch.where(live, a_new, a)
            outputs.append(torch.where(live, h_new, torch.zeros_like(h_new)))
    return torch.stack(outputs), h, c, a


def reverse_padded(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Reverse each sequence of x (T, B, ...) within its own length, leaving padding in place."""
    if lengths is None:
        return x.flip(0)
    steps = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    lengths = lengths.to(x.device).unsqueeze(0)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    index = index.view(index.shape + (1,) * (x.dim() - 2)).expand_as(x)
    return x.gather(0, index)
