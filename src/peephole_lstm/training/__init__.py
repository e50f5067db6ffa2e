"""The experiment framework: Lightning module, Hydra config schemas and the train/eval run logic.

Imported lazily, so that `train.py` can reject a bad config before Lightning and W&B are loaded.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "SequenceModel": "peephole_lstm.training.module",
    "train": "peephole_lstm.training.run",
    "evaluate": "peephole_lstm.training.run",
    "register_configs": "peephole_lstm.training.schema",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'peephole_lstm.training' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
