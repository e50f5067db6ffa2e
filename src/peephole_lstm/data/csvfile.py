"""Forecasting on any user CSV: one row per time step, target and feature columns chosen by name."""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd

from peephole_lstm.data.base import DataError
from peephole_lstm.data.textfile import read_utf8
from peephole_lstm.data.windowed import WindowedSeriesDataModule

MISSING = {"", "nan", "na", "n/a", "null", "none", "-"}
SHOW = 5  # offending rows listed per error


def _names(arg: str, value: object, allow_all: bool = False) -> list[str] | str:
    if allow_all and value == "all":
        return "all"
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, bytes) or not all(isinstance(v, str) and v for v in value):
        extra = ', or "all"' if allow_all else ""
        raise ValueError(f"{arg}={value!r} must be a column name or a list of column names{extra}")
    if len(set(value)) != len(value):
        raise ValueError(f"{arg}={list(value)!r} names a column twice")
    return list(value)


def _lines(mask: pd.Series, cells: pd.Series) -> str:
    # Data row i sits on file line i + 2 (line 1 is the header; blank lines are kept as rows).
    idx = np.flatnonzero(mask.to_numpy())
    shown = ", ".join(f"line {i + 2} ({cells.iloc[i]!r})" for i in idx[:SHOW])
    more = f", ... ({len(idx)} rows in total)" if len(idx) > SHOW else ""
    return shown + more


def parse_numeric(df: pd.DataFrame, column: str, path: str) -> np.ndarray:
    """A column as float64, or a DataError listing the first missing / non-numeric cells by file line."""
    cells = df[column].astype(str).str.strip()
    missing = cells.str.lower().isin(MISSING)
    values = pd.to_numeric(cells.where(~missing), errors="coerce")
    if missing.any():
        raise DataError(f"{path}: column {column!r} has missing/NaN values at {_lines(missing, cells)}")
    bad = values.isna() | ~np.isfinite(values.fillna(0.0))
    if bad.any():
        raise DataError(f"{path}: column {column!r} has non-numeric or infinite values at {_lines(bad, cells)}")
    return values.to_numpy(dtype=np.float64)


def _is_numeric(df: pd.DataFrame, column: str) -> bool:
    cells = df[column].astype(str).str.strip()
    cells = cells[~cells.str.lower().isin(MISSING)]
    return len(cells) > 0 and pd.to_numeric(cells, errors="coerce").notna().all()


class CSVDataModule(WindowedSeriesDataModule):
    """Forecast ``target`` column(s) ``horizon`` rows ahead from the last ``window`` rows of a CSV.

    Inputs are the target columns followed by the ``features`` columns: ``None`` (default) means the
    targets only, a list names extra columns, ``"all"`` takes every numeric non-target column.
    Rows are time steps in file order; the split is chronological.
    """

    def __init__(
        self,
        path: str | None = None,
        target: str | list[str] | None = None,
        features: list[str] | str | None = None,
        sep: str = ",",
        window: int = 32,
        horizon: int = 1,
        stride: int = 1,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            window=window,
            horizon=horizon,
            stride=stride,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
        )
        if path is None:
            raise ValueError("path=None: give the CSV file to read, e.g. data.path=/data/series.csv")
        if target is None:
            raise ValueError("target=None: name the column(s) to forecast, e.g. data.target=value")
        if not isinstance(sep, str) or not sep:
            raise ValueError(f"sep={sep!r} must be a non-empty string such as ',' or ';'")
        self.path, self.sep = path, sep
        self.targets = _names("target", target)
        self.features = [] if features is None else _names("features", features, allow_all=True)

    def _load(self) -> tuple[np.ndarray, list[str], list[str]]:
        p, text = read_utf8(self.path, "CSV file")
        where = str(p)
        header, _, rest = text.partition("\n")
        if not rest.strip():  # checked before pandas, which is slow on one huge header line
            n = len(header.split(self.sep))
            raise DataError(f"{where}: has a header line ({n} columns) but no data rows")
        try:
            df = pd.read_csv(
                io.StringIO(text), sep=self.sep, dtype=str, keep_default_na=False, skip_blank_lines=False
            )
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
            raise DataError(f"{where}: cannot parse as CSV with sep={self.sep!r}: {e}") from None
        columns = [str(c) for c in df.columns]
        if len(df) == 0:
            raise DataError(f"{where}: has a header line ({len(columns)} columns) but no data rows")
        wanted = self.targets + ([] if self.features == "all" else self.features)
        unknown = [c for c in wanted if c not in columns]
        if unknown:
            hint = " (check sep=)" if len(columns) == 1 and self.sep not in columns[0] else ""
            raise DataError(f"{where}: unknown column(s) {unknown}; available columns: {columns}{hint}")
        if self.features == "all":
            extra = [c for c in columns if c not in self.targets and _is_numeric(df, c)]
        else:
            extra = [c for c in self.features if c not in self.targets]
        names = self.targets + extra
        values = np.stack([parse_numeric(df, c, where) for c in names], axis=1)
        return values, names, list(self.targets)
