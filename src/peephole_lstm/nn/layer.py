"""PeepholeLSTM: a multi-layer, optionally bidirectional peephole LSTM with torch.nn.LSTM's contract."""
# (No `from __future__ import annotations`: TorchScript reads the `StepFlags` class annotations as objects.)

import dataclasses
import functools
import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from peephole_lstm.nn.cell import (
    INPUT_WEIGHTS, PARAMETER_NAMES, STEP_WEIGHTS, _check_dtype, make_parameters, reset_parameters, step_flags,
)
from peephole_lstm.nn.functional import StepFlags, input_projection, lstm_sequence, lstm_step, reverse_padded
from peephole_lstm.nn import fused, onnx_export, ops
from peephole_lstm.nn.errors import InputError
from peephole_lstm.nn.options import BACKENDS, CELL_OPTIONS, CellOptions, _choice, _flag, _size


@functools.cache
def _step_function(backend: str):
    """The per-step kernel of a backend. Only one step is ever scripted or compiled, so compilation cost
    does not grow with the sequence length and a new length never triggers a recompile."""
    if backend == "script":
        return torch.jit.script(lstm_step)
    if backend == "compile":
        # dynamic=True: one graph for every batch size (the step never sees the sequence length).
        return torch.compile(lstm_step, fullgraph=True, dynamic=True)
    return lstm_step


def check_layer_arguments(num_layers: int, batch_first: bool, dropout: float, bidirectional: bool,
                          backend: str) -> None:
    """The checks PeepholeLSTM makes of its arguments that are not cell options (CellOptions checks
    those), callable without building a network: the training config is validated this way."""
    _size("num_layers", num_layers, 1)
    _flag("batch_first", batch_first)
    _flag("bidirectional", bidirectional)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout={dropout!r} must be a probability in [0, 1]")
    _choice("backend", backend, BACKENDS)
    if backend == "triton" and not fused.triton_available():
        raise ImportError("PeepholeLSTM(backend='triton') needs the triton package: "
                          "pip install 'peephole-lstm[triton]'")


