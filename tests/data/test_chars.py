import lightning as L
import pytest
import torch

from peephole_lstm.data import CharDataModule, DataError, TaskSpec
from peephole_lstm.data.chars import UNK, default_corpus

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200))


def write(tmp_path, text, name="t.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_default_corpus_ships_with_python():
    text = default_corpus()
    assert len(text) > 100_000 and "assert" in text
    dm = CharDataModule(seq_len=16, batch_size=4, max_chars=20_000)
    spec = dm.spec
    assert spec.task == "lm" and spec.vocab[0] == UNK and spec.input_size == spec.output_size == len(spec.vocab)


def test_batches_follow_the_lm_contract_and_targets_are_shifted(tmp_path):
    dm = CharDataModule(write(tmp_path, TEXT), seq_len=20, batch_size=6)
    assert dm.spec == TaskSpec(task="lm", input_size=len(dm.vocab), output_size=len(dm.vocab), vocab=dm.vocab)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == y.shape == (6, 20) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
    x, y = dm.datasets["train"][3]
    assert dm.decode(x) == TEXT[60:80] and dm.decode(y) == TEXT[61:81]


def test_vocab_comes_from_training_split_and_unseen_chars_are_unk(tmp_path):
    text = "ab" * 400 + "abz" * 50  # 'z' only occurs in val/test
    dm = CharDataModule(write(tmp_path, text), seq_len=8, batch_size=2, val_fraction=0.1, test_fraction=0.1)
    assert dm.spec.vocab == [UNK, "a", "b"]
    x, _ = next(iter(dm.test_dataloader()))
    assert (x == 0).any()
    assert dm.decode(dm.encode("abz")) == "ab" + UNK


def test_stateful_batches_continue_the_same_streams(tmp_path):
    dm = CharDataModule(write(tmp_path, TEXT), seq_len=10, batch_size=4, stateful=True)
    assert dm.spec.stateful
    batches = list(dm.train_dataloader())
    assert len(batches) >= 3 and all(x.shape == (4, 10) for x, _ in batches)
    again = list(dm.train_dataloader())
    assert all(torch.equal(x, x2) for (x, _), (x2, _) in zip(batches, again))  # not shuffled
    for row in range(4):
        stream = torch.cat([x[row] for x, _ in batches])
        following = torch.cat([y[row] for _, y in batches])
        assert torch.equal(stream[1:], following[:-1])
        # each row is one contiguous piece of the training text
        s = dm.decode(stream)
        start = TEXT.find(s)
        assert start >= 0 and TEXT[start + 1 : start + 1 + len(s)] == dm.decode(following)


def test_non_stateful_training_order_is_shuffled_and_seeded(tmp_path):
    path = write(tmp_path, TEXT)
    a = [x for x, _ in CharDataModule(path, seq_len=10, batch_size=4, seed=1).train_dataloader()]
    b = [x for x, _ in CharDataModule(path, seq_len=10, batch_size=4, seed=1).train_dataloader()]
    dm = CharDataModule(path, seq_len=10, batch_size=4, seed=1)
    dm.setup()
    in_order = torch.stack([dm.datasets["train"][i][0] for i in range(4)])
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], in_order)


def test_huge_single_line_works(tmp_path):
    text = "abcdefghij" * 200_000  # 2 MB, no newline at all
    dm = CharDataModule(write(tmp_path, text), seq_len=64, batch_size=8)
    assert len(dm.spec.vocab) == 11
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (8, 64)


# ------------------------------------------------------------------ hostile and broken files
def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"text file not found: .*missing.txt"):
        CharDataModule(str(tmp_path / "missing.txt")).setup()
    with pytest.raises(IsADirectoryError, match="is a directory, not a file"):
        CharDataModule(str(tmp_path)).setup()


def test_empty_and_whitespace_text(tmp_path):
    (tmp_path / "e.txt").write_bytes(b"")
    with pytest.raises(DataError, match=r"is empty \(0 bytes\)"):
        CharDataModule(str(tmp_path / "e.txt")).setup()
    with pytest.raises(DataError, match="contains only whitespace"):
        CharDataModule(write(tmp_path, " \n\t\n")).setup()


def test_wrong_encoding_names_the_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(("hello\nwörld\n" * 3).encode("latin-1"))
    with pytest.raises(DataError, match=r"not valid UTF-8: byte offset 7 \(line 2\) has bytes b'\\xf6rld'"):
        CharDataModule(str(path)).setup()
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes(TEXT.encode("utf-16"))
    with pytest.raises(DataError, match=r"encoded as UTF-16 \(little-endian\), not UTF-8"):
        CharDataModule(str(utf16)).setup()


def test_binary_file_is_rejected(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(DataError, match=r"not valid UTF-8: byte offset 128"):
        CharDataModule(str(path)).setup()


def test_text_too_short_names_split_and_requirement(tmp_path):
    path = write(tmp_path, "x" * 2000)
    with pytest.raises(DataError, match=r"validation split has 100 characters .* stateful=true needs "
                                        r"batch_size x seq_len \+ 1 = 32 x 16 \+ 1 = 513"):
        CharDataModule(path, seq_len=16, batch_size=32, stateful=True).setup()
    with pytest.raises(DataError, match=r"validation split has 100 characters .* one sequence needs seq_len \+ 1 = 128 \+ 1 = 129"):
        CharDataModule(path, seq_len=128).setup()
    assert CharDataModule(path, seq_len=16, batch_size=4, stateful=True).spec.stateful


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(path=3), r"path=3 must be a text file path, or null for the default corpus"),
        (dict(seq_len=0), r"seq_len=0 must be an integer >= 1"),
        (dict(stateful="yes"), r"stateful='yes' must be true or false"),
        (dict(max_chars=1), r"max_chars=1 must be an integer >= 2"),
        (dict(test_fraction=1.5), r"test_fraction=1.5 must be a number strictly between 0 and 1"),
    ],
)
def test_invalid_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        CharDataModule(**kw)


def test_stateful_refuses_multi_process_training(tmp_path):
    dm = CharDataModule(write(tmp_path, TEXT), seq_len=10, batch_size=4, stateful=True)
    dm.trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)  # not started
    with pytest.raises(ValueError, match="stateful=true supports a single process only"):
        dm.train_dataloader()
