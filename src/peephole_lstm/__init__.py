"""Peephole LSTMs (Gers et al. 2002) and the Greff et al. 2017 variants as a drop-in for torch.nn.LSTM.

The top-level package exposes the neural-net library only; it imports nothing but torch.
"""
from peephole_lstm.nn import PeepholeLSTM, PeepholeLSTMCell, variants

__all__ = ["PeepholeLSTM", "PeepholeLSTMCell", "variants"]
__version__ = "0.1.0"
