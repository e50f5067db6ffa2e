"""The fused sequence kernels as PyTorch operators, so torch.compile and torch.export see one node each.

    peephole_lstm::sequence_forward(xz, h0, c0, w_hh, w_ch?, w_hr?, lengths?, idx, flags, clip, zoneout)
        -> (output, h_T, c_T, hs, cs, acts, cn, rs)
    peephole_lstm::sequence_backward(grad_out?, grad_hn?, grad_cn?, hs, cs, acts, cn, rs, w_hh, w_ch?,
                                     w_hr?, lengths?, idx, flags, clip, zoneout)
        -> (d xz, d h0, d c0, d w_hh, d w_ch, d w_hr)

`xz` is the input projection of the whole sequence (T, B, G*H); idx, flags, clip and zoneout are
`fused.config(options)`. The last five outputs of the forward are what its backward reads (states,
gate activations, the cell before clipping/zoneout and the projection's inputs; the last two are empty
tensors when the options do not need them): an operator's autograd formula only sees its inputs and
outputs, so they are outputs, marked non-differentiable. An absent w_ch / w_hr gets an empty gradient.

Eager CPU layers on the C++ kernel take another node, `_ProjectedSequence`, which also does the input
projection inside the kernel (see fused_layer); traced code always gets the operators above.

Kernels: the C++ kernel for CPU tensors (when built and enabled, see fused.set_extension_enabled), the
pure-PyTorch twin for every other device. The fake (meta) kernels give the shapes from the inputs',
symbolic T and B included, so one compiled or exported graph serves every length and batch size.

Autograd: first-order gradients run the backward operator (the hand-written BPTT). That backward is not
itself differentiable, so when a graph of the gradient is requested (create_graph=True: gradient
penalties, Hessian-vector products) the formula recomputes the sequence with the eager ops and returns
their vector-Jacobian product as a graph instead: exact to any order, and first-order training never
pays for it. (A torch.compile'd training step traces the first-order formula; double backward through
a compiled graph is a torch.compile limitation, not this operator's.)
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from peephole_lstm.nn import fused
from peephole_lstm.nn.functional import input_projection
from peephole_lstm.nn.options import CellOptions

_OUT8 = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]
_OUT6 = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def fused_layer(
    x: Tensor, input_weights: tuple, h0: Tensor, c0: Tensor, lengths: Optional[Tensor], weights: tuple,
    opts: CellOptions, kernel: str = "auto",
) -> Tuple[Tensor, Tensor, Tensor]:
    """One layer direction from its input x (T, B, I): functional.input_projection, then fused_sequence.
    `input_weights` are the layer's INPUT_WEIGHTS. On the C++ kernel (outside tracers and autocast) the
    kernel adds the projection to each step's recurrent GEMM instead, so the (T, B, G*H) projection is
    never stored (from 8 rows over all steps on: below that the concatenated weight it builds costs
    more): fused.projected_forward, through _ProjectedSequence when there is a gradient to compute."""
    w_ih, b_ih, b_hh = input_weights[:3]
    w_hh, w_ch, _, w_hr = weights[:4]
    if (fused._resolve(kernel, x) == "fused-cpp" and x.shape[0] * x.shape[1] >= 8 and not _tracing()
            and not torch.is_autocast_enabled(x.device.type)):
        if lengths is not None:
            lengths = lengths.to(dtype=torch.int64)
        if _needs_grad(x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_ch, w_hr):
            return _ProjectedSequence.apply(x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_ch, w_hr, lengths, *fused.config(opts))
        return fused.projected_forward(x, w_ih, _bias(b_ih, b_hh), h0, c0, w_hh, w_ch, w_hr, lengths,
                                       *fused.config(opts))
    return fused_sequence(input_projection(x, *input_weights), h0, c0, lengths, weights, opts, kernel)


def _bias(b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> Optional[Tensor]:
    """Both biases as the one the kernel adds (None without either)."""
    if b_ih is None or b_hh is None:
        return b_hh if b_ih is None else b_ih
    return b_ih + b_hh


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def fused_sequence(
    xz: Tensor, h0: Tensor, c0: Tensor, lengths: Optional[Tensor], weights: tuple, opts: CellOptions,
    kernel: str = "auto",
) -> Tuple[Tensor, Tensor, Tensor]:
    """Like functional.lstm_sequence for options `fused.unsupported` accepts (zoneout as in eval mode).
    `weights` are the layer's STEP_WEIGHTS; `kernel` one of fused.KERNELS, or "auto" (fused.kernel_name).
    Returns (output (T, B, out), h_T, c_T).

    Under a tracer (torch.compile, torch.export, torch.jit.trace) this is one call of the operator
    peephole_lstm::sequence_forward. Eager code runs the same kernels and the same autograd formula
    through `_EagerSequence`, which skips the dispatcher's two Python round trips per call (the
    operator's entry, then its kernel; ~0.3 ms more per training step, measured at small shapes)."""
    w_hh, w_ch, _, w_hr = weights[:4]
    if lengths is not None:
        lengths = lengths.to(device=xz.device, dtype=torch.int64)
    idx, flags, clip, zoneout = fused.config(opts)
    device = xz.device.type
    if torch.is_autocast_enabled(device):
        # What autocast does to nn.LSTM: the whole recurrence in the autocast dtype. The kernels take one
        # dtype, and autocast does not reach inside an operator; the casts are differentiable ops.
        dtype = torch.get_autocast_dtype(device)
        xz, h0, c0, w_hh, w_ch, w_hr = (None if t is None else t.to(dtype) for t in (xz, h0, c0, w_hh, w_ch, w_hr))
        with torch.autocast(device, enabled=False):
            return _run(xz, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout, kernel)
    return _run(xz, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout, kernel)


