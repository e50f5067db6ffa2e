"""LightningDataModules for the experiment framework; every dataset is generated or read offline.

``dm.spec`` (a :class:`TaskSpec`) loads and validates all data, so bad input fails before training.
"""
from peephole_lstm.data.base import DataError, TaskSpec
from peephole_lstm.data.chars import CharDataModule
from peephole_lstm.data.csvfile import CSVDataModule
from peephole_lstm.data.digits import DigitsDataModule
from peephole_lstm.data.jsb_chorales import JSBChoralesDataModule
from peephole_lstm.data.mackey_glass import MackeyGlassDataModule
from peephole_lstm.data.timing import TimingDataModule

__all__ = [
    "CSVDataModule",
    "CharDataModule",
    "DataError",
    "DigitsDataModule",
    "JSBChoralesDataModule",
    "MackeyGlassDataModule",
    "TaskSpec",
    "TimingDataModule",
]
