"""Property tests through the real files and datasets: CSV normalisation ignores everything after the
training rows, and character chunks/streams cover each split exactly, with y = x shifted by one."""
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peephole_lstm.data import CSVDataModule
from peephole_lstm.data.chars import ChunkDataset, StreamDataset


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(60, 150), change=st.floats(-1e6, 1e6))
def test_csv_training_statistics_ignore_val_and_test_rows(seed, n, change):
    values = np.random.default_rng(seed).normal(size=(n, 2)).round(6)
    with tempfile.TemporaryDirectory() as d:
        def load(v):
            path = Path(d) / "s.csv"
            path.write_text("y,z\n" + "\n".join(f"{a!r},{b!r}" for a, b in v.tolist()))
            dm = CSVDataModule(str(path), target="y", features=["z"], window=4, horizon=2)
            dm.setup()
            return dm

        dm = load(values)
        a, b = dm.split_rows["train"]
        np.testing.assert_allclose(dm.mean, values[a:b].mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(dm.std, values[a:b].std(axis=0), atol=1e-12)
        changed = values.copy()
        changed[b:] += change
        dm2 = load(changed)
    np.testing.assert_array_equal(dm2.mean, dm.mean)
    np.testing.assert_array_equal(dm2.std, dm.std)
    for i in range(len(dm.datasets["train"])):
        torch.testing.assert_close(dm.datasets["train"][i], dm2.datasets["train"][i])


@settings(max_examples=100, deadline=None)
@given(n=st.integers(2, 400), seq_len=st.integers(1, 20))
def test_chunks_are_consecutive_and_targets_shifted(n, seq_len):
    ids = torch.arange(n)
    ds = ChunkDataset(ids, seq_len)
    assert len(ds) == (n - 1) // seq_len
    xs = [ds[i][0] for i in range(len(ds))]
    ys = [ds[i][1] for i in range(len(ds))]
    if xs:
        assert torch.equal(torch.cat(xs), ids[: len(ds) * seq_len])  # no gap, no overlap
        assert torch.equal(torch.cat(ys), ids[1 : len(ds) * seq_len + 1])
        assert int(torch.cat(ys).max()) < n  # never reads past the split


@settings(max_examples=100, deadline=None)
@given(n=st.integers(2, 600), seq_len=st.integers(1, 12), batch=st.integers(1, 8))
def test_streams_continue_across_batches_and_do_not_overlap(n, seq_len, batch):
    ids = torch.arange(n)
    ds = StreamDataset(ids, seq_len, batch)
    assert len(ds) % batch == 0
    batches = [torch.stack([ds[k * batch + b][0] for b in range(batch)]) for k in range(len(ds) // batch)]
    targets = [torch.stack([ds[k * batch + b][1] for b in range(batch)]) for k in range(len(ds) // batch)]
    if not batches:
        assert n - 1 < batch * seq_len
        return
    rows = torch.cat(batches, dim=1)  # (batch, steps): each row must be one contiguous stream
    assert torch.equal(rows - rows[:, :1], torch.arange(rows.shape[1]).expand_as(rows))
    assert torch.equal(torch.cat(targets, dim=1), rows + 1)
    assert len(set(rows.flatten().tolist())) == rows.numel()  # streams are disjoint
    assert int(rows.max()) + 1 < n
