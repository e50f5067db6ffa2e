"""Broken input files through the real entry point: train() fails before training starts with an error
that names the file (the datamodule-level cases and the hypothesis properties live in tests/data/)."""
from __future__ import annotations

import pytest

from peephole_lstm.training import train
from tests.helpers.configs import TINY_CSV, compose_config


def _bad_files(tmp_path):
    (tmp_path / "a_directory").mkdir()
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("x,y\n1,caf\xe9\n".encode("latin-1"))
    (tmp_path / "utf16.txt").write_bytes("x,y\n1,2\n".encode("utf-16"))
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4000)  # one ~1 MB line of bytes
    return tmp_path


CASES = [
    ("a_directory", "is a directory, not a file"),
    ("empty.txt", "is empty (0 bytes)"),
    ("latin1.txt", "is not valid UTF-8"),
    ("utf16.txt", "encoded as UTF-16"),
    ("binary.txt", "not valid UTF-8"),
    ("missing.txt", "not found"),
]


def _cases():
    """Every bad file for both text-file datamodules (both read through data/textfile.py). The fast lane
    runs every file through data=csv and two through data=chars; tests/data checks the readers directly."""
    return [pytest.param(data, name, message, id=f"{name}-{message}-{data}",
                         marks=pytest.mark.slow if data == "data=chars" and name not in ("latin1.txt", "binary.txt") else ())
            for name, message in CASES for data in ("data=csv data.target=y", "data=chars")]


@pytest.mark.parametrize("data, name, message", _cases())
def test_bad_data_files_fail_before_training_naming_the_file(tmp_path, data, name, message):
    path = _bad_files(tmp_path) / name
    run = tmp_path / "run"
    overrides = [*data.split(), f"data.path={path}", *(o for o in TINY_CSV if not o.startswith("data.length"))]
    cfg = compose_config("train", overrides, output_dir=run)
    with pytest.raises(Exception) as e:
        train(cfg)
    assert message in str(e.value) and str(path) in str(e.value)
    assert not (run / "checkpoints").exists()