def _run(*inputs) -> Tuple[Tensor, Tensor, Tensor]:
    if _tracing():
        run = torch.ops.peephole_lstm.sequence_forward
    elif not _needs_grad(*inputs[:6]):
        # Inference: nothing will call a backward, so the kernels keep no step's gates or states.
        return fused.inference(*inputs)
    else:
        run = _EagerSequence.apply
    out, h, c, *_ = run(*inputs)
    return out, h, c


@torch.library.custom_op("peephole_lstm::sequence_forward", mutates_args=())
def sequence_forward(
    xz: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_ch: Optional[Tensor], w_hr: Optional[Tensor],
    lengths: Optional[Tensor], idx: List[int], flags: List[bool], clip: float, zoneout: float, kernel: str = "auto",
) -> _OUT8:
    # Every device: fused.forward runs the C++ kernel for CPU tensors, Triton or the PyTorch twin for the rest.
    return fused.forward(xz, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout, kernel)


@sequence_forward.register_fake
def _sequence_forward_fake(xz, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout, kernel="auto"):
    T, B, GH = xz.shape
    P, H = h0.shape[-1], c0.shape[-1]
    new = xz.new_empty
    cn = new(T, B, H) if fused.keeps_pre_clip_cell(clip, zoneout) else new(0)
    rs = new(T, B, H) if w_hr is not None else new(0)
    return new(T, B, P), new(B, P), new(B, H), new(T + 1, B, P), new(T + 1, B, H), new(T, B, GH), cn, rs


@torch.library.custom_op("peephole_lstm::sequence_backward", mutates_args=())
def sequence_backward(
    grad_out: Optional[Tensor], grad_hn: Optional[Tensor], grad_cn: Optional[Tensor], hs: Tensor, cs: Tensor,
    acts: Tensor, cn: Tensor, rs: Tensor, w_hh: Tensor, w_ch: Optional[Tensor], w_hr: Optional[Tensor],
    lengths: Optional[Tensor], idx: List[int], flags: List[bool], clip: float, zoneout: float, kernel: str = "auto",
) -> _OUT6:
    dxz, dh0, dc0, dw_hh, dw_ch, dw_hr = fused.backward(grad_out, grad_hn, grad_cn, hs, cs, acts, cn, rs, w_hh,
                                                        w_ch, w_hr, lengths, idx, flags, clip, zoneout, kernel)
    empty = acts.new_empty  # an operator returns tensors: empty ones for the absent weights
    return dxz, dh0, dc0, dw_hh, empty(0) if dw_ch is None else dw_ch, empty(0) if dw_hr is None else dw_hr


