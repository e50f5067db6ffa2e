"""Triton kernels for the fused path's per-step gate math, forward and backward (GPU path).

The algorithm is nn/fused.py's (the same inputs, saved tensors and results as `_forward_torch` /
`_backward_torch`); what changes is that all pointwise work of a step is one Triton kernel next to the
step's GEMM (torch.addmm, i.e. cuBLAS on a GPU), instead of ~15 elementwise kernels. Launches per step:

* forward: the recurrent GEMM z_t = xz_t + h_{t-1} W_hh^T, then one kernel for every gate, the cell,
  the output and the carried state (zoneout, padding). Full peepholes add one GEMM for the gates that
  read c_{t-1}; with output_peephole="current" the output gate reads c_t through a GEMM, so the step
  is kernel / GEMM / kernel. A projection adds its GEMM (and a small kernel for zoneout or padding);
* backward: one kernel for all gate derivatives and dL/dc_{t-1}, then the GEMM dh = dZ_t W_hh (plus
  the same extra GEMMs as the forward for full peepholes and the projection).

So 2 launches per step each way for diagonal or no peepholes without a projection. The weight
gradients are single GEMMs over all steps after the loop, as in the other implementations.

On CPU tensors the kernels run through Triton's interpreter, which needs TRITON_INTERPRET=1 in the
environment before this module is imported (triton decides at decoration time); that is how the tests
check these kernels on machines without a GPU. Every option the fused path covers is supported.
"""
from __future__ import annotations

import os
from typing import List, Optional

import torch
from torch import Tensor

import triton
import triton.language as tl

try:
    INTERPRETED = bool(triton.knobs.runtime.interpret)
except AttributeError:  # triton < 3.4 has no knobs
    INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def available() -> bool:
    return True  # this module imported, so triton did


def _check_device(t: Tensor) -> None:
    if t.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            "backend='triton' runs CPU tensors only through Triton's interpreter: set TRITON_INTERPRET=1 "
            "before peephole_lstm's Triton kernels are imported, or move the module to a CUDA device"
        )


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # Overflow-safe in both directions: exp -> inf gives 1, exp -> 0 gives -1.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _tile(B, N, BB: tl.constexpr, BLOCK: tl.constexpr):
    """A program's BB x BLOCK tile: batch rows rb (BB,), columns j (1, BLOCK), its mask, rows (BB, 1)."""
    rb = tl.program_id(0) * BB + tl.arange(0, BB)
    j = (tl.program_id(1) * BLOCK + tl.arange(0, BLOCK))[None, :]
    m = (rb[:, None] < B) & (j < N)
    return rb, j, m, rb[:, None]


