"""PeepholeLSTM: a multi-layer, optionally bidirectional peephole LSTM with torch.nn.LSTM's contract."""
from __future__ import annotations

import functools
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from peephole_lstm.nn.cell import INPUT_WEIGHTS, STEP_WEIGHTS, make_parameters, reset_parameters, step_flags
from peephole_lstm.nn.functional import input_projection, lstm_sequence, lstm_step, reverse_padded
from peephole_lstm.nn import fused
from peephole_lstm.nn.options import BACKENDS, CellOptions, _choice, _flag, _size


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


class PeepholeLSTM(nn.Module):
    """Drop-in replacement for :class:`torch.nn.LSTM` with peephole connections and the LSTM variants of
    Greff et al. (2017). ``forward(input, hx=None) -> (output, (h_n, c_n))`` accepts the same inputs
    as nn.LSTM: (T, B, F), (B, T, F) with ``batch_first``, unbatched (T, F), or a PackedSequence.

    With ``peephole="none"`` and default options it computes exactly nn.LSTM, and loads its state_dict
    with ``strict=False``. See docs/reference.md for every option and the equations.
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
    ):
        super().__init__()
        _size("num_layers", num_layers, 1)
        _flag("batch_first", batch_first)
        _flag("bidirectional", bidirectional)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout={dropout!r} must be a probability in [0, 1]")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                f"dropout={dropout} has no effect with num_layers=1: dropout is applied between layers, "
                "as in nn.LSTM"
            )
        self.backend = _choice("backend", backend, BACKENDS)
        if backend == "triton" and not fused.triton_available():
            raise ImportError("PeepholeLSTM(backend='triton') needs the triton package: "
                              "pip install 'peephole-lstm[triton]'")
        self.last_path: Optional[str] = None  # the implementation the last forward ran (see _path)
        self._warned: set = set()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        self.num_directions = 2 if bidirectional else 1
        cell_options = dict(
            peephole=peephole, peephole_gates=peephole_gates, output_peephole=output_peephole, coupled=coupled,
            input_gate=input_gate, forget_gate=forget_gate, output_gate=output_gate,
            input_activation=input_activation, output_activation=output_activation,
            gate_recurrence=gate_recurrence, forget_bias=forget_bias, cell_clip=cell_clip,
            layer_norm=layer_norm, zoneout=zoneout,
        )
        first = CellOptions(input_size, hidden_size, bias, proj_size, **cell_options)
        self.options = [first] + [
            CellOptions(first.output_size * self.num_directions, hidden_size, bias, proj_size, **cell_options)
            for _ in range(num_layers - 1)
        ]
        # Registered in nn.LSTM's order (layer, direction, then ih, hh, biases, hr) so state_dicts line up.
        for layer, opts in enumerate(self.options):
            for direction in range(self.num_directions):
                for name, p in make_parameters(opts).items():
                    self.register_parameter(self._name(name, layer, direction), p)
        self.reset_parameters()

    @staticmethod
    def _name(name: str, layer: int, direction: int) -> str:
        return f"{name}_l{layer}{'_reverse' if direction else ''}"

    def _weights(self, names, layer: int, direction: int):
        return tuple(getattr(self, self._name(n, layer, direction)) for n in names)

    def reset_parameters(self) -> None:
        for layer, opts in enumerate(self.options):
            for direction in range(self.num_directions):
                names = INPUT_WEIGHTS + STEP_WEIGHTS
                reset_parameters(dict(zip(names, self._weights(names, layer, direction))), opts)

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
            raise ValueError(
                f"PeepholeLSTM: expected input of shape {layout.format(self.input_size)} or unbatched "
                f"(seq_len, {self.input_size}), got {list(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"PeepholeLSTM: expected a floating-point input, got {x.dtype}")

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
                raise ValueError(
                    f"PeepholeLSTM: unbatched input expects hx = (h_0 of shape ({n}, {out_size}), c_0 of shape "
                    f"({n}, {self.hidden_size})), got {list(h0.shape)} and {list(c0.shape)}"
                )
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        if tuple(h0.shape) != (n, batch, out_size) or tuple(c0.shape) != (n, batch, self.hidden_size):
            raise ValueError(
                f"PeepholeLSTM: expected hx = (h_0 of shape ({n}, {batch}, {out_size}), c_0 of shape "
                f"({n}, {batch}, {self.hidden_size})), got {list(h0.shape)} and {list(c0.shape)}"
            )
        return h0, c0

    def _path(self, opts: CellOptions, device: torch.device) -> str:
        """Which implementation runs a layer: "fused-cpp" / "fused-torch" (see nn/fused.py), "eager",
        "script" or "compile", with the reason in parentheses when the fused path was not taken."""
        if self.backend not in ("auto", "fused", "triton"):
            return self.backend
        if torch.compiler.is_compiling():
            # torch.compile / torch.export trace the plain ops; the custom kernel is opaque to them.
            return "eager (tracing)"
        reason = fused.unsupported(opts, self.training)
        if reason is None:
            return fused.kernel_name(device, self.backend)
        if self.backend != "auto" and reason not in self._warned:
            self._warned.add(reason)
            warnings.warn(f"PeepholeLSTM(backend={self.backend!r}): {reason} is not supported by the fused kernel; "
                          "running the eager per-step loop for it")
        return f"eager ({reason})"

    def forward(self, input, hx: Optional[Tuple[Tensor, Tensor]] = None):
        lengths = None
        if isinstance(input, PackedSequence):
            packed = input
            if packed.data.shape[-1] != self.input_size:
                raise ValueError(
                    f"PeepholeLSTM: expected a PackedSequence of {self.input_size} features per step "
                    f"(data of shape (total_steps, {self.input_size})), got {packed.data.shape[-1]}"
                )
            x, lengths = pad_packed_sequence(packed)  # original batch order, as hx is given
            batched = True
        else:
            self._check_input(input)
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
        h0, c0 = self._initial_state(x, hx, batched)
        if lengths is not None:
            lengths = lengths.to(x.device)

        h_n, c_n, paths = [], [], []
        for layer, opts in enumerate(self.options):
            path = self._path(opts, x.device)
            paths.append(path)
            step = _step_function("eager" if path.startswith(("fused", "eager")) else path)
            flags = step_flags(opts, self.training)
            gates0 = x.new_zeros(x.shape[1], len(opts.gate_names) * opts.hidden_size if opts.gate_recurrence else 0)
            outputs = []
            for direction in range(self.num_directions):
                j = layer * self.num_directions + direction
                input_weights = self._weights(INPUT_WEIGHTS, layer, direction)
                weights = self._weights(STEP_WEIGHTS, layer, direction)
                if path.startswith("fused"):  # projects x itself (inside the steps when it can)
                    xd = reverse_padded(x, lengths) if direction else x
                    out, h, c = fused.fused_layer(xd, input_weights, h0[j], c0[j], lengths, weights, opts, kernel=path)
                else:
                    xz = input_projection(x, *input_weights)
                    if direction:
                        xz = reverse_padded(xz, lengths)
                    out, h, c, _ = lstm_sequence(step, xz, h0[j], c0[j], gates0, lengths, weights, flags)
                outputs.append(reverse_padded(out, lengths) if direction else out)
                h_n.append(h)
                c_n.append(c)
            x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, -1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)

        if not torch.compiler.is_compiling():
            self.last_path = paths[0] if len(set(paths)) == 1 else ", ".join(paths)
        h_n, c_n = torch.stack(h_n), torch.stack(c_n)
        if lengths is not None:
            return _repack(x, packed), (h_n, c_n)
        if not batched:
            return x.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            x = x.transpose(0, 1)
        return x, (h_n, c_n)


def _repack(padded: Tensor, like: PackedSequence) -> PackedSequence:
    """Pack a padded (T, B, ...) output exactly as `like` was packed (same batch_sizes and order)."""
    lengths = (like.batch_sizes.unsqueeze(1) > torch.arange(padded.shape[1])).sum(0)  # in sorted order
    if like.sorted_indices is not None:
        padded = padded.index_select(1, like.sorted_indices.to(padded.device))
    data = pack_padded_sequence(padded, lengths, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)
