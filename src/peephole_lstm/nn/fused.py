"""The fused backend: one autograd node per (layer, direction) for the whole sequence.

The eager backend records ~15 autograd nodes per time step, and on small shapes its cost is the
per-op dispatch, not the arithmetic. Here one operator (nn/ops.py) runs the whole recurrence,
with a hand-written BPTT backward as its autograd formula:

* the input projection W_ih x_t + b for all steps is one GEMM before the loop (done by the layer, so
  autograd turns its gradient into one GEMM for dx and one for dW_ih over all T*B rows); the C++
  kernel instead adds it to each step's recurrent GEMM, [x_t | h_{t-1}] [W_ih | W_hh]^T, and returns
  dW_ih with dW_hh (ops._ProjectedSequence);
* per step: one recurrent GEMM h_{t-1} W_hh^T, then all gate math in one fused pointwise pass
  (plus a GEMM per full peephole matrix and for the projection);
* the backward walks the steps in reverse with one GEMM dZ_t W_hh per step and fused pointwise
  gate derivatives, keeps dZ for all steps, and computes dW_hh = dZ^T H_prev, dW_hr and the
  full peepholes' gradients as single GEMMs over all steps after the loop (the diagonal peepholes'
  as sums over all steps).

Three implementations of this algorithm exist: the C++ kernel (csrc/, docs/speed.md; built at install,
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
from peephole_lstm.nn.functional import StepFlags, _peep, lstm_sequence, lstm_step
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


def kernel_name(device: torch.device, dtype: Optional[torch.dtype] = None, backend: str = "auto") -> str:
    """Which implementation of the fused algorithm (one of KERNELS) runs for tensors on `device` of
    `dtype` with the layer's `backend` ("triton" forces the Triton kernels, the others choose by device).
    The C++ kernel covers float32, float64 and bfloat16; float16 on CPU (rare: CPUs have no fast float16
    arithmetic) runs the PyTorch twin, whose per-op float16 rounding is what nn.LSTM's CPU path does."""
    if backend == "triton":
        return "fused-triton"
    if device.type == "cpu" and _use_extension and _fused_cpu is not None and dtype != torch.float16:
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


def config(opts: CellOptions) -> Tuple[List[int], List[bool], float, float]:
    """step_flags regrouped as the kernels take them: (layout, [full, current, coupled, act_in, act_out],
    cell_clip, zoneout); the fused path never draws zoneout masks, so training is not among them."""
    f = step_flags(opts)
    return f.idx, [f.peep_full, f.peep_current, f.coupled, f.act_in_tanh, f.act_out_tanh], f.cell_clip, f.zoneout


def keeps_pre_clip_cell(clip: float, zoneout: float) -> bool:
    """Whether the forward returns the cell before clipping and zoneout (the backward needs it only then:
    otherwise it is the carried cell state of the live rows)."""
    return clip > 0 or zoneout > 0


def _resolve(kernel: str, like: Tensor) -> str:
    return kernel if kernel in KERNELS else kernel_name(like.device, like.dtype)


def forward(xz, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout, kernel: str = "auto"):
    """The forward of `kernel` (one of KERNELS; "auto": kernel_name for xz), normalised to fresh
    (unaliased) tensors: (output, h_T, c_T, and for the backward: hs, cs, gate activations, the pre-clip
    cell (empty unless kept) and the projection's inputs (empty without a projection)). All kernels save
    the same layout, so any backward reads any forward's tensors."""
    kernel = _resolve(kernel, xz)
    out, hs, cs, acts, cn, rs = _kernels(kernel)[0](xz, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout)
    if kernel != "fused-cpp":
        if lengths is None:
            out = out.clone()  # a view of hs
        if not keeps_pre_clip_cell(clip, zoneout):
            cn = None
    # Absent ones as empty tensors (an operator returns tensors), each its own: outputs may not alias.
    return (out, hs[-1].clone(), cs[-1].clone(), hs, cs, acts, xz.new_empty(0) if cn is None else cn,
            xz.new_empty(0) if rs is None else rs)


def backward(grad_out, grad_hn, grad_cn, hs, cs, acts, cn, rs, w_hh, w_ch, w_hr, lengths, idx, flags, clip,
             zoneout, kernel: str = "auto"):
    """The backward of `kernel` ("auto": the one for the saved tensors): (d xz, d h0, d c0, d w_hh, d w_ch,
    d w_hr), None for absent weights. Incoming gradients may be None (outputs nobody used)."""
    kernel = _resolve(kernel, acts)
    cn = cn if cn.numel() else None
    rs = rs if rs.numel() else None
    if cn is None and kernel == "fused-triton":
        cn = cs[1:]  # without clipping or zoneout the pre-clip cell is the new cell (the C++ kernel's choice)
    run = _kernels(kernel)[1]
    # (the C++ kernel's two extra results belong to the fused input projection: ops._ProjectedSequence)
    return tuple(run(grad_out, grad_hn, grad_cn, hs, cs, acts, cn, rs, w_hh, w_ch, w_hr, lengths, idx, flags, clip,
                     zoneout)[:6])


def inference(xz, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout, kernel: str = "auto"):
    """The forward when nothing will call a backward: (output, h_T, c_T); the kernels keep no step's
    gates or states."""
    run = _kernels(_resolve(kernel, xz))[0]
    return run(xz, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout, needs_grad=False)


def projected_forward(x, w_ih, bias, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout,
                      needs_grad: bool = False):
    """The C++ kernel's forward from the layer input x (T, B, I): it adds the input projection to each
    step's recurrent GEMM, so the (T, B, G*H) projection is never stored. Without needs_grad as
    `inference`: (out, h_T, c_T); with it (out, xh, cs, acts, cn, rs) for its backward, xh (T+1, B, I + P)
    holding the GEMM's rows [x_t | h_{t-1}] (ops._ProjectedSequence)."""
    return _fused_cpu.forward(None, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout,
                              needs_grad=needs_grad, x=x, w_ih=w_ih, bias=bias)


def batched(*grads) -> bool:
    """Whether any incoming gradient is a vmap-batched tensor (gradcheck's batched check,
    jacobian(vectorize=True)): those need the plain ops, as the C++ kernel reads raw memory and the twin
    writes batched rows into an unbatched buffer."""
    ft = torch._C._functorch  # torch.func's vmap, and the legacy vmap that autograd's is_grads_batched uses
    return any(g is not None and (ft.is_batchedtensor(g) or ft.is_legacy_batchedtensor(g)) for g in grads)


def under_functorch() -> bool:
    """Whether a torch.func transform (grad, vjp, jacrev, vmap, ...) is tracing: its wrapped tensors
    cannot enter the kernels, and the operator has no functorch rules; the eager ops have."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def eager_sequence(xz, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout):
    """The same sequence through the eager per-step loop: differentiable to any order."""
    weights = (w_hh, w_ch, None, w_hr, None, None, None, None)
    gates0 = xz.new_zeros(xz.shape[1], 0)
    # (config's five flags are StepFlags' bools, in its order; training=False: the fused path has no masks)
    out, h, c, _ = lstm_sequence(lstm_step, xz, h0, c0, gates0, lengths, weights,
                                 StepFlags(idx, *flags, clip, zoneout), False)
    return out, h, c


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
    if cn is None:  # no clip, no zoneout: the new cell is the carried state (padded rows get no gradient)
        c_news = cs[1:]
    else:
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