@sequence_backward.register_fake
def _sequence_backward_fake(grad_out, grad_hn, grad_cn, hs, cs, acts, cn, rs, w_hh, w_ch, w_hr, lengths, idx,
                            flags, clip, zoneout, kernel="auto"):
    empty = acts.new_empty
    return (torch.empty_like(acts), hs.new_empty(hs.shape[1:]), cs.new_empty(cs.shape[1:]), torch.empty_like(w_hh),
            empty(0) if w_ch is None else torch.empty_like(w_ch), empty(0) if w_hr is None else torch.empty_like(w_hr))


# --- autograd: one formula for the operator and for the eager lane -----------------------------------

_N_INPUTS = 12  # xz, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout, kernel


def _setup_context(ctx, inputs, output):
    xz, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout, *kernel = inputs
    hs, cs, acts, cn, rs = output[3:]
    ctx.mark_non_differentiable(hs, cs, acts, cn, rs)
    # Gradients of outputs nobody used stay None instead of zero tensors the size of the sequence.
    ctx.set_materialize_grads(False)
    # The inputs are saved for the double-backward recompute only: no copy, they exist anyway.
    ctx.save_for_backward(hs, cs, acts, cn, rs, xz, h0, c0, w_hh, w_ch, w_hr, lengths)
    ctx.config = (list(idx), list(flags), clip, zoneout)
    ctx.kernel = kernel[0] if kernel else "auto"


def _formula(ctx, grad_out, grad_hn, grad_cn, *_unused):
    hs, cs, acts, cn, rs, xz, h0, c0, w_hh, w_ch, w_hr, lengths = ctx.saved_tensors
    if grad_out is None and grad_hn is None and grad_cn is None:
        return (None,) * _N_INPUTS
    # create_graph=True wants a differentiable backward; so do vmap-batched gradients (see fused.batched).
    if torch.is_grad_enabled() or fused.batched(grad_out, grad_hn, grad_cn):
        return _differentiable_backward(ctx, (xz, h0, c0, w_hh, w_ch, w_hr), lengths, grad_out, grad_hn, grad_cn)
    # The eager lane calls the kernel itself, the operator's formula the backward operator (traceable).
    run = fused.backward if getattr(ctx, "eager_lane", False) else sequence_backward
    dxz, dh0, dc0, dw_hh, dw_ch, dw_hr = run(grad_out, grad_hn, grad_cn, hs, cs, acts, cn, rs, w_hh, w_ch, w_hr,
                                             lengths, *ctx.config, ctx.kernel)
    return (dxz, dh0, dc0, dw_hh, dw_ch if w_ch is not None else None, dw_hr if w_hr is not None else None,
            None, None, None, None, None, None)


def _differentiable_backward(ctx, inputs: Sequence[Optional[Tensor]], lengths, grad_out, grad_hn, grad_cn):
    """The vector-Jacobian product of the eager recomputation, built as a graph (of the saved inputs and
    of the incoming gradients) so that autograd can differentiate it again."""
    grads = _vjp_graph(lambda *args: fused.eager_sequence(*args, lengths, *ctx.config), inputs,
                       ctx.needs_input_grad[:len(inputs)], (grad_out, grad_hn, grad_cn))
    return tuple(grads) + (None,) * (_N_INPUTS - len(inputs))


