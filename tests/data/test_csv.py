import os
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from peephole_lstm.data import CSVDataModule, DataError, TaskSpec
from peephole_lstm.data import examples
from peephole_lstm.data.examples import example_csv_path

CONF = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "data")


def write_series(path, n=120, extra=None):
    t = np.arange(n)
    df = pd.DataFrame({"time": t, "load": np.sin(t / 5.0) * 10 + 50, "temp": np.cos(t / 7.0), "site": "a"})
    df.to_csv(path, index=False)
    return df


def test_batches_and_spec_with_features(tmp_path):
    path = tmp_path / "s.csv"
    df = write_series(path)
    dm = CSVDataModule(str(path), target="load", features=["temp"], window=8, horizon=2, batch_size=5)
    assert dm.spec == TaskSpec(task="forecast", input_size=2, output_size=1, horizon=2, target_names=["load"])
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (5, 8, 2) and y.shape == (5, 2, 1) and x.dtype == y.dtype == torch.float32
    a, _ = dm.split_rows["test"]
    np.testing.assert_allclose(dm.inverse_transform(y[0]).flatten().numpy(), df["load"][a + 8 : a + 10], rtol=1e-5)


def test_default_features_are_the_targets_and_all_takes_numeric_columns(tmp_path):
    path = tmp_path / "s.csv"
    write_series(path)
    assert CSVDataModule(str(path), target=["load", "temp"], window=8).spec.input_size == 2
    dm = CSVDataModule(str(path), target="load", features="all", window=8)
    dm.setup()
    assert dm.input_names == ["load", "time", "temp"]  # "site" is text, so not a feature


def test_sunspots_example_through_hydra_and_the_export_cli(tmp_path, capsys):
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        dm = instantiate(compose("sunspots"))
    assert dm.path == example_csv_path("sunspots")
    assert dm.spec.target_names == ["SUNACTIVITY"]
    out = tmp_path / "sun.csv"
    examples.main(["sunspots", str(out)])  # what `python -m peephole_lstm.data.examples sunspots out.csv` runs
    assert f"data.path={out} data.target=SUNACTIVITY" in capsys.readouterr().out
    exported = CSVDataModule(str(out), target="SUNACTIVITY", window=20)
    exported.setup()
    dm.setup()
    np.testing.assert_allclose(exported.mean, dm.mean)
    assert len(exported.datasets["train"]) == len(dm.datasets["train"]) > 100


# ------------------------------------------------------------------ hostile and broken files
def csv_dm(path, **kw):
    return CSVDataModule(str(path), **{"target": "y", "window": 3, **kw})


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="CSV file not found: .*nope.csv"):
        csv_dm(tmp_path / "nope.csv").setup()


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory, not a file"):
        csv_dm(tmp_path).setup()


def test_empty_and_whitespace_and_header_only(tmp_path):
    (tmp_path / "e.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"is empty \(0 bytes\)"):
        csv_dm(tmp_path / "e.csv").setup()
    (tmp_path / "w.csv").write_text("\n \n")
    with pytest.raises(DataError, match="contains only whitespace"):
        csv_dm(tmp_path / "w.csv").setup()
    (tmp_path / "h.csv").write_text("x,y\n")
    with pytest.raises(DataError, match=r"header line \(2 columns\) but no data rows"):
        csv_dm(tmp_path / "h.csv").setup()


def test_not_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"x,y\n1,2\n3,caf\xe9\n")
    with pytest.raises(DataError, match=r"not valid UTF-8: byte offset 13 \(line 3\)"):
        csv_dm(path).setup()
    utf16 = tmp_path / "u16.csv"
    utf16.write_bytes("x,y\n1,2\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"encoded as UTF-16"):
        csv_dm(utf16).setup()


def test_unknown_column_lists_available_columns(tmp_path):
    path = tmp_path / "s.csv"
    write_series(path)
    with pytest.raises(DataError, match=r"unknown column\(s\) \['y', 'wind'\]; available columns: \['time', 'load', 'temp', 'site'\]"):
        csv_dm(path, features=["wind"]).setup()


def test_wrong_separator_is_hinted(tmp_path):
    path = tmp_path / "semi.csv"
    path.write_text("x;y\n1;2\n")
    with pytest.raises(DataError, match=r"available columns: \['x;y'\] \(check sep=\)"):
        csv_dm(path).setup()


def test_non_numeric_values_name_column_and_lines(tmp_path):
    rows = [f"{i},{i * 0.5}" for i in range(60)]
    rows[3], rows[10] = "3,abc", "10,1.2.3"
    path = tmp_path / "bad.csv"
    path.write_text("x,y\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"column 'y' has non-numeric or infinite values at line 5 \('abc'\), line 12 \('1.2.3'\)"):
        csv_dm(path).setup()


def test_missing_values_name_column_and_lines(tmp_path):
    rows = [f"{i},{i * 0.5}" for i in range(60)]
    rows[7], rows[20] = "7,", "20,NaN"
    path = tmp_path / "nan.csv"
    path.write_text("x,y\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"column 'y' has missing/NaN values at line 9 \(''\), line 22 \('NaN'\)"):
        csv_dm(path).setup()


def test_many_bad_rows_are_summarised(tmp_path):
    path = tmp_path / "many.csv"
    path.write_text("x,y\n" + "\n".join(f"{i},?" for i in range(50)) + "\n")
    with pytest.raises(DataError, match=r"line 6 \('\?'\), \.\.\. \(50 rows in total\)"):
        csv_dm(path).setup()


def test_series_too_short(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("x,y\n" + "\n".join(f"{i},{i}" for i in range(30)) + "\n")
    with pytest.raises(DataError, match=r"validation split has 4 rows \(of 30 .*needs at least 9"):
        csv_dm(path, window=8).setup()


def test_huge_lines(tmp_path):
    # a 2 MB header-only line: a clear error, not a hang or a parser crash
    one_line = tmp_path / "one_line.csv"
    one_line.write_text(",".join(f"c{i}" for i in range(300_000)))
    with pytest.raises(DataError, match="no data rows"):
        CSVDataModule(str(one_line), target="c0").setup()
    # a 1 MB cell in an unused column is fine
    rows = [f"{i},{i % 7},{'z' * (1_000_000 if i == 5 else 1)}" for i in range(80)]
    big_cell = tmp_path / "big_cell.csv"
    big_cell.write_text("x,y,note\n" + "\n".join(rows) + "\n")
    assert csv_dm(big_cell).spec.input_size == 1


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(path=None, target="y"), r"path=None: give the CSV file"),
        (dict(path="a.csv", target=None), r"target=None: name the column"),
        (dict(path="a.csv", target=3), r"target=3 must be a column name or a list"),
        (dict(path="a.csv", target=["y", "y"]), r"names a column twice"),
        (dict(path="a.csv", target="y", features=5), r"features=5 must be a column name or a list of column names, or \"all\""),
        (dict(path="a.csv", target="y", sep=""), r"sep=''"),
    ],
)
def test_invalid_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        CSVDataModule(**kw)
