"""The fused backend: one autograd node per (layer, direction) for the whole sequence.

The eager backend records ~15 autograd nodes per time step, and on small shapes its cost is the
per-op dispatch, not the arithmetic. Here a custom ``torch.autograd.Function`` runs the whole
recurrence and a hand-written BPTT backward:

* the input projection W_ih x_t + b for all steps is one GEMM before the loop (done by the layer, so
  autograd turns its gradient into one GEMM for dx and one for dW_ih over all T*B rows);
* per step: one recurrent GEMM h_{t-1} W_hh^T, then all gate math in one fused pointwise pass
  (plus a GEMM per full peephole matrix and for the projection);
* the backward walks the steps in reverse with one GEMM dZ_t W_hh per step and fused pointwise
  gate derivatives, keeps dZ for all steps, and computes dW_hh = dZ^T H_prev, dW_hr and the
  peephole gradients as single GEMMs/reductions over all steps after the loop.

Three implementations of this algorithm exist: the C++ kernel (csrc/fused_lstm.cpp, built at install,
CPU tensors), Triton kernels for the per-step gate math (nn/triton_kernels.py, CUDA tensors when the
`triton` package is importable, or any tensor with backend="triton") and `_forward_torch`/
`_backward_torch` below (plain PyTorch ops, for CUDA without Triton and when the extension is not
built). All are tested against the eager loop in float64.

Without a gradient to compute (torch.no_grad/inference_mode, or no input requiring one) the forward
skips everything only the backward reads: no autograd node, no per-step gates or states kept.

Options the fused path does not cover (layer_norm, gate_recurrence, zoneout while training) run the
eager loop instead; `unsupported(opts, training)` says why, and the layer reports the path it ran.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from peephole_lstm.nn.cell import step_flags
from peephole_lstm.nn.functional import _peep, input_projection, lstm_sequence, lstm_step
from peephole_lstm.nn.options import CellOptions

try:
    from peephole_lstm.nn import _fused_cpu  # built by setup.py
except ImportError:  # a source checkout without the build, or a failed compile: use the PyTorch path
    _fused_cpu = None

_use_extension = True
KERNELS = ("fused-cpp", "fused-triton", "fused-torch")


def extension_available() -> bool:
    """Whether the compiled CPU kernel is importable (else CPU tensors use the pure-PyTorch path)."""
    return _fused_cpu is not None


def _triton_module():
    """nn/triton_kernels, imported on first use (it imports triton: the core library needs torch only);
    None when the `triton` package is not installed."""
    global _triton
    if _triton is None:
        try:
            from peephole_lstm.nn import triton_kernels as module
        except ImportError:
            module = False
        _triton = module
    return _triton or None


_triton = None


def triton_available() -> bool:
    """Whether the Triton kernels can run (the `triton` package imports); CUDA tensors then use them."""
    return _triton_module() is not None


def set_extension_enabled(enabled: bool) -> bool:
    """Switch the automatic choice of the compiled kernels (C++ for CPU tensors, Triton for CUDA ones) on
    or off, for tests and benchmarks of the pure-PyTorch path; returns the previous setting.
    backend="triton" still runs Triton."""
    global _use_extension
    previous, _use_extension = _use_extension, bool(enabled)
    return previous


def empty_cache() -> int:
    """Free the C++ kernel's cached big buffers (gate activations, states and dZ of whole sequences,
    kept for the next call so that each training step does not page-fault fresh memory, up to 1 GiB
    held while unused); returns how many bytes were freed. Like torch.cuda.empty_cache()."""
    return _fused_cpu.empty_cache() if _fused_cpu is not None else 0


def unsupported(opts: CellOptions, training: bool) -> Optional[str]:
    """Why the fused path cannot run these options (None when it can)."""
    if opts.layer_norm:
        return "layer_norm=True"
    if opts.gate_recurrence:
        return "gate_recurrence=True"
    if opts.zoneout > 0 and training:
        return "zoneout in training mode (random masks)"
    return None


def kernel_name(device: torch.device, backend: str = "auto") -> str:
    """Which implementation of the fused algorithm (one of KERNELS) runs for tensors on `device` with
    the layer's `backend` ("triton" forces the Triton kernels, the others choose by device)."""
    if backend == "triton":
        return "fused-triton"
    if device.type == "cpu" and _use_extension and _fused_cpu is not None:
        return "fused-cpp"
    if device.type == "cuda" and _use_extension and triton_available():
        return "fused-triton"
    return "fused-torch"


def _kernels(kernel: str):
    """(forward, backward) of one implementation, all with the same signature."""
    if kernel == "fused-cpp":
        return _fused_cpu.forward, _fused_cpu.backward
    if kernel == "fused-triton":
        module = _triton_module()
        if module is None:
            raise ImportError("backend='triton' needs the triton package: pip install 'peephole-lstm[triton]'")
        return module.forward, module.backward
    return _forward_torch, _backward_torch