def _vjp_graph(run, inputs: Sequence[Optional[Tensor]], needs: Sequence[bool], grads) -> list:
    """The vector-Jacobian product of run(*inputs) -> (out, h_n, c_n) with the incoming `grads`, as a
    graph: one entry per input, None where `needs` is False."""
    wanted = [i for i, need in enumerate(needs) if need]
    with torch.enable_grad():
        # Detached leaves stand in for inputs that need no gradient, so the recompute never reaches into
        # (or accumulates into) graphs the caller did not ask about.
        args = [x if k in wanted else (None if x is None else x.detach()) for k, x in enumerate(inputs)]
        outs = run(*args)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
        got = torch.autograd.grad([o for o, _ in pairs], [args[k] for k in wanted], [g for _, g in pairs],
                                  create_graph=True, allow_unused=True)
    result: list = [None] * len(inputs)
    for k, g in zip(wanted, got):
        result[k] = torch.zeros_like(inputs[k]) if g is None else g
    return result


sequence_forward.register_autograd(_formula, setup_context=_setup_context)


class _EagerSequence(torch.autograd.Function):
    """sequence_forward with its autograd formula, called directly (see fused_sequence)."""

    @staticmethod
    def forward(ctx, *inputs):
        output = fused.forward(*inputs)
        _setup_context(ctx, inputs, output)
        ctx.eager_lane = True
        return output

    backward = staticmethod(_formula)


class _ProjectedSequence(torch.autograd.Function):
    """input_projection and sequence_forward in one node, on the C++ kernel (fused_layer's eager lane for
    CPU tensors): each step's GEMM computes bias + [x_t | h_{t-1}] [W_ih | W_hh]^T, so the (T, B, G*H)
    projection is never written and read back; the kernel keeps the rows [x_t | h_{t-1}] for the
    backward, which gets dW_ih and dW_hh from one GEMM dZ^T [X | H_prev] and the bias gradient from sums
    taken in its per-step pass. Inputs: x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_ch, w_hr, lengths, then
    fused.config's four. Second-order gradients recompute with the eager ops, as _formula does."""

    @staticmethod
    def forward(ctx, x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout):
        out, xh, cs, acts, cn, rs = fused.projected_forward(x, w_ih, _bias(b_ih, b_hh), h0, c0, w_hh, w_ch, w_hr,
                                                            lengths, idx, flags, clip, zoneout, needs_grad=True)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(xh, cs, acts, cn, rs, x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_ch, w_hr, lengths)
        ctx.config = (list(idx), list(flags), clip, zoneout)
        return out, xh[-1, :, x.shape[-1]:].clone(), cs[-1].clone()

    @staticmethod
    def backward(ctx, grad_out, grad_hn, grad_cn):
        xh, cs, acts, cn, rs, x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_ch, w_hr, lengths = ctx.saved_tensors
        after = (None,) * 5  # lengths and the configuration
        if grad_out is None and grad_hn is None and grad_cn is None:
            return (None,) * 9 + after
        inputs = (x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_ch, w_hr)
        if torch.is_grad_enabled() or fused.batched(grad_out, grad_hn, grad_cn):  # see _formula
            def run(x, w_ih, b_ih, b_hh, *rest):
                return fused.eager_sequence(input_projection(x, w_ih, b_ih, b_hh, None, None), *rest, lengths,
                                            *ctx.config)

            return tuple(_vjp_graph(run, inputs, ctx.needs_input_grad[:9], (grad_out, grad_hn, grad_cn))) + after
        needs = ctx.needs_input_grad
        dxz, dh0, dc0, dw_hh, dw_ch, dw_hr, dw_ih, db = fused._fused_cpu.backward(
            grad_out, grad_hn, grad_cn, xh, cs, acts, cn, rs, w_hh, w_ch, w_hr, lengths, *ctx.config,
            input_size=x.shape[-1], bias_grad=needs[2] or needs[3])
        dx = torch.mm(dxz.view(-1, dxz.shape[-1]), w_ih).view(x.shape) if needs[0] else None
        db_ih = db if needs[2] else None
        db_hh = (db.clone() if needs[2] else db) if needs[3] else None
        return (dx, dw_ih, db_ih, db_hh, dh0, dc0, dw_hh, dw_ch, dw_hr) + after