@triton.jit
def _fwd_step(
    Z, PB, OB, W, CP, HP, ACT, CN, CT, CS, R, HS, OUT, LEN, CONST,
    t, B, H, GH, NPH,
    BI: tl.constexpr, BF: tl.constexpr, BG: tl.constexpr, BO: tl.constexpr,
    PI: tl.constexpr, PF: tl.constexpr, PO: tl.constexpr, SI: tl.constexpr, SF: tl.constexpr, SO: tl.constexpr,
    FULL: tl.constexpr, CURRENT: tl.constexpr, COUPLED: tl.constexpr, ACT_IN: tl.constexpr,
    ACT_OUT: tl.constexpr, HAS_CLIP: tl.constexpr, ZONEOUT: tl.constexpr, MASKED: tl.constexpr,
    PROJ: tl.constexpr, KEEP: tl.constexpr, PHASE: tl.constexpr, ACC: tl.constexpr, BB: tl.constexpr, BLOCK: tl.constexpr,
):
    """One step's pointwise math for one tile of batch rows x hidden units (see _tile).
    PHASE 0: everything. PHASE 1: gates i, f, g and the cell (c_t into CT for the o-peephole GEMM).
    PHASE 2: the output gate (its full peephole in OB), r and the hidden state.
    Z holds the pre-activations with the recurrent GEMM added; PB the full peephole GEMM of c_{t-1}
    for the gates in slots SI, SF, SO; the hidden state is carried here unless PROJ (then R is written
    and the projection GEMM follows). KEEP: store the gates and the unclipped cell for the backward.
    CONST holds (cell_clip, zoneout) in the compute dtype (a float argument would be float32)."""
    clip = tl.load(CONST)
    zoneout = tl.load(CONST + 1)
    rb, j, m, row = _tile(B, H, BB, BLOCK)
    z_row = Z + rb[:, None] * GH
    a_row = ACT + rb[:, None] * GH
    c_old = tl.load(CP + row * H + j, mask=m, other=0.0).to(ACC)
    if MASKED:
        live = tl.load(LEN + rb, mask=rb < B, other=0)[:, None] > t
    if PHASE != 2:
        one = tl.full([BB, BLOCK], 1.0, ACC)
        f = one
        i = one
        if BI >= 0:
            zi = tl.load(z_row + BI * H + j, mask=m, other=0.0).to(ACC)
            if PI >= 0:
                if FULL:
                    zi += tl.load(PB + rb[:, None] * NPH + SI * H + j, mask=m, other=0.0).to(ACC)
                else:
                    zi += tl.load(W + PI * H + j, mask=j < H, other=0.0).to(ACC) * c_old
            i = _sigmoid(zi)
            if KEEP:
                tl.store(a_row + BI * H + j, i.to(ACT.dtype.element_ty), mask=m)
        if BF >= 0:
            zf = tl.load(z_row + BF * H + j, mask=m, other=0.0).to(ACC)
            if PF >= 0:
                if FULL:
                    zf += tl.load(PB + rb[:, None] * NPH + SF * H + j, mask=m, other=0.0).to(ACC)
                else:
                    zf += tl.load(W + PF * H + j, mask=j < H, other=0.0).to(ACC) * c_old
            f = _sigmoid(zf)
            if KEEP:
                tl.store(a_row + BF * H + j, f.to(ACT.dtype.element_ty), mask=m)
            if COUPLED:
                i = 1.0 - f
        g = tl.load(z_row + BG * H + j, mask=m, other=0.0).to(ACC)
        if ACT_IN:
            g = _tanh(g)
        if KEEP:
            tl.store(a_row + BG * H + j, g.to(ACT.dtype.element_ty), mask=m)
        c_pre = f * c_old + i * g
        if KEEP:
            tl.store(CN + row * H + j, c_pre.to(CN.dtype.element_ty), mask=m)
        c = c_pre
        if HAS_CLIP:
            c = tl.minimum(tl.maximum(c_pre, -clip), clip)
        c_new = c
        if ZONEOUT:
            c_new = c + zoneout * (c_old - c)
        if MASKED:
            c_new = tl.where(live, c_new, c_old)
        tl.store(CS + row * H + j, c_new.to(CS.dtype.element_ty), mask=m)
        if PHASE == 1:
            tl.store(CT + row * H + j, c.to(CT.dtype.element_ty), mask=m)
    else:
        c = tl.load(CT + row * H + j, mask=m, other=0.0).to(ACC)
    if PHASE != 1:
        o = tl.full([BB, BLOCK], 1.0, ACC)
        if BO >= 0:
            zo = tl.load(z_row + BO * H + j, mask=m, other=0.0).to(ACC)
            if PO >= 0:
                if FULL:
                    if CURRENT:
                        zo += tl.load(OB + row * H + j, mask=m, other=0.0).to(ACC)
                    else:
                        zo += tl.load(PB + rb[:, None] * NPH + SO * H + j, mask=m, other=0.0).to(ACC)
                else:
                    cell = c if CURRENT else c_old
                    zo += tl.load(W + PO * H + j, mask=j < H, other=0.0).to(ACC) * cell
            o = _sigmoid(zo)
            if KEEP:
                tl.store(a_row + BO * H + j, o.to(ACT.dtype.element_ty), mask=m)
        if ACT_OUT:
            r = o * _tanh(c)
        else:
            r = o * c
        if PROJ:
            tl.store(R + row * H + j, r.to(R.dtype.element_ty), mask=m)
        else:
            h_old = tl.load(HP + row * H + j, mask=m, other=0.0).to(ACC)
            h_new = r
            if ZONEOUT:
                h_new = r + zoneout * (h_old - r)
            if MASKED:
                tl.store(OUT + row * H + j, tl.where(live, h_new, 0.0).to(OUT.dtype.element_ty), mask=m)
                h_new = tl.where(live, h_new, h_old)
            tl.store(HS + row * H + j, h_new.to(HS.dtype.element_ty), mask=m)


