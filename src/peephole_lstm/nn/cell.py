"""PeepholeLSTMCell: one step of a peephole LSTM, the counterpart of torch.nn.LSTMCell."""
# (No `from __future__ import annotations`: TorchScript reads the `StepFlags` class annotations as objects.)

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from peephole_lstm.nn.errors import InputError
from peephole_lstm.nn.functional import StepFlags, input_projection, layout, lstm_step
from peephole_lstm.nn.options import CellOptions

# Order in which the step function takes the recurrent weights (after input_projection's ones).
STEP_WEIGHTS = ("weight_hh", "weight_ch", "weight_gh", "weight_hr", "ln_hh_weight", "ln_hh_bias", "ln_c_weight", "ln_c_bias")
INPUT_WEIGHTS = ("weight_ih", "bias_ih", "bias_hh", "ln_ih_weight", "ln_ih_bias")
# Registration order (make_parameters'): nn.LSTM's names first, in nn.LSTM's order, then this library's.
PARAMETER_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_ch", "weight_gh",
                   "ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias", "ln_c_weight", "ln_c_bias")


def make_parameters(opts: CellOptions, device=None, dtype=None) -> Dict[str, Optional[nn.Parameter]]:
    """Uninitialised parameters of one cell, named and shaped like nn.LSTM's (None where absent), on
    `device` and of `dtype` (nn.LSTM's factory kwargs; None: torch's defaults)."""
    hidden, gh = opts.hidden_size, len(opts.blocks) * opts.hidden_size
    n_gates, n_peep = len(opts.gate_names), len(opts.peephole_rows)

    def new(*shape):
        return nn.Parameter(torch.empty(*shape, device=device, dtype=dtype))

    full = opts.peephole == "full"
    return {
        "weight_ih": new(gh, opts.input_size),
        "weight_hh": new(gh, opts.output_size),
        "bias_ih": new(gh) if opts.bias else None,
        "bias_hh": new(gh) if opts.bias else None,
        "weight_hr": new(opts.proj_size, hidden) if opts.proj_size else None,
        "weight_ch": (new(n_peep, hidden, hidden) if full else new(n_peep, hidden)) if n_peep else None,
        "weight_gh": new(n_gates * hidden, n_gates * hidden) if opts.gate_recurrence else None,
        "ln_ih_weight": new(gh) if opts.layer_norm else None,
        "ln_ih_bias": new(gh) if opts.layer_norm else None,
        "ln_hh_weight": new(gh) if opts.layer_norm else None,
        "ln_hh_bias": new(gh) if opts.layer_norm else None,
        "ln_c_weight": new(hidden) if opts.layer_norm else None,
        "ln_c_bias": new(hidden) if opts.layer_norm else None,
    }


@torch.no_grad()
def reset_parameters(params: Dict[str, Optional[Tensor]], opts: CellOptions) -> None:
    """nn.LSTM's init, U(-1/sqrt(H), 1/sqrt(H)), for every weight, drawn in the order of `params`; layer-norm
    gains 1 and shifts 0 (no draw); then `forget_bias` added to the forget block of bias_ih (TF's and
    Jozefowicz et al.'s advice). Callers pass the parameters in registration order, which for the names
    nn.LSTM has is nn.LSTM's order: with the same seed, peephole="none" and forget_bias=0 give exactly
    nn.LSTM's (nn.LSTMCell's) initial weights."""
    bound = 1.0 / math.sqrt(opts.hidden_size)
    for name, p in params.items():
        if p is None:
            continue
        if name.startswith("ln_"):
            p.fill_(1.0 if name.endswith("weight") else 0.0)
        else:
            p.uniform_(-bound, bound)
    f = opts.blocks.find("f")
    if params["bias_ih"] is not None and f >= 0 and opts.forget_bias:
        h = opts.hidden_size
        params["bias_ih"][f * h:(f + 1) * h] += opts.forget_bias


def _check_dtype(module: str, x: Tensor, weight: Tensor) -> None:
    """nn.LSTM's dtype check (skipped under autocast, which casts per op): without it a float64 input
    to float32 weights fails deep inside a matmul with a message that names neither."""
    if not x.is_floating_point():
        raise InputError(f"{module}: expected a floating-point input of dtype {weight.dtype} (the weights' dtype), "
                         f"got {x.dtype}; convert it: input.to({weight.dtype})")
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise InputError(f"{module}: input dtype ({x.dtype}) does not match weight dtype ({weight.dtype}). "
                         f"Convert input: input.to({weight.dtype}), or convert model: model.to({x.dtype})")


