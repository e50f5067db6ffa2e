"""Shared helpers of the core library tests: float64 modules with random parameters and a loss."""
from __future__ import annotations

import torch

from peephole_lstm import PeepholeLSTM, PeepholeLSTMCell


def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> torch.nn.Module:
    """Draw every parameter from N(0, scale) (layer-norm gains around 1) so that no term of the
    equations hides behind a zero or a one, and make the module float64."""
    gen = torch.Generator().manual_seed(seed)
    module.double()
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale
            p.copy_(1.0 + noise if name.startswith("ln_") and "weight" in name else noise)
    return module


def make_lstm(input_size: int, hidden_size: int, seed: int = 0, **kwargs) -> PeepholeLSTM:
    return randomize_(PeepholeLSTM(input_size, hidden_size, **kwargs), seed).eval()


def make_cell(input_size: int, hidden_size: int, seed: int = 0, **kwargs) -> PeepholeLSTMCell:
    return randomize_(PeepholeLSTMCell(input_size, hidden_size, **kwargs), seed).eval()


def weighted_sum(tensors, seed: int = 1):
    """A scalar loss that weighs every element differently, so each output element's gradient counts."""
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for t in tensors:
        total = total + (t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum()
    return total


def gradients(loss, inputs):
    """d loss / d inputs, with zeros for inputs the loss does not depend on."""
    inputs = list(inputs)
    return torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)