@triton.jit
def _fwd_carry_h(HN, HP, HS, OUT, LEN, CONST, t, B, P, ZONEOUT: tl.constexpr, MASKED: tl.constexpr,
                 ACC: tl.constexpr, BB: tl.constexpr, BLOCK: tl.constexpr):
    """With a projection: the new hidden state from hn = r W_hr^T (zoneout, padding)."""
    zoneout = tl.load(CONST + 1)
    rb, j, m, row = _tile(B, P, BB, BLOCK)
    h_old = tl.load(HP + row * P + j, mask=m, other=0.0).to(ACC)
    h_new = tl.load(HN + row * P + j, mask=m, other=0.0).to(ACC)
    if ZONEOUT:
        h_new = h_new + zoneout * (h_old - h_new)
    if MASKED:
        live = tl.load(LEN + rb, mask=rb < B, other=0)[:, None] > t
        tl.store(OUT + row * P + j, tl.where(live, h_new, 0.0).to(OUT.dtype.element_ty), mask=m)
        h_new = tl.where(live, h_new, h_old)
    tl.store(HS + row * P + j, h_new.to(HS.dtype.element_ty), mask=m)


@triton.jit
def _bwd_split_h(DH, GO, DHN, DHK, LEN, CONST, t, B, P, HAS_GO: tl.constexpr, MASKED: tl.constexpr,
                 ACC: tl.constexpr, BB: tl.constexpr, BLOCK: tl.constexpr):
    """The gradient of the carried hidden state split into the step's new state (DHN) and the
    zoneout/padding carry (DHK)."""
    zoneout = tl.load(CONST + 1)
    rb, j, m, row = _tile(B, P, BB, BLOCK)
    dh = tl.load(DH + row * P + j, mask=m, other=0.0).to(ACC)
    g = dh
    if HAS_GO:
        g += tl.load(GO + row * P + j, mask=m, other=0.0).to(ACC)
    dhn = g * (1.0 - zoneout)
    dhk = g * zoneout
    if MASKED:
        live = tl.load(LEN + rb, mask=rb < B, other=0)[:, None] > t
        dhn = tl.where(live, dhn, 0.0)
        dhk = tl.where(live, dhk, dh)
    tl.store(DHN + row * P + j, dhn.to(DHN.dtype.element_ty), mask=m)
    tl.store(DHK + row * P + j, dhk.to(DHK.dtype.element_ty), mask=m)


