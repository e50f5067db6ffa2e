"""A model holding a PeepholeLSTM, in a file of its own: TorchScript reads the source of what it compiles."""
from __future__ import annotations

import torch

from peephole_lstm import PeepholeLSTM


class Net(torch.nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.lstm = PeepholeLSTM(3, 4, **kwargs)
        self.head = torch.nn.Linear(4 * (2 if kwargs.get("bidirectional") else 1), 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out)
