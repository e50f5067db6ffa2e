"""The neural-net library: cells, layers and kernels. Depends on torch only (no Lightning, no Hydra)."""
from peephole_lstm.nn.cell import PeepholeLSTMCell
from peephole_lstm.nn.errors import InputError, OptionTypeError
from peephole_lstm.nn.layer import PeepholeLSTM
from peephole_lstm.nn.options import variants

__all__ = ["PeepholeLSTM", "PeepholeLSTMCell", "variants", "InputError", "OptionTypeError"]
