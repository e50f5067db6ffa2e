"""A newcomer's typical mistakes through the real `python train.py`: the first line of the output is the
one message that says what is wrong and where, the exit status is non-zero, no traceback and no config
tree come before (or after) it, and HYDRA_FULL_ERROR=1 still gives the traceback."""
from __future__ import annotations

import pytest

from peephole_lstm.data import DataError
from peephole_lstm.training.checkpointing import CheckpointError
from peephole_lstm.training.errors import ConfigError, reported
from peephole_lstm.training.module import ModelConfigError
from tests.helpers.scripts import ROOT, run_script

pytestmark = pytest.mark.slow  # each test starts train.py (the in-process checks: tests/training/test_config.py)


def run_train(*overrides: str, cwd, full_error: bool = False) -> tuple[int, list[str]]:
    """`python train.py overrides...` with stdout and stderr interleaved as a terminal shows them."""
    proc = run_script("train.py", *overrides, cwd=cwd, full_error=full_error, merge_output=True)
    return proc.returncode, proc.stdout.splitlines()


def _csv(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


SERIES = "".join(f"{i},{i % 7}\n" for i in range(60))  # long enough for every split


CASES = {
    # bad keys: one the structured schema knows is wrong, one only the Trainer's signature can tell
    "unknown model key": (["model.hiden_size=3"], ["Could not override 'model.hiden_size'."]),
    "unknown trainer key": (["+trainer.max_epoch=3"],
                            ["Error: trainer.max_epoch is not an argument of lightning.pytorch.Trainer; "
                             "did you mean max_epochs"]),
    # bad values: an enum (Hydra's own message) and a datamodule argument (its constructor's message)
    "bad choice": (["model.peephole=diagnol"], ["Error merging override model.peephole=diagnol",
                                                "Invalid value 'diagnol', expected one of [none, diagonal, full]"]),
    "bad data argument": (["data.window=0"], ["Error: data.window=0 must be an integer >= 1"]),
    "missing data.path": (["data=csv", "data.target=b"],
                          ["Error: data.path is required but not set (data=csv); add data.path=<value> "
                           "to the command line"]),
    "missing file": (["data=csv", "data.path=nowhere.csv", "data.target=b"],
                     ["Error: CSV file not found: 'nowhere.csv'"]),
    # a model option that the chosen architecture does not have (ModelConfigError, a ConfigError)
    "option of another arch": (["model.arch=gru", "model.peephole=full"],
                               ["Error: model.arch=gru (torch.nn.GRU) ignores model.peephole='full'"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_config_mistakes_print_one_message_first(tmp_path, case):
    overrides, first_lines = CASES[case]
    code, lines = run_train(*overrides, cwd=tmp_path)
    assert code != 0
    for line, expected in zip(lines, first_lines, strict=False):
        assert line.startswith(expected), lines[:5]
    assert len(lines) >= len(first_lines), lines
    text = "\n".join(lines)
    assert "Traceback" not in text and "CONFIG" not in text  # no traceback, no config tree
    assert len(lines) <= 8, text


@pytest.mark.parametrize("content, message", [
    ("a,b\n" + SERIES + "60,\n", "column 'b' has missing/NaN values at line 62 ('')"),
    ("a,b\n" + SERIES + "60,NaN\n", "column 'b' has missing/NaN values at line 62 ('NaN')"),
    ("a,b\n" + SERIES + "60,seven\n", "column 'b' has non-numeric or infinite values at line 62 ('seven')"),
])
def test_bad_data_prints_the_file_column_and_line_first(tmp_path, content, message):
    path = _csv(tmp_path, "series.csv", content)
    code, lines = run_train("data=csv", f"data.path={path}", "data.target=b", cwd=tmp_path)
    assert code != 0
    assert lines[0] == f"Error: {path}: {message}", lines[:5]
    assert len(lines) == 1, lines


def test_a_mistyped_resume_dir_is_one_message_and_leaves_no_run_folder(tmp_path):
    typo = tmp_path / "outputs" / "train" / "runs" / "2026-01-01_00-00-0"
    code, lines = run_train("ckpt_path=last", f"hydra.run.dir={typo}", cwd=tmp_path)
    assert code != 0
    assert lines[0].startswith(f"Error: ckpt_path=last: there is no '{typo / 'checkpoints' / 'last.ckpt'}'"), lines[:5]
    assert len(lines) == 1, lines
    assert not typo.exists()  # Hydra made it for this start; nothing was written into it, so it is gone


def test_full_error_keeps_the_traceback(tmp_path):
    code, lines = run_train("data.window=0", cwd=tmp_path, full_error=True)
    assert code != 0
    text = "\n".join(lines)
    assert "Traceback (most recent call last)" in text and "window=0 must be an integer >= 1" in text


def test_a_multirun_reports_each_failed_job_without_traceback(tmp_path):
    code, lines = run_train("-m", "data.window=0,-1", cwd=tmp_path)
    assert code != 0
    text = "\n".join(lines)
    assert "Traceback" not in text and "CONFIG" not in text
    assert "Error: data.window=0 must be an integer >= 1" in text
    results = sorted(tmp_path.glob("multirun/*/*/*/results.json"))
    assert len(results) == 2  # both jobs ran and recorded their failure
    assert all('"status": "failed"' in r.read_text() for r in results)


@pytest.mark.parametrize("error", [ConfigError, ModelConfigError, CheckpointError, DataError])
def test_every_user_error_is_one_message_and_exit_status_1(error, monkeypatch, capsys):
    """One base class per kind of user mistake (ConfigError for the config, DataError for the data): the
    handler catches the bases, so a new subclass is reported without touching it."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert issubclass(error, (ConfigError, DataError))
    with pytest.raises(SystemExit) as exit_:
        with reported():
            raise error("model.x=1 is wrong")
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "Error: model.x=1 is wrong\n"