class PeepholeLSTM(nn.Module):
    r"""PeepholeLSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, peephole="diagonal", ..., device=None, dtype=None)

    A multi-layer, optionally bidirectional LSTM with peephole connections (Gers et al. 2002) and the LSTM
    variants of Greff et al. 2017, with :class:`torch.nn.LSTM`'s arguments, inputs, outputs and
    parameter names. With ``peephole="none"`` and the other options at their defaults it computes exactly
    what nn.LSTM computes, and loads an nn.LSTM state_dict (``strict=False``). The differences from
    nn.LSTM are listed in docs/reference.md, "Differences from nn.LSTM".

    For each element of the input sequence each layer computes (sigma: logistic sigmoid, ``*``:
    elementwise; the terms in brackets only with the option named on the right)::

        z_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh        [LN_ih(W_ih x_t) + LN_hh(W_hh h_{t-1}) + b: layer_norm]
        i_t = sigma(z_i + peep_i(c_{t-1}) [+ R_i a_{t-1}])  1 - f_t if coupled; 1 if input_gate=False
        f_t = sigma(z_f + peep_f(c_{t-1}) [+ R_f a_{t-1}])  1 if forget_gate=False
        g_t = act_in(z_g)                                   tanh, or identity (input_activation)
        c_t = f_t * c_{t-1} + i_t * g_t                     [LN_c(.): layer_norm] [clamped: cell_clip]
        o_t = sigma(z_o + peep_o(c_t) [+ R_o a_{t-1}])      c_{t-1} if output_peephole="previous"; 1 if output_gate=False
        h_t = o_t * act_out(c_t)                            [W_hr h_t: proj_size > 0]

    where z_i, z_f, z_g, z_o are the blocks of z_t in nn.LSTM's order, peep(c) = p * c for
    ``peephole="diagonal"`` (a vector p per gate), P c for ``"full"`` (a matrix P per gate) and 0 for
    ``"none"`` or a gate not in ``peephole_gates``, and a_{t-1} = [i, f, o]_{t-1} (``gate_recurrence``).
    With ``zoneout`` p, training keeps each unit of h_t and c_t at its previous value with probability p;
    eval uses the expectation. Layer l > 0 reads layer l-1's output, with dropout in training.

    Args:
        input_size: The number of expected features in the input `x`
        hidden_size: The number of features in the cell state `c` (and in `h` without ``proj_size``)
        num_layers: Number of recurrent layers. Default: 1
        bias: If ``False``, the layer has no ``bias_ih`` / ``bias_hh``. Default: ``True``
        batch_first: If ``True``, input and output are `(batch, seq, feature)` instead of
            `(seq, batch, feature)`; not the states. Default: ``False``
        dropout: Dropout probability on the outputs of each layer except the last, in training.
            Default: 0
        bidirectional: If ``True``, becomes a bidirectional LSTM. Default: ``False``
        proj_size: If ``> 0``, an LSTM with projections of that size (h_t = W_hr h_t). Default: 0
        peephole: ``"none"``, ``"diagonal"`` or ``"full"``. Default: ``"diagonal"``
        peephole_gates: The gates that have a peephole, a non-empty subset of ``"ifo"``. Default: ``"ifo"``
        output_peephole: The output gate peeks at c_t (``"current"``) or c_{t-1} (``"previous"``).
            Default: ``"current"``
        coupled: CIFG, i_t = 1 - f_t (the input gate has no weights). Default: ``False``
        input_gate, forget_gate, output_gate: ``False`` fixes that gate to 1 and drops its weight block
            (Greff et al.'s NIG, NFG, NOG). Default: ``True``
        input_activation, output_activation: ``"tanh"`` or ``"identity"`` (NIAF, NOAF). Default: ``"tanh"``
        gate_recurrence: FGR, every gate also sees the previous step's gate activations. Default: ``False``
        forget_bias: Added to the forget block of ``bias_ih`` at initialisation. Default: 1.0
            (nn.LSTM: 0; pass ``forget_bias=0`` for nn.LSTM's initial weights)
        cell_clip: Clamp c_t to [-cell_clip, cell_clip], or ``None``. Default: ``None``
        layer_norm: Layer normalisation of the two projections and of c_t. Default: ``False``
        zoneout: Zoneout probability for h and c, in [0, 1). Default: 0
        backend: ``"auto"`` (the fused whole-sequence kernel where it supports the options, else the
            per-step loop), ``"fused"``, ``"eager"``, ``"script"`` or ``"compile"``; the same numbers.
            Default: ``"auto"``
        device, dtype: Where and of what dtype the parameters are created (``device="meta"`` included),
            as nn.LSTM's factory kwargs. Default: torch's defaults

    Inputs: input, (h_0, c_0)
        * **input**: tensor of shape `(L, H_in)` for unbatched input, `(L, N, H_in)` when
          ``batch_first=False`` or `(N, L, H_in)` when ``batch_first=True``, or a
          :class:`~torch.nn.utils.rnn.PackedSequence`. L must be > 0; its dtype must be the weights'.
        * **h_0**: tensor of shape `(D * num_layers, H_out)` for unbatched input or
          `(D * num_layers, N, H_out)`: the initial hidden state. Zeros if (h_0, c_0) is not given.
        * **c_0**: tensor of shape `(D * num_layers, H_cell)` for unbatched input or
          `(D * num_layers, N, H_cell)`: the initial cell state. Zeros if not given.

        where N is the batch size, L the sequence length, D = 2 if bidirectional else 1,
        H_in = input_size, H_cell = hidden_size and H_out = proj_size if proj_size > 0 else hidden_size.

    Outputs: output, (h_n, c_n)
        * **output**: tensor of shape `(L, D * H_out)` for unbatched input, `(L, N, D * H_out)` when
          ``batch_first=False`` or `(N, L, D * H_out)` when ``batch_first=True``: h_t of the last layer
          for each t (forward and reverse concatenated), a PackedSequence if the input was one.
        * **h_n**: tensor of shape `(D * num_layers, H_out)` for unbatched input or
          `(D * num_layers, N, H_out)`: the final hidden state of each layer and direction.
        * **c_n**: tensor of shape `(D * num_layers, H_cell)` for unbatched input or
          `(D * num_layers, N, H_cell)`: the final cell state of each layer and direction.

    Attributes:
        weight_ih_l[k]: input-hidden weights of layer k, the gate blocks stacked in nn.LSTM's order
            (i|f|g|o, without the blocks of absent gates): `(G*hidden_size, input_size)` for k = 0,
            `(G*hidden_size, D * H_out)` otherwise. G = 4 with all gates.
        weight_hh_l[k]: hidden-hidden weights, `(G*hidden_size, H_out)`
        bias_ih_l[k], bias_hh_l[k]: the biases, `(G*hidden_size)`; only with ``bias=True``
        weight_hr_l[k]: projection weights, `(proj_size, hidden_size)`; only with ``proj_size > 0``
        weight_ch_l[k]: peephole weights, one row per peeping gate in the order i, f, o:
            `(P, hidden_size)` diagonal, `(P, hidden_size, hidden_size)` full; absent for ``"none"``
        weight_gh_l[k]: gate recurrence, `(n_gates*hidden_size, n_gates*hidden_size)`; FGR only
        ln_ih_weight_l[k], ln_ih_bias_l[k], ln_hh_*_l[k] `(G*hidden_size)`, ln_c_*_l[k] `(hidden_size)`:
            layer-norm gains and shifts; only with ``layer_norm=True``
        *_reverse: the same for the reverse direction; only with ``bidirectional=True``
        all_weights: the weights per layer and direction, as nn.LSTM's
        last_path: which implementation the last forward ran (``"fused-cpp"``, ``"fused-torch"``,
            ``"eager (reason)"``, ...)

    .. note::
        Weights and biases are drawn from U(-sqrt(k), sqrt(k)), k = 1 / hidden_size, in nn.LSTM's order
        (so with the same seed, ``peephole="none", forget_bias=0`` gives nn.LSTM's initial weights);
        then ``forget_bias`` is added to the forget block of ``bias_ih``. Layer-norm gains start at 1,
        shifts at 0.

    .. note::
        ``torch.jit.script(lstm)`` compiles a per-step loop (the ``"eager"`` backend's numbers) that
        takes Tensor input, not a PackedSequence; ``torch.compile`` and ``torch.export`` trace the
        plain ops. Errors: a wrong input or state raises :class:`~peephole_lstm.nn.InputError`, both
        a RuntimeError (as nn.LSTM) and a ValueError.

    Examples::

        >>> rnn = PeepholeLSTM(10, 20, 2)
        >>> input = torch.randn(5, 3, 10)
        >>> h0, c0 = torch.randn(2, 3, 20), torch.randn(2, 3, 20)
        >>> output, (hn, cn) = rnn(input, (h0, c0))
        >>> output.shape, hn.shape
        (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]))
        >>> lstm = PeepholeLSTM(10, 20, peephole="none", forget_bias=0.0)  # nn.LSTM's numbers and init
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        peephole: str = "diagonal",
        peephole_gates: str = "ifo",
        output_peephole: str = "current",
        coupled: bool = False,
        input_gate: bool = True,
        forget_gate: bool = True,
        output_gate: bool = True,
        input_activation: str = "tanh",
        output_activation: str = "tanh",
        gate_recurrence: bool = False,
        forget_bias: float = 1.0,
        cell_clip: Optional[float] = None,
        layer_norm: bool = False,
        zoneout: float = 0.0,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        # The cell options by CellOptions' field names, so that their list is not written out a second time
        # (tests/training/test_single_source.py holds this signature to CellOptions' fields and defaults).
        arguments = locals()
        cell_options = {name: arguments[name] for name in CELL_OPTIONS}
        super().__init__()
        check_layer_arguments(num_layers, batch_first, dropout, bidirectional, backend)
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                f"dropout={dropout} has no effect with num_layers=1: dropout is applied between layers, "
                "as in nn.LSTM"
            )
        self.backend = backend
        self.last_path = None  # Optional[str]: the implementation the last forward ran (see _path)
        self._warned = set()  # reasons already warned about (backend="fused" or "triton")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        self.num_directions = 2 if bidirectional else 1
        first = CellOptions(input_size, hidden_size, bias, **cell_options)
        # Layers > 0 read the previous layer's output (both directions side by side).
        self.options = [first] + [
            dataclasses.replace(first, input_size=first.output_size * self.num_directions)
            for _ in range(num_layers - 1)
        ]
        # Each (layer, direction)'s attribute name of every parameter name, at index layer * directions +
        # direction: formatted once (formatting the 13 names on every call took ~8 us, a tenth of a one-step
        # streaming call).
        self._parameter_attributes = [
            {name: self._name(name, layer, direction) for name in PARAMETER_NAMES}
            for layer in range(num_layers) for direction in range(self.num_directions)
        ]
        # Registered in nn.LSTM's order (layer, direction, then ih, hh, biases, hr) so state_dicts line up.
        # nn.LSTM's _all_weights / _flat_weights_names list them by name, per (layer, direction) and flat.
        self._all_weights = []  # List[List[str]] (no annotation: TorchScript warns on annotated empty lists)
        for layer, opts in enumerate(self.options):
            for direction in range(self.num_directions):
                attributes = self._parameter_attributes[layer * self.num_directions + direction]
                names = []
                for name, p in make_parameters(opts, device, dtype).items():
                    self.register_parameter(attributes[name], p)
                    if p is not None:
                        names.append(attributes[name])
                self._all_weights.append(names)
        self._flat_weights_names = [n for names in self._all_weights for n in names]
        self.reset_parameters()

    @staticmethod
    def _name(name: str, layer: int, direction: int) -> str:
        return f"{name}_l{layer}{'_reverse' if direction else ''}"

    def _weights(self, names, layer: int, direction: int):
        attributes = self._parameter_attributes[layer * self.num_directions + direction]
        return tuple(getattr(self, attributes[n]) for n in names)

    def reset_parameters(self) -> None:
        # Layer by layer and direction by direction, each in registration order: nn.LSTM's draw order.
        for layer, opts in enumerate(self.options):
            for direction in range(self.num_directions):
                attributes = self._parameter_attributes[layer * self.num_directions + direction]
                params = {n: self._parameters.get(attributes[n]) for n in PARAMETER_NAMES}
                reset_parameters(params, opts)

    @property
    def _flat_weights(self) -> List[Optional[Tensor]]:
        """nn.LSTM's flat list of the weights, by `_flat_weights_names`. Read on every access, so it follows
        what replaces a Parameter by a computed tensor (torch.nn.utils.weight_norm, parametrizations) or
        moves it (.to()), which nn.LSTM has to track by hand."""
        return [getattr(self, n) if hasattr(self, n) else None for n in self._flat_weights_names]

    @property
    def all_weights(self) -> List[List[Tensor]]:
        """The weights per layer and direction (layer 0, layer 0 reverse, layer 1, ...), each list in the
        order of the parameters: nn.LSTM's ``all_weights``, plus ``weight_ch``/``weight_gh``/``ln_*`` where
        the options create them."""
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """No-op kept for nn.LSTM compatibility (cuDNN's weight flattening does not apply here)."""

    def extra_repr(self) -> str:
        o = self.options[0]
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, peephole={o.peephole!r}"
        s += f", blocks={o.blocks!r}, backend={self.backend!r}"
        if self.last_path is not None:
            s += f", last_path={self.last_path!r}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.batch_first:
            s += ", batch_first=True"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        return s

    def _check_input(self, x: Tensor) -> None:
        if x.dim() not in (2, 3) or x.shape[-1] != self.input_size:
            layout = "(batch, seq_len, {0})" if self.batch_first else "(seq_len, batch, {0})"
            raise InputError(
                f"PeepholeLSTM: expected input of shape {layout.format(self.input_size)} or unbatched "
                f"(seq_len, {self.input_size}), got {list(x.shape)}"
            )
        _check_dtype("PeepholeLSTM", x, self.weight_ih_l0)
        if x.shape[1 if x.dim() == 3 and self.batch_first else 0] == 0:
            # nn.LSTM's message, so code that matches it keeps working; an empty sequence has no h_n.
            raise InputError(
                f"PeepholeLSTM: Expected sequence length to be larger than 0 in RNN, got an input of shape "
                f"{list(x.shape)} ({'batch, seq_len' if x.dim() == 3 and self.batch_first else 'seq_len'} first)"
            )

    def _initial_state(self, x: Tensor, hx, batched: bool) -> Tuple[Tensor, Tensor]:
        n, batch = self.num_layers * self.num_directions, x.shape[1]
        out_size = self.options[0].output_size
        if hx is None:
            zeros = functools.partial(torch.zeros, dtype=x.dtype, device=x.device)
            return zeros(n, batch, out_size), zeros(n, batch, self.hidden_size)
        h0, c0 = hx
        if not batched:
            # Checked before adding the batch axis, so the message shows the 2-D shapes the caller passes.
            if tuple(h0.shape) != (n, out_size) or tuple(c0.shape) != (n, self.hidden_size):
                raise InputError(
                    f"PeepholeLSTM: unbatched input expects hx = (h_0 of shape ({n}, {out_size}), c_0 of shape "
                    f"({n}, {self.hidden_size})), got {list(h0.shape)} and {list(c0.shape)}"
                )
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        if tuple(h0.shape) != (n, batch, out_size) or tuple(c0.shape) != (n, batch, self.hidden_size):
            raise InputError(
                f"PeepholeLSTM: expected hx = (h_0 of shape ({n}, {batch}, {out_size}), c_0 of shape "
                f"({n}, {batch}, {self.hidden_size})), got {list(h0.shape)} and {list(c0.shape)}"
            )
        return h0, c0

    def _path(self, opts: CellOptions, device: torch.device, dtype: Optional[torch.dtype] = None) -> str:
        """Which implementation runs a layer: "fused-cpp" / "fused-torch" (see nn/fused.py), "eager",
        "script" or "compile", with the reason in parentheses when the fused path was not taken; under
        torch.onnx.export "onnx-lstm" or "onnx-scan (reason)" (see nn/onnx_export.py)."""
        if torch.onnx.is_in_onnx_export():
            reason = onnx_export.unsupported(opts)
            return "onnx-lstm" if reason is None else f"onnx-scan ({reason})"
        if self.backend not in ("auto", "fused", "triton"):
            return self.backend
        if not torch.compiler.is_compiling() and fused.under_functorch():
            # (Tracers see the operator, whatever dynamo's view of the functorch stack.)
            return "eager (torch.func transform)"
        reason = fused.unsupported(opts, self.training)
        if reason is None:
            # Also under torch.compile / torch.export: the kernels are operators (nn/ops.py) they keep
            # as one node per layer and direction.
            return fused.kernel_name(device, dtype, self.backend)
        if self.backend != "auto" and reason not in self._warned and not torch.compiler.is_compiling():
            self._warned.add(reason)
            warnings.warn(f"PeepholeLSTM(backend={self.backend!r}): {reason} is not supported by the fused kernel; "
                          "running the eager per-step loop for it")
        return f"eager ({reason})"

    @torch.jit.unused  # TorchScript compiles _scripted_forward instead (see forward)
    def _forward(self, input, hx: Optional[Tuple[Tensor, Tensor]] = None, lengths: Optional[Tensor] = None):
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise InputError("PeepholeLSTM: a PackedSequence carries its own lengths; do not also pass lengths=")
            packed = input
            if packed.data.shape[-1] != self.input_size:
                raise InputError(
                    f"PeepholeLSTM: expected a PackedSequence of {self.input_size} features per step "
                    f"(data of shape (total_steps, {self.input_size})), got {packed.data.shape[-1]}"
                )
            _check_dtype("PeepholeLSTM", packed.data, self.weight_ih_l0)
            x, lengths = pad_packed_sequence(packed)  # original batch order, as hx is given
            batched = True
        else:
            packed = None
            self._check_input(input)
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            if lengths is not None:
                self._check_lengths(lengths, x, batched)
        h0, c0 = self._initial_state(x, hx, batched)
        if lengths is not None:
            lengths = lengths.to(x.device)

        h_n, c_n, paths = [], [], []
        for layer, opts in enumerate(self.options):
            path = self._path(opts, x.device, x.dtype)
            paths.append(path)
            if path == "onnx-lstm":  # both directions in one node of ONNX's own LSTM operator
                x = self._onnx_layer(layer, opts, x, h0, c0, lengths, h_n, c_n)
            else:
                x = self._layer(layer, opts, path, x, h0, c0, lengths, h_n, c_n)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)

        last_path = paths[0] if len(set(paths)) == 1 else ", ".join(paths)
        if not torch.compiler.is_compiling() and last_path != self.last_path:  # (nn.Module's setattr: ~2 us)
            self.last_path = last_path
        h_n, c_n = torch.stack(h_n), torch.stack(c_n)
        if packed is not None:
            return _repack(x, packed), (h_n, c_n)
        if not batched:
            return x.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            x = x.transpose(0, 1)
        return x, (h_n, c_n)

    def _check_lengths(self, lengths: Tensor, x: Tensor, batched: bool) -> None:
        if not batched:
            raise InputError("PeepholeLSTM: lengths= needs a batched input (one length per sequence)")
        if not isinstance(lengths, Tensor) or lengths.dim() != 1 or lengths.shape[0] != x.shape[1] \
                or lengths.is_floating_point() or lengths.is_complex():
            raise InputError(
                f"PeepholeLSTM: lengths= must be an integer tensor of shape ({x.shape[1]},), one length per "
                f"sequence, got {lengths.dtype if isinstance(lengths, Tensor) else type(lengths).__name__} "
                f"of shape {list(lengths.shape) if isinstance(lengths, Tensor) else '-'}"
            )
        # Checking the values reads them: not while tracing, where they are unknown.
        if not torch.compiler.is_compiling() and bool(((lengths < 0) | (lengths > x.shape[0])).any()):
            raise InputError(
                f"PeepholeLSTM: lengths= must lie in [0, {x.shape[0]}] (the padded length), got {lengths.tolist()}"
            )

    def _layer(self, layer: int, opts: CellOptions, path: str, x: Tensor, h0: Tensor, c0: Tensor,
               lengths: Optional[Tensor], h_n: list, c_n: list) -> Tensor:
        """One layer, both directions, on `path`; appends the final states to h_n and c_n."""
        is_fused = path.startswith("fused")
        if not is_fused:
            if path.startswith("onnx-scan"):
                sequence = onnx_export.scan_sequence
            else:
                # (Only here: under torch.compile, asking the cache for a step function on the fused
                # path would only make dynamo warn about tracing through functools.cache.)
                sequence = functools.partial(lstm_sequence, _step_function(path.split(" ")[0]))
            flags = step_flags(opts)
            gates0 = x.new_zeros(x.shape[1], len(opts.gate_names) * opts.hidden_size if opts.gate_recurrence else 0)
        outputs = []
        for direction in range(self.num_directions):
            j = layer * self.num_directions + direction
            input_weights = self._weights(INPUT_WEIGHTS, layer, direction)
            weights = self._weights(STEP_WEIGHTS, layer, direction)
            if is_fused:  # projects x itself (inside the steps when it can)
                xd = reverse_padded(x, lengths) if direction else x
                out, h, c = ops.fused_layer(xd, input_weights, h0[j], c0[j], lengths, weights, opts, kernel=path)
            else:
                xz = input_projection(x, *input_weights)
                if direction:
                    xz = reverse_padded(xz, lengths)
                out, h, c, _ = sequence(xz, h0[j], c0[j], gates0, lengths, weights, flags, self.training)
            outputs.append(reverse_padded(out, lengths) if direction else out)
            h_n.append(h)
            c_n.append(c)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, -1)

    def _onnx_layer(self, layer: int, opts: CellOptions, x: Tensor, h0: Tensor, c0: Tensor,
                    lengths: Optional[Tensor], h_n: list, c_n: list) -> Tensor:
        """One layer as one node of ONNX's LSTM operator, under torch.onnx.export (nn/onnx_export.py)."""
        names = INPUT_WEIGHTS + STEP_WEIGHTS
        weights = [dict(zip(names, self._weights(names, layer, d))) for d in range(self.num_directions)]
        states = slice(layer * self.num_directions, (layer + 1) * self.num_directions)
        x, h, c = onnx_export.lstm_layer(x, h0[states], c0[states], lengths, weights, opts)
        h_n.extend(h.unbind(0))
        c_n.extend(c.unbind(0))
        return x

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None,
                lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        """nn.LSTM's forward. `input` may also be a PackedSequence (then so is the output). `lengths` (B,)
        is the other way to give sequences of different lengths: a padded batched `input` plus each
        sequence's length gives the padded output (zeros after each length) and the final states at each
        length, as packing would; unlike a PackedSequence it also traces (torch.export, and ONNX's
        `sequence_lens`). TorchScript sees the Tensor form without `lengths` (TorchScript has no
        keyword-only arguments, so `lengths` is also the third positional one)."""
        if torch.jit.is_scripting():
            if lengths is not None:
                raise InputError("PeepholeLSTM: lengths= is not supported by the scripted module")
            return self._scripted_forward(input, hx)
        return self._forward(input, hx, lengths)

    # --- TorchScript ---------------------------------------------------------------------------------
    # torch.jit.script(lstm) compiles `forward`, which then runs _scripted_forward: the per-step loop of
    # lstm_step (the "eager" backend's numbers) over the weights as a list, as nn.LSTM's scripted forward
    # reads its _flat_weights. The fused path is an autograd.Function, which TorchScript cannot call.
    __jit_unused_properties__ = ["_flat_weights", "all_weights"]
    # Declared so that TorchScript types them as NamedTuples (from the values it would infer plain tuples).
    _script_flags: List[StepFlags]

    def __prepare_scriptable__(self) -> "PeepholeLSTM":
        """Called by torch.jit.script before compiling: snapshot the weights into a list TorchScript can
        index (the same tensors, so training the scripted module trains this one), and the per-layer
        options as plain lists."""
        flat: List[Tensor] = []
        index: List[List[int]] = []
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                attributes = self._parameter_attributes[layer * self.num_directions + direction]
                row = []
                for name in PARAMETER_NAMES:
                    w = getattr(self, attributes[name], None)
                    row.append(len(flat) if w is not None else -1)
                    if w is not None:
                        flat.append(w)
                index.append(row)
        self._script_weights, self._script_index = flat, index
        self._script_flags = [step_flags(o) for o in self.options]
        self._script_gate_width = [len(o.gate_names) * o.hidden_size if o.gate_recurrence else 0 for o in self.options]
        return self

    def _scripted_forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        if input.dim() not in (2, 3) or input.shape[-1] != self.input_size:
            raise InputError(f"PeepholeLSTM: expected input of {self.input_size} features, 3-D (batched) or "
                             f"2-D (unbatched), got {input.shape}")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        if x.shape[0] == 0:
            raise InputError("PeepholeLSTM: Expected sequence length to be larger than 0 in RNN")
        n, batch = self.num_layers * self.num_directions, x.shape[1]
        out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        if hx is None:
            h0 = torch.zeros(n, batch, out_size, dtype=x.dtype, device=x.device)
            c0 = torch.zeros(n, batch, self.hidden_size, dtype=x.dtype, device=x.device)
        else:
            h0, c0 = hx
            if not batched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
            if h0.shape != (n, batch, out_size) or c0.shape != (n, batch, self.hidden_size):
                raise InputError(f"PeepholeLSTM: expected hx = (h_0 of shape ({n}, {batch}, {out_size}), c_0 of "
                                 f"shape ({n}, {batch}, {self.hidden_size})), got {h0.shape} and {c0.shape}")
        w = self._script_weights
        h_n: List[Tensor] = []
        c_n: List[Tensor] = []
        for layer in range(self.num_layers):
            f = self._script_flags[layer]
            outputs: List[Tensor] = []
            for direction in range(self.num_directions):
                j = layer * self.num_directions + direction
                k = self._script_index[j]  # positions in w of PARAMETER_NAMES' weights, -1 if absent
                xz = input_projection(x, w[k[0]], _pick(w, k[2]), _pick(w, k[3]), _pick(w, k[7]), _pick(w, k[8]))
                if direction == 1:
                    xz = xz.flip(0)
                h, c = h0[j], c0[j]
                a = x.new_zeros(batch, self._script_gate_width[layer])
                steps: List[Tensor] = []
                for xz_t in xz.unbind(0):
                    h, c, a = lstm_step(
                        xz_t, h, c, a, w[k[1]], _pick(w, k[5]), _pick(w, k[6]), _pick(w, k[4]),
                        _pick(w, k[9]), _pick(w, k[10]), _pick(w, k[11]), _pick(w, k[12]),
                        f.idx, f.peep_full, f.peep_current, f.coupled, f.act_in_tanh, f.act_out_tanh, f.cell_clip,
                        f.zoneout, self.training,
                    )
                    steps.append(h)
                out = torch.stack(steps)
                outputs.append(out.flip(0) if direction == 1 else out)
                h_n.append(h)
                c_n.append(c)
            x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, -1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        hn, cn = torch.stack(h_n), torch.stack(c_n)
        if not batched:
            return x.squeeze(1), (hn.squeeze(1), cn.squeeze(1))
        if self.batch_first:
            x = x.transpose(0, 1)
        return x, (hn, cn)


def _pick(weights: List[Tensor], i: int) -> Optional[Tensor]:
    """weights[i], or None for an absent parameter (i = -1): TorchScript's lists hold no None."""
    if i < 0:
        return None
    return weights[i]


def _repack(padded: Tensor, like: PackedSequence) -> PackedSequence:
    """Pack a padded (T, B, ...) output exactly as `like` was packed (same batch_sizes and order)."""
    lengths = (like.batch_sizes.unsqueeze(1) > torch.arange(padded.shape[1])).sum(0)  # in sorted order
    if like.sorted_indices is not None:
        padded = padded.index_select(1, like.sorted_indices.to(padded.device))
    data = pack_padded_sequence(padded, lengths, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)