@triton.jit
def _bwd_step(
    DH, DC, GO, DR, DHK, ACT, CP, CN, W, DZ, DCT, DCX, LEN, CONST,
    t, B, H, GH,
    BI: tl.constexpr, BF: tl.constexpr, BG: tl.constexpr, BO: tl.constexpr,
    PI: tl.constexpr, PF: tl.constexpr, PO: tl.constexpr,
    FULL: tl.constexpr, CURRENT: tl.constexpr, COUPLED: tl.constexpr, ACT_IN: tl.constexpr,
    ACT_OUT: tl.constexpr, HAS_CLIP: tl.constexpr, MASKED: tl.constexpr, HAS_GO: tl.constexpr,
    PROJ: tl.constexpr, PHASE: tl.constexpr, ACC: tl.constexpr, BB: tl.constexpr, BLOCK: tl.constexpr,
):
    """One step of the backward for one tile of batch rows x hidden units (see _tile): dZ_t and
    dL/dc_{t-1} (DCX, diagonal peepholes included). Without PROJ the hidden state's gradient is split
    here too (DHK: the part that skips the step). PHASE 0: everything. PHASE 1: up to the output
    gate (dz_o into DZ, dL/dc_t into DCT, for the full output peephole's GEMM). PHASE 2: the rest."""
    clip = tl.load(CONST)
    zoneout = tl.load(CONST + 1)
    rb, j, m, row = _tile(B, H, BB, BLOCK)
    a_row = ACT + rb[:, None] * GH
    dz_row = DZ + rb[:, None] * GH
    if MASKED:
        live = tl.load(LEN + rb, mask=rb < B, other=0)[:, None] > t
    dc = tl.load(DC + row * H + j, mask=m, other=0.0).to(ACC)
    dc_keep = dc * zoneout
    if MASKED:
        dc_keep = tl.where(live, dc_keep, dc)
    cpre = tl.load(CN + row * H + j, mask=m, other=0.0).to(ACC)
    c = cpre
    if HAS_CLIP:
        c = tl.minimum(tl.maximum(cpre, -clip), clip)
    o = tl.full([BB, BLOCK], 1.0, ACC)
    if BO >= 0:
        o = tl.load(a_row + BO * H + j, mask=m, other=0.0).to(ACC)
    if PHASE != 2:
        if PROJ:
            dr = tl.load(DR + row * H + j, mask=m, other=0.0).to(ACC)
        else:
            dh = tl.load(DH + row * H + j, mask=m, other=0.0).to(ACC)
            g_h = dh
            if HAS_GO:
                g_h += tl.load(GO + row * H + j, mask=m, other=0.0).to(ACC)
            dr = g_h * (1.0 - zoneout)
            dhk = g_h * zoneout
            if MASKED:
                dr = tl.where(live, dr, 0.0)
                dhk = tl.where(live, dhk, dh)
            tl.store(DHK + row * H + j, dhk.to(DHK.dtype.element_ty), mask=m)
        dcn = dc * (1.0 - zoneout)
        if MASKED:
            dcn = tl.where(live, dcn, 0.0)
        if ACT_OUT:
            ac = _tanh(c)
            dc_t = dcn + dr * o * (1.0 - ac * ac)
        else:
            ac = c
            dc_t = dcn + dr * o
        if BO >= 0:
            dzo = dr * ac * o * (1.0 - o)
            if MASKED:
                dzo = tl.where(live, dzo, 0.0)
            tl.store(dz_row + BO * H + j, dzo.to(DZ.dtype.element_ty), mask=m)
            if PO >= 0 and CURRENT and not FULL:
                dc_t += dzo * tl.load(W + PO * H + j, mask=j < H, other=0.0).to(ACC)
        if PHASE == 1:
            tl.store(DCT + row * H + j, dc_t.to(DCT.dtype.element_ty), mask=m)
    else:
        dc_t = tl.load(DCT + row * H + j, mask=m, other=0.0).to(ACC)
    if PHASE != 1:
        if HAS_CLIP:
            dc_t = tl.where((cpre >= -clip) & (cpre <= clip), dc_t, 0.0)
        one = tl.full([BB, BLOCK], 1.0, ACC)
        f = one
        if BF >= 0:
            f = tl.load(a_row + BF * H + j, mask=m, other=0.0).to(ACC)
        if BI >= 0:
            i = tl.load(a_row + BI * H + j, mask=m, other=0.0).to(ACC)
        elif COUPLED:
            i = 1.0 - f
        else:
            i = one
        gg = tl.load(a_row + BG * H + j, mask=m, other=0.0).to(ACC)
        c_old = tl.load(CP + row * H + j, mask=m, other=0.0).to(ACC)
        di = dc_t * gg
        if ACT_IN:
            dzg = dc_t * i * (1.0 - gg * gg)
        else:
            dzg = dc_t * i
        dc_prev = dc_t * f
        if MASKED:
            dzg = tl.where(live, dzg, 0.0)
        tl.store(dz_row + BG * H + j, dzg.to(DZ.dtype.element_ty), mask=m)
        if BI >= 0:
            dzi = di * i * (1.0 - i)
            if MASKED:
                dzi = tl.where(live, dzi, 0.0)
            tl.store(dz_row + BI * H + j, dzi.to(DZ.dtype.element_ty), mask=m)
            if PI >= 0 and not FULL:
                dc_prev += dzi * tl.load(W + PI * H + j, mask=j < H, other=0.0).to(ACC)
        if BF >= 0:
            df = dc_t * c_old
            if COUPLED:
                df -= di
            dzf = df * f * (1.0 - f)
            if MASKED:
                dzf = tl.where(live, dzf, 0.0)
            tl.store(dz_row + BF * H + j, dzf.to(DZ.dtype.element_ty), mask=m)
            if PF >= 0 and not FULL:
                dc_prev += dzf * tl.load(W + PF * H + j, mask=j < H, other=0.0).to(ACC)
        if BO >= 0 and PO >= 0 and not CURRENT and not FULL:
            # PHASE 0 here (the split is for full peepholes only), so dzo is this program's own.
            dc_prev += dzo * tl.load(W + PO * H + j, mask=j < H, other=0.0).to(ACC)
        if MASKED:
            dc_prev = tl.where(live, dc_prev, 0.0)
        tl.store(DCX + row * H + j, (dc_prev + dc_keep).to(DCX.dtype.element_ty), mask=m)


