"""Validation of the cell options and the Greff et al. (2017) variant presets.

Everything that decides the shape of the parameters is resolved here once, so the cell, the layer and
the fast kernels read the same derived layout (which gate blocks exist, which gates have peepholes).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from peephole_lstm.nn.errors import OptionTypeError

PEEPHOLES = ("none", "diagonal", "full")
OUTPUT_PEEPHOLES = ("current", "previous")
ACTIVATIONS = ("tanh", "identity")
BACKENDS = ("auto", "eager", "script", "compile", "fused", "triton")
# The options that take one of a fixed set of values (the training schema types each as an Enum of them).
CHOICES = {"peephole": PEEPHOLES, "output_peephole": OUTPUT_PEEPHOLES,
           "input_activation": ACTIVATIONS, "output_activation": ACTIVATIONS}

# Greff et al. 2017, "LSTM: A Search Space Odyssey", Table 1. Each preset is complete, so it does not
# depend on PeepholeLSTM's defaults: vanilla = peephole LSTM with all gates and tanh activations.
_VANILLA = dict(
    peephole="diagonal",
    peephole_gates="ifo",
    output_peephole="current",
    coupled=False,
    input_gate=True,
    forget_gate=True,
    output_gate=True,
    input_activation="tanh",
    output_activation="tanh",
    gate_recurrence=False,
)
variants: dict[str, dict] = {
    "vanilla": dict(_VANILLA),
    "NIG": {**_VANILLA, "input_gate": False},  # no input gate
    "NFG": {**_VANILLA, "forget_gate": False},  # no forget gate
    "NOG": {**_VANILLA, "output_gate": False},  # no output gate
    "NIAF": {**_VANILLA, "input_activation": "identity"},  # no input activation function
    "NOAF": {**_VANILLA, "output_activation": "identity"},  # no output activation function
    "NP": {**_VANILLA, "peephole": "none"},  # no peepholes
    "CIFG": {**_VANILLA, "coupled": True},  # coupled input and forget gate: i = 1 - f
    "FGR": {**_VANILLA, "gate_recurrence": True},  # full gate recurrence
}


def _choice(name: str, value, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        error = ValueError if isinstance(value, str) else OptionTypeError
        raise error(f"{name}={value!r} is not valid; allowed values: {', '.join(map(repr, allowed))}")
    return value


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise OptionTypeError(f"{name}={value!r} must be a bool (True or False)")
    return value


def _size(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionTypeError(f"{name}={value!r} must be an int >= {minimum}")
    if value < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}")
    return value


@dataclass(frozen=True)
class CellOptions:
    """Validated options of one LSTM cell plus the parameter layout they imply.

    The one definition of the cell options and their defaults: PeepholeLSTMCell passes its options here,
    PeepholeLSTM's signature repeats them for help() (tests/training/test_single_source.py holds it to these
    fields and defaults), and the training schema (ModelConfig) and module take them from here."""

    input_size: int
    hidden_size: int
    bias: bool = True
    proj_size: int = 0
    peephole: str = "diagonal"
    peephole_gates: str = "ifo"
    output_peephole: str = "current"
    coupled: bool = False
    input_gate: bool = True
    forget_gate: bool = True
    output_gate: bool = True
    input_activation: str = "tanh"
    output_activation: str = "tanh"
    gate_recurrence: bool = False
    forget_bias: float = 1.0
    cell_clip: Optional[float] = None
    layer_norm: bool = False
    zoneout: float = 0.0

    def __post_init__(self):
        _size("input_size", self.input_size, 1)
        _size("hidden_size", self.hidden_size, 1)
        _size("proj_size", self.proj_size, 0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size={self.proj_size} must be smaller than hidden_size={self.hidden_size}")
        for name in ("bias", "coupled", "input_gate", "forget_gate", "output_gate", "gate_recurrence", "layer_norm"):
            _flag(name, getattr(self, name))
        for name, allowed in CHOICES.items():
            _choice(name, getattr(self, name), allowed)
        gates = self.peephole_gates
        if not isinstance(gates, str) or not gates or set(gates) - set("ifo") or len(set(gates)) != len(gates):
            raise ValueError(
                f"peephole_gates={gates!r} is not valid; use a non-empty subset of 'ifo' such as 'ifo', 'if' or 'o'"
            )
        if self.coupled and not self.input_gate:
            raise ValueError("coupled=True derives the input gate from the forget gate (i = 1 - f); "
                             "it cannot be combined with input_gate=False")
        if self.coupled and not self.forget_gate:
            raise ValueError("coupled=True needs the forget gate (i = 1 - f); it cannot be combined with forget_gate=False")
        self._check_requested_peepholes()
        if self.gate_recurrence and not self.gate_names:
            raise ValueError("gate_recurrence=True needs at least one of the input, forget or output gates")
        if isinstance(self.forget_bias, bool) or not isinstance(self.forget_bias, (int, float)):
            raise OptionTypeError(f"forget_bias={self.forget_bias!r} must be a number")
        if self.cell_clip is not None and (
            isinstance(self.cell_clip, bool) or not isinstance(self.cell_clip, (int, float)) or not self.cell_clip > 0
        ):
            raise ValueError(f"cell_clip={self.cell_clip!r} must be None or a number > 0")
        if isinstance(self.zoneout, bool) or not isinstance(self.zoneout, (int, float)) or not 0.0 <= self.zoneout < 1.0:
            raise ValueError(f"zoneout={self.zoneout!r} must be a probability in [0, 1)")

    def _check_requested_peepholes(self) -> None:
        # "ifo" (the default) means every gate that exists, so switching gates off keeps working with it;
        # a narrower set is a request for those gates, and a gate that does not exist cannot get one.
        if self.peephole == "none" or set(self.peephole_gates) == set("ifo"):
            return
        why = {"i": "coupled=True (i = 1 - f)" if self.coupled else "input_gate=False",
               "f": "forget_gate=False", "o": "output_gate=False"}
        names = {"i": "input", "f": "forget", "o": "output"}
        for gate in self.peephole_gates:
            if gate not in self.gate_names:
                raise ValueError(
                    f"peephole_gates={self.peephole_gates!r} asks for a peephole on the {names[gate]} gate, "
                    f"which {why[gate]} removes; drop {gate!r} from peephole_gates, or use 'ifo' "
                    f"(a peephole on every gate that exists)"
                )

    @property
    def blocks(self) -> str:
        """Gate blocks stacked in weight_ih/weight_hh, in nn.LSTM's order i, f, g, o."""
        has = {"i": self.input_gate and not self.coupled, "f": self.forget_gate, "g": True, "o": self.output_gate}
        return "".join(b for b in "ifgo" if has[b])

    @property
    def gate_names(self) -> str:
        """Sigmoid gates that have their own weights (the blocks other than g)."""
        return self.blocks.replace("g", "")

    @property
    def peephole_rows(self) -> str:
        """Gates with a peephole, one row each of weight_ch, in the order i, f, o."""
        if self.peephole == "none":
            return ""
        return "".join(g for g in self.gate_names if g in self.peephole_gates)

    @property
    def output_size(self) -> int:
        return self.proj_size if self.proj_size > 0 else self.hidden_size


# nn.LSTMCell's own arguments; the other fields of CellOptions (proj_size, as nn.LSTM's, to zoneout) are the
# options this library adds, which PeepholeLSTMCell takes as keywords and the training config as model.<name>.
LSTM_CELL_ARGUMENTS = ("input_size", "hidden_size", "bias")
CELL_OPTIONS = tuple(f.name for f in fields(CellOptions) if f.name not in LSTM_CELL_ARGUMENTS)