def step_flags(opts: CellOptions) -> StepFlags:
    """The static arguments of lstm_step that follow the weights (all but `training`)."""
    return StepFlags(
        idx=layout(opts.blocks, opts.peephole_rows),
        peep_full=opts.peephole == "full",
        peep_current=opts.output_peephole == "current",
        coupled=opts.coupled,
        act_in_tanh=opts.input_activation == "tanh",
        act_out_tanh=opts.output_activation == "tanh",
        cell_clip=float(opts.cell_clip or 0.0),
        zoneout=float(opts.zoneout),
    )


class PeepholeLSTMCell(nn.Module):
    r"""PeepholeLSTMCell(input_size, hidden_size, bias=True, device=None, dtype=None, **options)

    One step of a peephole LSTM, with :class:`torch.nn.LSTMCell`'s contract: ``forward(input, hx=None)
    -> (h_1, c_1)``. Takes every option of :class:`~peephole_lstm.PeepholeLSTM` that concerns one cell
    (``proj_size``, ``peephole``, ``peephole_gates``, ``output_peephole``, ``coupled``, ``input_gate``,
    ``forget_gate``, ``output_gate``, ``input_activation``, ``output_activation``, ``gate_recurrence``,
    ``forget_bias``, ``cell_clip``, ``layer_norm``, ``zoneout``) and computes its equations (see
    ``help(PeepholeLSTM)``). With ``peephole="none"`` and the defaults it is exactly nn.LSTMCell and
    loads its state_dict.

    Args:
        input_size: The number of expected features in the input `x`
        hidden_size: The number of features in the cell state `c`
        bias: If ``False``, the cell has no ``bias_ih`` / ``bias_hh``. Default: ``True``
        device, dtype: Where and of what dtype the parameters are created (``"meta"`` included), as
            nn.LSTMCell's factory kwargs
        **options: the cell options of PeepholeLSTM; ``peephole`` defaults to ``"diagonal"`` and
            ``forget_bias`` to 1.0 (``forget_bias=0`` for nn.LSTMCell's initial weights)

    Inputs: input, (h_0, c_0)
        * **input**: tensor of shape `(batch, input_size)` or `(input_size)`
        * **h_0**: tensor of shape `(batch, H_out)` or `(H_out)`, H_out = proj_size or hidden_size
        * **c_0**: tensor of shape `(batch, hidden_size)` or `(hidden_size)`

        If `(h_0, c_0)` is not given, both default to zero.

    Outputs: (h_1, c_1)
        * **h_1**: tensor of shape `(batch, H_out)` or `(H_out)`: the next hidden state
        * **c_1**: tensor of shape `(batch, hidden_size)` or `(hidden_size)`: the next cell state

    Attributes:
        weight_ih: `(G*hidden_size, input_size)`, the gate blocks in nn.LSTMCell's order i|f|g|o
            (without those of absent gates; G = 4 with all gates)
        weight_hh: `(G*hidden_size, H_out)`
        bias_ih, bias_hh: `(G*hidden_size)`; only with ``bias=True``
        weight_hr: `(proj_size, hidden_size)`; only with ``proj_size > 0``
        weight_ch: peepholes, one row per peeping gate (i, f, o): `(P, hidden_size)` diagonal or
            `(P, hidden_size, hidden_size)` full
        weight_gh: `(n_gates*hidden_size, n_gates*hidden_size)`; only with ``gate_recurrence=True``
        ln_*: layer-norm gains and shifts; only with ``layer_norm=True``

    .. note::
        With ``gate_recurrence=True`` the state also holds the previous gate activations: step such a
        cell with :meth:`step`, ``cell.step(x, h, c, gates) -> (h, c, gates)`` (batched input;
        ``gates`` of shape `(batch, n_gates*hidden_size)`, zeros at the start).

    .. note::
        Weights are drawn from U(-sqrt(k), sqrt(k)), k = 1 / hidden_size, in nn.LSTMCell's order; then
        ``forget_bias`` is added to the forget block of ``bias_ih``. The cell is scriptable
        (``torch.jit.script``). A wrong input or state raises :class:`~peephole_lstm.nn.InputError`,
        a RuntimeError (as nn.LSTMCell) and a ValueError.

    Examples::

        >>> cell = PeepholeLSTMCell(10, 20, peephole="full")
        >>> input = torch.randn(2, 3, 10)  # (time_steps, batch, input_size)
        >>> hx, cx = torch.zeros(3, 20), torch.zeros(3, 20)
        >>> output = []
        >>> for i in range(input.size()[0]):
        ...     hx, cx = cell(input[i], (hx, cx))
        ...     output.append(hx)
        >>> torch.stack(output, dim=0).shape
        torch.Size([2, 3, 20])
    """

    # Declared so that TorchScript types it as the NamedTuple (from the value it would infer a plain tuple).
    _flags: StepFlags

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, **options):
        super().__init__()
        self.options = CellOptions(input_size, hidden_size, bias, **options)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.gate_recurrence = self.options.gate_recurrence
        for name, p in make_parameters(self.options, device, dtype).items():
            self.register_parameter(name, p)
        self._flags = step_flags(self.options)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_parameters(dict(self.named_parameters(recurse=False)) | self._absent(), self.options)

    def _absent(self) -> Dict[str, Optional[Tensor]]:
        return {k: None for k, v in self._parameters.items() if v is None}

    def extra_repr(self) -> str:
        o = self.options
        return (f"{o.input_size}, {o.hidden_size}, peephole={o.peephole!r}, blocks={o.blocks!r}"
                + (f", proj_size={o.proj_size}" if o.proj_size else ""))

    @torch.jit.unused
    def _check_dtype(self, input: Tensor) -> None:
        _check_dtype("PeepholeLSTMCell", input, self.weight_ih)

    @torch.jit.export
    def step(self, input: Tensor, h: Tensor, c: Tensor, gates: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """One step on batched input (B, input_size) carrying the full state: returns (h, c, gates),
        where `gates` are this step's gate activations for full gate recurrence ((B, 0) otherwise)."""
        xz = input_projection(input, self.weight_ih, self.bias_ih, self.bias_hh, self.ln_ih_weight, self.ln_ih_bias)
        f = self._flags
        return lstm_step(
            xz, h, c, gates,
            self.weight_hh, self.weight_ch, self.weight_gh, self.weight_hr,
            self.ln_hh_weight, self.ln_hh_bias, self.ln_c_weight, self.ln_c_bias,
            f.idx, f.peep_full, f.peep_current, f.coupled, f.act_in_tanh, f.act_out_tanh, f.cell_clip, f.zoneout,
            self.training,
        )

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        if self.gate_recurrence:
            raise RuntimeError(
                "PeepholeLSTMCell(gate_recurrence=True) needs the previous gate activations as state: "
                "use cell.step(input, h, c, gates) or PeepholeLSTM"
            )
        if input.dim() not in (1, 2) or input.shape[-1] != self.input_size:
            raise InputError(
                f"PeepholeLSTMCell: expected input of shape (batch, {self.input_size}) or ({self.input_size},), "
                f"got {list(input.shape)}"
            )
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        hidden = self.weight_hh.shape[1]
        if hx is None:
            h = torch.zeros(x.shape[0], hidden, dtype=x.dtype, device=x.device)
            c = torch.zeros(x.shape[0], self.hidden_size, dtype=x.dtype, device=x.device)
        else:
            h, c = hx
            if not batched:
                # Checked before adding the batch axis, so the message shows the 1-D shapes the caller passes.
                if h.shape != (hidden,) or c.shape != (self.hidden_size,):
                    raise InputError(
                        f"PeepholeLSTMCell: unbatched input expects hx of shapes ({hidden},) and "
                        f"({self.hidden_size},), got {list(h.shape)} and {list(c.shape)}"
                    )
                h, c = h.unsqueeze(0), c.unsqueeze(0)
            if h.shape != (x.shape[0], hidden) or c.shape != (x.shape[0], self.hidden_size):
                raise InputError(
                    f"PeepholeLSTMCell: expected hx of shapes ({x.shape[0]}, {hidden}) and "
                    f"({x.shape[0]}, {self.hidden_size}), got {list(h.shape)} and {list(c.shape)}"
                )
        if not torch.jit.is_scripting():  # shapes first, as nn.LSTMCell; scripted, a wrong dtype fails in a matmul
            self._check_dtype(input)
        h, c, _ = self.step(x, h, c, x.new_zeros(x.shape[0], 0))
        if not batched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c
