"""An independent, deliberately plain reference of the peephole LSTM equations.

It shares no code with peephole_lstm.nn.functional: it reads the parameters by name from a state_dict,
works on one sample and one time step at a time, and slices every gate block out explicitly. The
options come from the same keyword arguments the module was built with, and the gate layout (which
blocks exist, which gates have peephole rows) is re-derived here from those keywords.

    z    = LN_ih(W_ih x) + LN_hh(W_hh h) + b_ih + b_hh        (no LN without layer_norm)
    i    = sigmoid(z_i + peep_i(c) + R_i a)    or 1 - f (coupled), or 1 (no input gate)
    f    = sigmoid(z_f + peep_f(c) + R_f a)    or 1 (no forget gate)
    g    = act_in(z_g)
    c'   = clip(LN_c(f c + i g))
    o    = sigmoid(z_o + peep_o(c' or c) + R_o a)   or 1 (no output gate)
    h'   = W_hr (o act_out(c'))
    eval-mode zoneout p: h' <- (1 - p) h' + p h, c' <- (1 - p) c' + p c
"""
from __future__ import annotations

import torch

LN_EPS = 1e-5  # torch.nn.LayerNorm's default, the epsilon the library documents

DEFAULTS = dict(
    num_layers=1, bias=True, batch_first=False, bidirectional=False, proj_size=0, peephole="diagonal",
    peephole_gates="ifo", output_peephole="current", coupled=False, input_gate=True, forget_gate=True,
    output_gate=True, input_activation="tanh", output_activation="tanh", gate_recurrence=False,
    cell_clip=None, layer_norm=False, zoneout=0.0,
)


def sigmoid(z):
    return 1.0 / (1.0 + torch.exp(-z))


def layer_norm(z, gain, shift):
    mean = z.sum() / z.numel()
    var = ((z - mean) ** 2).sum() / z.numel()
    return (z - mean) / torch.sqrt(var + LN_EPS) * gain + shift


class Options:
    """The keyword arguments of one PeepholeLSTM/PeepholeLSTMCell, with the defaults filled in."""

    def __init__(self, hidden_size: int, **kwargs):
        unknown = set(kwargs) - set(DEFAULTS) - {"input_size", "forget_bias", "dropout", "backend"}
        assert not unknown, f"reference does not know {unknown}"
        self.hidden = hidden_size
        for k, v in DEFAULTS.items():
            setattr(self, k, kwargs.get(k, v))
        # Which sigmoid gates have their own weight block; CIFG has no block for i.
        self.own = {
            "i": self.input_gate and not self.coupled,
            "f": self.forget_gate,
            "o": self.output_gate,
        }
        self.blocks = [b for b in ("i", "f", "g", "o") if b == "g" or self.own[b]]
        self.own_gates = [g for g in ("i", "f", "o") if self.own[g]]
        if self.peephole == "none":
            self.peep_rows = []
        else:
            self.peep_rows = [g for g in self.own_gates if g in self.peephole_gates]


def _block(vector, opts: Options, name: str):
    k = opts.blocks.index(name)
    return vector[k * opts.hidden:(k + 1) * opts.hidden]