def _config(opts: CellOptions) -> Tuple[List[int], List[bool], float, float]:
    """step_flags regrouped as the kernels take them: (layout, [full, current, coupled, act_in, act_out],
    cell_clip, zoneout); training does not matter here, the fused path never draws zoneout masks."""
    idx, *flags, clip, zoneout, _ = step_flags(opts, False)
    return idx, flags, clip, zoneout


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def fused_layer(
    x: Tensor, input_weights: tuple, h0: Tensor, c0: Tensor, lengths: Optional[Tensor], weights: tuple,
    opts: CellOptions, kernel: Optional[str] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """One layer direction from its input x (T, B, I): functional.input_projection, then fused_sequence.
    `input_weights` are the layer's INPUT_WEIGHTS. Without a gradient to compute, the C++ kernel adds
    the projection to each step's recurrent GEMM instead, so the (T, B, G*H) projection is never stored
    (from 8 rows over all steps on: below that the concatenated weight it builds costs more)."""
    kernel = kernel or kernel_name(x.device)
    w_ih, b_ih, b_hh = input_weights[:3]
    w_hh, w_ch, _, w_hr = weights[:4]
    if (kernel == "fused-cpp" and x.shape[0] * x.shape[1] >= 8
            and not _needs_grad(x, w_ih, b_ih, b_hh, h0, c0, w_hh, w_ch, w_hr)):
        idx, flags, clip, zoneout = _config(opts)
        bias = b_ih + b_hh if b_ih is not None and b_hh is not None else None
        if lengths is not None:
            lengths = lengths.to(dtype=torch.int64)
        out, h, c = _fused_cpu.forward(None, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout,
                                       needs_grad=False, x=x, w_ih=w_ih, bias=bias)
        return out, h, c
    return fused_sequence(input_projection(x, *input_weights), h0, c0, lengths, weights, opts, kernel)


def fused_sequence(
    xz: Tensor, h0: Tensor, c0: Tensor, lengths: Optional[Tensor], weights: tuple, opts: CellOptions,
    kernel: Optional[str] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Like functional.lstm_sequence for options `unsupported` accepts (zoneout as in eval mode).
    `weights` are the layer's STEP_WEIGHTS; `kernel` one of KERNELS (default: kernel_name(xz.device)).
    Returns (output (T, B, out), h_T, c_T)."""
    w_hh, w_ch, _, w_hr = weights[:4]
    kernel = kernel or kernel_name(xz.device)
    if lengths is not None:
        lengths = lengths.to(device=xz.device, dtype=torch.int64)
    tensors = (xz, h0, c0, w_hh, w_ch, w_hr)
    if not _needs_grad(*tensors):
        # Inference: nothing will call a backward, so the kernels keep no step's gates or states.
        idx, flags, clip, zoneout = _config(opts)
        out, h, c = _kernels(kernel)[0](*tensors, lengths, idx, flags, clip, zoneout, needs_grad=False)
        return out, h, c
    return _Sequence.apply(*tensors, lengths, opts, kernel)


def _eager_sequence(xz, h0, c0, w_hh, w_ch, w_hr, lengths, opts: CellOptions):
    """The same sequence through the eager per-step loop: differentiable to any order."""
    weights = (w_hh, w_ch, None, w_hr, None, None, None, None)
    gates0 = xz.new_zeros(xz.shape[1], 0)
    out, h, c, _ = lstm_sequence(lstm_step, xz, h0, c0, gates0, lengths, weights, step_flags(opts, False))
    return out, h, c


class _Sequence(torch.autograd.Function):
    """Forward and first-order backward by the hand-written kernels. The hand-written backward is not
    itself differentiable, so when autograd asks for a graph of the gradient (create_graph=True: gradient
    penalties, Hessian-vector products, gradgradcheck) the backward instead recomputes the sequence with
    the eager ops and differentiates that: slower, but exact to any order, and first-order training
    never pays for it."""

    @staticmethod
    def forward(ctx, xz, h0, c0, w_hh, w_ch, w_hr, lengths, opts, kernel):
        idx, flags, clip, zoneout = _config(opts)
        run = _kernels(kernel)[0]
        out, hs, cs, acts, cn, rs = run(xz, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout)
        ctx.opts, ctx.kernel = opts, kernel
        # The inputs are saved for the double-backward recompute only: no copy, they exist anyway.
        ctx.save_for_backward(hs, cs, acts, cn, rs, w_hh, w_ch, w_hr, lengths, xz, h0, c0)
        # Fresh tensors, not views of the saved states: users may modify the outputs in place.
        if kernel != "fused-cpp" and lengths is None:
            out = out.clone()
        return out, hs[-1].clone(), cs[-1].clone()

    @staticmethod
    def backward(ctx, grad_out, grad_hn, grad_cn):
        hs, cs, acts, cn, rs, w_hh, w_ch, w_hr, lengths, xz, h0, c0 = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward is wanted
            return _differentiable_backward(ctx, (xz, h0, c0, w_hh, w_ch, w_hr), lengths, grad_out, grad_hn, grad_cn)
        idx, flags, clip, zoneout = _config(ctx.opts)
        run = _kernels(ctx.kernel)[1]
        dxz, dh0, dc0, dw_hh, dw_ch, dw_hr = run(
            grad_out, grad_hn, grad_cn, hs, cs, acts, cn, rs, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout
        )
        return dxz, dh0, dc0, dw_hh, dw_ch, dw_hr, None, None, None


def _differentiable_backward(ctx, inputs, lengths, grad_out, grad_hn, grad_cn):
    """The vector-Jacobian product of the eager recomputation, built as a graph (of the saved inputs and
    of the incoming gradients) so that autograd can differentiate it again."""
    wanted = [i for i, need in enumerate(ctx.needs_input_grad[:6]) if need]
    with torch.enable_grad():
        # Detached leaves stand in for inputs that need no gradient, so the recompute never reaches into
        # (or accumulates into) graphs the caller did not ask about.
        args = [x if k in wanted else (None if x is None else x.detach()) for k, x in enumerate(inputs)]
        outs = _eager_sequence(*args, lengths, ctx.opts)
        pairs = [(o, g) for o, g in zip(outs, (grad_out, grad_hn, grad_cn)) if g is not None]
        grads = torch.autograd.grad(
            [o for o, _ in pairs], [args[k] for k in wanted], [g for _, g in pairs],
            create_graph=True, allow_unused=True,
        )
    result = [None] * 9
    for k, g in zip(wanted, grads):
        result[k] = torch.zeros_like(inputs[k]) if g is None else g
    return tuple(result)


# --- the same algorithm in plain PyTorch ops (CUDA without Triton, or no compiled kernel) ----------


def _blocks(z: Tensor, idx: List[int], hidden: int):
    def block(k: int) -> Optional[Tensor]:
        return None if idx[k] < 0 else z[..., idx[k] * hidden:(idx[k] + 1) * hidden]

    return block(0), block(1), block(2), block(3)


def _forward_torch(xz, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout, needs_grad=True):
    """(out, hs, cs, acts, cn, rs) for the backward; (out, h_T, c_T) when not needs_grad."""
    full, current, coupled, act_in, act_out = flags
    T, B, _ = xz.shape
    H = c0.shape[-1]
    hs, cs = [h0], [c0]
    acts, cns, rs, outs = [], [], [], []
    for t in range(T):
        h_prev, c_prev = hs[-1], cs[-1]
        if not needs_grad:  # only the last state is read again: let the others go
            hs[0], cs[0] = h_prev, c_prev
            del hs[1:], cs[1:]
        z = torch.addmm(xz[t], h_prev, w_hh.t())
        zi, zf, zg, zo = _blocks(z, idx, H)
        one = torch.ones_like(c_prev)
        i = f = o = one
        if zi is not None:
            i = torch.sigmoid(zi + _peep(c_prev, w_ch, idx[4], full) if idx[4] >= 0 else zi)
        if zf is not None:
            f = torch.sigmoid(zf + _peep(c_prev, w_ch, idx[5], full) if idx[5] >= 0 else zf)
            if coupled:
                i = 1 - f
        g = torch.tanh(zg) if act_in else zg
        c_pre = f * c_prev + i * g
        c = c_pre.clamp(-clip, clip) if clip > 0 else c_pre
        if zo is not None:
            o = torch.sigmoid(zo + _peep(c if current else c_prev, w_ch, idx[6], full) if idx[6] >= 0 else zo)
        r = o * (torch.tanh(c) if act_out else c)
        hn = r @ w_hr.t() if w_hr is not None else r
        h_new, c_new = torch.lerp(hn, h_prev, zoneout), torch.lerp(c, c_prev, zoneout)
        if lengths is not None:
            live = (lengths > t).unsqueeze(-1)
            h_new, c_new = torch.where(live, h_new, h_prev), torch.where(live, c_new, c_prev)
            outs.append(torch.where(live, h_new, torch.zeros_like(h_new)))
        elif not needs_grad:
            outs.append(h_new)
        hs.append(h_new)
        cs.append(c_new)
        if not needs_grad:
            continue
        gate = [i if zi is not None else None, f if zf is not None else None, g, o if zo is not None else None]
        acts.append(torch.cat([gate[k] for k in sorted(range(4), key=lambda k: idx[k]) if idx[k] >= 0], -1))
        cns.append(c_pre)
        rs.append(r)
    if not needs_grad:
        return torch.stack(outs), hs[-1].clone(), cs[-1].clone()
    hs, cs = torch.stack(hs), torch.stack(cs)
    out = torch.stack(outs) if lengths is not None else hs[1:]
    return out, hs, cs, torch.stack(acts), torch.stack(cns), torch.stack(rs) if w_hr is not None else None


def _backward_torch(grad_out, grad_hn, grad_cn, hs, cs, acts, cn, rs, w_hh, w_ch, w_hr, lengths, idx, flags,
                    clip, zoneout):
    full, current, coupled, act_in, act_out = flags
    T = acts.shape[0]
    H = cs.shape[-1]
    z = zoneout
    dh = grad_hn if grad_hn is not None else torch.zeros_like(hs[0])
    dc = grad_cn if grad_cn is not None else torch.zeros_like(cs[0])
    dZ = torch.empty_like(acts)
    dhns = [None] * T
    c_news = cn.clamp(-clip, clip) if clip > 0 else cn
    for t in range(T - 1, -1, -1):
        g_out = grad_out[t] if grad_out is not None else torch.zeros_like(dh)
        g_h = dh + g_out
        live = (lengths > t).unsqueeze(-1) if lengths is not None else None
        dhn, dh_keep, dcn, dc_keep = g_h * (1 - z), g_h * z, dc * (1 - z), dc * z
        if live is not None:
            zero = torch.zeros_like
            dhn, dh_keep = torch.where(live, dhn, zero(dhn)), torch.where(live, dh_keep, dh)
            dcn, dc_keep = torch.where(live, dcn, zero(dcn)), torch.where(live, dc_keep, dc)
        dhns[t] = dhn
        dr = dhn @ w_hr if w_hr is not None else dhn
        c, c_old = c_news[t], cs[t]
        ai, af, ag, ao = _blocks(acts[t], idx, H)
        ac = torch.tanh(c) if act_out else c
        o = ao if ao is not None else torch.ones_like(c)
        dc_t = dcn + (dr * o * (1 - ac * ac) if act_out else dr * o)
        dzi, dzf, dzo = None, None, None
        if ao is not None:
            dzo = dr * ac * ao * (1 - ao)
            if idx[6] >= 0 and current:
                dc_t = dc_t + (dzo @ w_ch[idx[6]] if full else dzo * w_ch[idx[6]])
        if clip > 0:
            dc_t = torch.where((cn[t] >= -clip) & (cn[t] <= clip), dc_t, torch.zeros_like(dc_t))
        f = af if af is not None else torch.ones_like(c)
        i = ai if ai is not None else (1 - f if coupled else torch.ones_like(c))
        di = dc_t * ag
        dzg = dc_t * i * (1 - ag * ag) if act_in else dc_t * i
        dc_prev = dc_t * f
        if ai is not None:
            dzi = di * i * (1 - i)
        if af is not None:
            df = dc_t * c_old - di if coupled else dc_t * c_old
            dzf = df * f * (1 - f)
        for dzk, row, reads_prev in ((dzi, idx[4], True), (dzf, idx[5], True), (dzo, idx[6], not current)):
            if dzk is not None and row >= 0 and reads_prev:
                dc_prev = dc_prev + (dzk @ w_ch[row] if full else dzk * w_ch[row])
        dz = torch.cat([d for d, k in sorted(((dzi, 0), (dzf, 1), (dzg, 2), (dzo, 3)), key=lambda p: idx[p[1]])
                        if idx[k] >= 0], -1)
        if live is not None:
            dz = torch.where(live, dz, torch.zeros_like(dz))
            dc_prev = torch.where(live, dc_prev, torch.zeros_like(dc_prev))
        dZ[t] = dz
        dh = torch.addmm(dh_keep, dz, w_hh)
        dc = dc_prev + dc_keep
    TB = T * acts.shape[1]
    dZ2 = dZ.reshape(TB, -1)
    dw_hh = dZ2.t() @ hs[:-1].reshape(TB, -1)
    dw_hr = torch.stack(dhns).reshape(TB, -1).t() @ rs.reshape(TB, H) if w_hr is not None else None
    dw_ch = None
    if w_ch is not None:
        dw_ch = torch.zeros_like(w_ch)
        c_old, c_new = cs[:-1].reshape(TB, H), c_news.reshape(TB, H)
        for gate, row, src in ((0, idx[4], c_old), (1, idx[5], c_old), (3, idx[6], c_new if current else c_old)):
            if idx[gate] >= 0 and row >= 0:
                d = dZ2[:, idx[gate] * H:(idx[gate] + 1) * H]
                dw_ch[row] = d.t() @ src if full else (d * src).sum(0)
    return dZ, dh, dc, dw_hh, dw_ch, dw_hr