def _tiles(B: int, N: int):
    """(grid, BB, BLOCK): tiles of up to 2048 elements (16 per thread of 4 warps on a GPU), as wide as
    N allows up to 256 units; one program for the tests' tiny shapes (the interpreter's cost is per
    program)."""
    block = min(max(triton.next_power_of_2(N), 16), 256)
    bb = min(triton.next_power_of_2(B), max(1, 2048 // block))
    return (triton.cdiv(B, bb), triton.cdiv(N, block)), bb, block


class _Layout:
    """The static arguments shared by the kernels of one call, decoded from fused.config's."""

    def __init__(self, idx: List[int], flags, clip: float, zoneout: float, dtype: torch.dtype):
        self.full, self.current, self.coupled, self.act_in, self.act_out = (bool(f) for f in flags)
        self.blocks = idx[:4]
        self.rows = idx[4:]
        bi, bf, _, bo = self.blocks
        pi, pf, po = self.rows
        # Full peepholes reading c_{t-1}, stacked into one GEMM: (block, weight_ch row), slot order.
        self.prev = []
        if self.full:
            self.prev = [(blk, row) for blk, row, reads_prev in ((bi, pi, True), (bf, pf, True), (bo, po, not self.current))
                         if blk >= 0 and row >= 0 and reads_prev]
        slots = {blk: s for s, (blk, _) in enumerate(self.prev)}
        self.slots = (slots.get(bi, -1) if bi >= 0 else -1, slots.get(bf, -1) if bf >= 0 else -1,
                      slots.get(bo, -1) if bo >= 0 else -1)
        self.split = self.full and bo >= 0 and po >= 0 and self.current  # o reads c_t through a GEMM
        self.clip, self.zoneout = float(clip), float(zoneout)
        self.acc = tl.float64 if dtype == torch.float64 else tl.float32

    def consts(self, like: Tensor) -> Tensor:
        return torch.tensor([self.clip, self.zoneout], device=like.device,
                            dtype=torch.float64 if like.dtype == torch.float64 else torch.float32)

    def flags(self):
        bi, bf, bg, bo = self.blocks
        pi, pf, po = self.rows
        return dict(BI=bi, BF=bf, BG=bg, BO=bo, PI=pi, PF=pf, PO=po, FULL=self.full, CURRENT=self.current,
                    COUPLED=self.coupled, ACT_IN=self.act_in, ACT_OUT=self.act_out, HAS_CLIP=self.clip > 0,
                    ACC=self.acc)


def _stacked_prev(lay: _Layout, w_ch: Tensor) -> Tensor:
    return torch.cat([w_ch[row] for _, row in lay.prev], 0)  # (n_prev * H, H)


def _prev_columns(lay: _Layout, dz: Tensor, H: int) -> Tensor:
    blocks = [blk for blk, _ in lay.prev]
    if blocks == list(range(blocks[0], blocks[0] + len(blocks))):
        return dz[:, blocks[0] * H:(blocks[-1] + 1) * H]
    return torch.cat([dz[:, blk * H:(blk + 1) * H] for blk in blocks], 1)


def forward(xz, h0, c0, w_hh, w_ch, w_hr, lengths, idx, flags, clip, zoneout, needs_grad=True):
    """As fused._forward_torch: (out, hs, cs, acts, cn, rs), or (out, h_T, c_T) when not needs_grad."""
    _check_device(xz)
    T, B, GH = xz.shape
    H, P = c0.shape[-1], h0.shape[-1]
    xz, h0, c0 = xz.contiguous(), h0.contiguous(), c0.contiguous()
    lay = _Layout(idx, flags, clip, zoneout, xz.dtype)
    keep, proj, masked = needs_grad, w_hr is not None, lengths is not None
    new = xz.new_empty
    # Without a backward, only the states the next step reads are kept (two buffers used in turn) and
    # the gates are not stored at all; the hidden states double as the output unless padded.
    ring_h = not keep and masked
    hs = new(2 if ring_h else T + 1, B, P)
    cs = new(T + 1 if keep else 2, B, H)
    hs[0].copy_(h0)
    cs[0].copy_(c0)
    acts = new(T, B, GH) if keep else None
    cn = new(T, B, H) if keep else None
    rs = new(T if keep else 1, B, H) if proj else None
    out = new(T, B, P) if masked else hs[1:]
    zbuf = new(B, GH)
    w_hh_t = w_hh.t()
    wp_t = _stacked_prev(lay, w_ch).t() if lay.prev else None
    pbuf = new(B, len(lay.prev) * H) if lay.prev else None
    w_o_t = w_ch[lay.rows[2]].t() if lay.split else None
    ct = new(B, H) if lay.split else None
    obuf = new(B, H) if lay.split else None
    hn = new(B, P) if proj and (masked or lay.zoneout > 0) else None
    dummy = zbuf
    grid_h, bb_h, block_h = _tiles(B, H)
    grid_p, bb_p, block_p = _tiles(B, P)
    common = dict(lay.flags(), ZONEOUT=lay.zoneout > 0, MASKED=masked, PROJ=proj, KEEP=keep, BB=bb_h, BLOCK=block_h)
    slot_i, slot_f, slot_o = lay.slots
    diag = w_ch.contiguous() if (w_ch is not None and not lay.full) else dummy
    length = lengths if masked else dummy
    const = lay.consts(xz)
    for t in range(T):
        h_prev = hs[t % 2 if ring_h else t]
        h_next = hs[(t + 1) % 2 if ring_h else t + 1]
        c_prev, c_next = (cs[t], cs[t + 1]) if keep else (cs[t % 2], cs[(t + 1) % 2])
        torch.addmm(xz[t], h_prev, w_hh_t, out=zbuf)
        if pbuf is not None:
            torch.mm(c_prev, wp_t, out=pbuf)
        r = rs[t if keep else 0] if proj else dummy
        args = (zbuf, pbuf if pbuf is not None else dummy, obuf if obuf is not None else dummy, diag, c_prev,
                h_prev, acts[t] if keep else dummy, cn[t] if keep else dummy, ct if ct is not None else dummy,
                c_next, r, h_next, out[t] if masked else dummy, length, const,
                t, B, H, GH, len(lay.prev) * H)
        kw = dict(common, SI=slot_i, SF=slot_f, SO=slot_o)
        if lay.split:
            _fwd_step[grid_h](*args, PHASE=1, **kw)
            torch.mm(ct, w_o_t, out=obuf)
            _fwd_step[grid_h](*args, PHASE=2, **kw)
        else:
            _fwd_step[grid_h](*args, PHASE=0, **kw)
        if proj:
            if hn is None:  # nothing to mix in: the projection is the new state
                torch.mm(r, w_hr.t(), out=h_next)
            else:
                torch.mm(r, w_hr.t(), out=hn)
                _fwd_carry_h[grid_p](hn, h_prev, h_next, out[t] if masked else dummy, length, const, t, B, P,
                                     ZONEOUT=lay.zoneout > 0, MASKED=masked, ACC=lay.acc, BB=bb_p, BLOCK=block_p)
    if not keep:
        return out, hs[T % 2 if ring_h else T].clone(), cs[T if keep else T % 2].clone()
    return out, hs, cs, acts, cn, rs


def backward(grad_out, grad_hn, grad_cn, hs, cs, acts, cn, rs, w_hh, w_ch, w_hr, lengths, idx, flags, clip,
             zoneout):
    """As fused._backward_torch: (dZ, dh0, dc0, dW_hh, dW_ch, dW_hr)."""
    _check_device(acts)
    T, B, GH = acts.shape
    H, P = cs.shape[-1], hs.shape[-1]
    lay = _Layout(idx, flags, clip, zoneout, acts.dtype)
    proj, masked = w_hr is not None, lengths is not None
    new = acts.new_empty
    dh = grad_hn.contiguous().clone() if grad_hn is not None else acts.new_zeros(B, P)
    dc = grad_cn.contiguous().clone() if grad_cn is not None else acts.new_zeros(B, H)
    grad_out = grad_out.contiguous() if grad_out is not None else None
    dZ = new(T, B, GH)
    dhn_all = new(T, B, P) if proj else None
    dh_keep, dh_next, dc_next = new(B, P), new(B, P), new(B, H)
    dr = new(B, H) if proj else None
    dct = new(B, H) if lay.split else None
    w_o = w_ch[lay.rows[2]] if lay.split else None
    wp = _stacked_prev(lay, w_ch) if lay.prev else None
    dummy = dh_keep
    diag = w_ch.contiguous() if (w_ch is not None and not lay.full) else dummy
    length = lengths if masked else dummy
    const = lay.consts(acts)
    grid_h, bb_h, block_h = _tiles(B, H)
    grid_p, bb_p, block_p = _tiles(B, P)
    kw = dict(lay.flags(), MASKED=masked, HAS_GO=grad_out is not None, PROJ=proj, BB=bb_h, BLOCK=block_h)
    for t in range(T - 1, -1, -1):
        go = grad_out[t] if grad_out is not None else dummy
        if proj:
            _bwd_split_h[grid_p](dh, go, dhn_all[t], dh_keep, length, const, t, B, P, HAS_GO=grad_out is not None,
                                 MASKED=masked, ACC=lay.acc, BB=bb_p, BLOCK=block_p)
            torch.mm(dhn_all[t], w_hr, out=dr)
        args = (dh, dc, go, dr if proj else dummy, dh_keep, acts[t], cs[t], cn[t], diag, dZ[t],
                dct if dct is not None else dummy, dc_next, length, const, t, B, H, GH)
        if lay.split:
            _bwd_step[grid_h](*args, PHASE=1, **kw)
            bo = lay.blocks[3]
            dct.addmm_(dZ[t][:, bo * H:(bo + 1) * H], w_o)
            _bwd_step[grid_h](*args, PHASE=2, **kw)
        else:
            _bwd_step[grid_h](*args, PHASE=0, **kw)
        if wp is not None:
            dc_next.addmm_(_prev_columns(lay, dZ[t], H), wp)
        torch.addmm(dh_keep, dZ[t], w_hh, out=dh_next)
        dh, dh_next = dh_next, dh
        dc, dc_next = dc_next, dc
    # Weight gradients: one GEMM (or reduction) over all T*B rows each.
    TB = T * B
    dZ2 = dZ.view(TB, GH)
    dw_hh = dZ2.t() @ hs[:-1].reshape(TB, P)
    dw_hr = dhn_all.view(TB, P).t() @ rs.reshape(TB, H) if proj else None
    dw_ch = None
    if w_ch is not None:
        c_news = cn.clamp(-lay.clip, lay.clip) if lay.clip > 0 else cn
        dw_ch = torch.zeros_like(w_ch)
        c_old, c_new = cs[:-1].reshape(TB, H), c_news.reshape(TB, H)
        for blk, row, src in ((lay.blocks[0], lay.rows[0], c_old), (lay.blocks[1], lay.rows[1], c_old),
                              (lay.blocks[3], lay.rows[2], c_new if lay.current else c_old)):
            if blk >= 0 and row >= 0:
                d = dZ2[:, blk * H:(blk + 1) * H]
                dw_ch[row] = d.t() @ src if lay.full else (d * src).sum(0)
    return dZ, dh, dc, dw_hh, dw_ch, dw_hr
