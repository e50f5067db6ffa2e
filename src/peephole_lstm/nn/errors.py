"""The library's error types, chosen so that code written against torch.nn.LSTM catches them.

nn.LSTM reports a bad input or state (shape, size, dtype, empty sequence) as a RuntimeError (a few of
its checks raise ValueError), and a constructor argument of the wrong type as a TypeError. This library
first raised ValueError for all of them. Each class below is both kinds, so callers written against
either keep working.
"""
from __future__ import annotations


class InputError(RuntimeError, ValueError):
    """A forward input or state that does not fit the module: wrong shape, size or dtype, or an empty
    sequence. nn.LSTM raises RuntimeError for these (ValueError for a few), so this is both."""


class OptionTypeError(TypeError, ValueError):
    """A constructor argument of the wrong type (e.g. ``bias=0``, ``hidden_size=5.0``). nn.LSTM raises
    TypeError; the library's other option errors are ValueError, so this is both."""
