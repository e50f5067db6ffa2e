"""The experiment framework: Lightning module, Hydra config schemas and the train/eval run logic."""
from peephole_lstm.training.module import SequenceModel
from peephole_lstm.training.run import evaluate, train
from peephole_lstm.training.schema import register_configs

__all__ = ["SequenceModel", "evaluate", "register_configs", "train"]