def cell_step(p: dict, opts: Options, x, h, c, a):
    """One step for one sample: x (in,), h (out,), c (H,), a (n_own_gates * H,). Returns h, c, a."""
    H = opts.hidden
    from_x = p["weight_ih"] @ x
    from_h = p["weight_hh"] @ h
    if opts.layer_norm:
        from_x = layer_norm(from_x, p["ln_ih_weight"], p["ln_ih_bias"])
        from_h = layer_norm(from_h, p["ln_hh_weight"], p["ln_hh_bias"])
    z = from_x + from_h
    if opts.bias:
        z = z + p["bias_ih"] + p["bias_hh"]

    def peephole(gate, cell):
        if gate not in opts.peep_rows:
            return 0.0
        w = p["weight_ch"][opts.peep_rows.index(gate)]
        return w @ cell if opts.peephole == "full" else w * cell

    def recurrence(gate):
        if not opts.gate_recurrence:
            return 0.0
        k = opts.own_gates.index(gate)
        return p["weight_gh"][k * H:(k + 1) * H] @ a

    ones = torch.ones_like(c)
    f = sigmoid(_block(z, opts, "f") + peephole("f", c) + recurrence("f")) if opts.own["f"] else ones
    if opts.coupled:
        i = 1.0 - f
    elif opts.own["i"]:
        i = sigmoid(_block(z, opts, "i") + peephole("i", c) + recurrence("i"))
    else:
        i = ones
    g = _block(z, opts, "g")
    if opts.input_activation == "tanh":
        g = torch.tanh(g)
    c_new = f * c + i * g
    if opts.layer_norm:
        c_new = layer_norm(c_new, p["ln_c_weight"], p["ln_c_bias"])
    if opts.cell_clip is not None:
        c_new = torch.clamp(c_new, -opts.cell_clip, opts.cell_clip)
    peek = c_new if opts.output_peephole == "current" else c
    o = sigmoid(_block(z, opts, "o") + peephole("o", peek) + recurrence("o")) if opts.own["o"] else ones
    h_new = o * (torch.tanh(c_new) if opts.output_activation == "tanh" else c_new)
    if opts.proj_size:
        h_new = p["weight_hr"] @ h_new
    values = {"i": i, "f": f, "o": o}
    a_new = torch.cat([values[g] for g in opts.own_gates]) if opts.gate_recurrence else a
    if opts.zoneout:
        q = opts.zoneout
        h_new = (1 - q) * h_new + q * h
        c_new = (1 - q) * c_new + q * c
    return h_new, c_new, a_new


def run_sequence(p: dict, opts: Options, xs, h, c):
    """Run one sample's sequence xs (L, in) from (h, c); returns outputs (L, out) and the final h, c."""
    a = xs.new_zeros(len(opts.own_gates) * opts.hidden if opts.gate_recurrence else 0)
    outputs = []
    for x in xs:
        h, c, a = cell_step(p, opts, x, h, c, a)
        outputs.append(h)
    out = torch.stack(outputs) if outputs else xs.new_zeros(0, h.numel())
    return out, h, c


def reference_lstm(state_dict: dict, input_size: int, hidden_size: int, x, hx=None, lengths=None, **kwargs):
    """PeepholeLSTM's forward for padded, time-major x (T, B, input_size), per sample and per step.

    `lengths` (list of ints) marks the valid steps of each sample; outputs past them are zero.
    Returns (output (T, B, D*out), (h_n (L*D, B, out), c_n (L*D, B, H))) like nn.LSTM.
    """
    opts = Options(hidden_size, **kwargs)
    T, B, _ = x.shape
    lengths = [T] * B if lengths is None else list(lengths)
    dirs = 2 if opts.bidirectional else 1
    out_size = opts.proj_size or hidden_size
    if hx is None:
        zeros_h = x.new_zeros(opts.num_layers * dirs, B, out_size)
        hx = (zeros_h, x.new_zeros(opts.num_layers * dirs, B, hidden_size))
    h0, c0 = hx
    h_n, c_n = [], []
    layer_input = x
    for layer in range(opts.num_layers):
        direction_outputs = []
        for d in range(dirs):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            p = {k[: -len(suffix)]: v for k, v in state_dict.items() if k.endswith(suffix)}
            j = layer * dirs + d
            out = x.new_zeros(T, B, out_size)
            hs, cs = [], []
            for b in range(B):
                n = lengths[b]
                xs = layer_input[:n, b]
                if d:
                    xs = xs.flip(0)
                o, hb, cb = run_sequence(p, opts, xs, h0[j, b], c0[j, b])
                if d:
                    o = o.flip(0)
                out = out.index_put((torch.arange(n), torch.full((n,), b)), o)
                hs.append(hb)
                cs.append(cb)
            direction_outputs.append(out)
            h_n.append(torch.stack(hs))
            c_n.append(torch.stack(cs))
        layer_input = torch.cat(direction_outputs, -1)
    return layer_input, (torch.stack(h_n), torch.stack(c_n))


def reference_cell(state_dict: dict, hidden_size: int, x, h, c, a=None, **kwargs):
    """PeepholeLSTMCell.step for a batch x (B, in): loops over the samples. Returns (h, c, a)."""
    opts = Options(hidden_size, **kwargs)
    if a is None:
        a = x.new_zeros(x.shape[0], len(opts.own_gates) * hidden_size if opts.gate_recurrence else 0)
    rows = [cell_step(state_dict, opts, x[b], h[b], c[b], a[b]) for b in range(x.shape[0])]
    return tuple(torch.stack(r) for r in zip(*rows))
