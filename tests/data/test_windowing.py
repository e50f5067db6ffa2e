"""Property tests of the chronological split, the windows cut inside each split, and train-only
normalisation, on the real WindowedSeriesDataModule with a series whose values encode their time index."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peephole_lstm.data.base import DataError, EpochShuffleSampler, split_ranges
from peephole_lstm.data.windowed import WindowedSeriesDataModule, window_starts


class ArrayDataModule(WindowedSeriesDataModule):
    """Serves a given array; column 0 is the target."""

    def __init__(self, values, **kw):
        defaults = dict(window=3, horizon=1, stride=1, val_fraction=0.2, test_fraction=0.2,
                        batch_size=4, num_workers=0, seed=0)
        super().__init__(**{**defaults, **kw})
        self.values = np.asarray(values, dtype=np.float64)

    def _load(self):
        names = [f"c{i}" for i in range(self.values.shape[1])]
        return self.values, names, names[:1]


fractions = st.floats(0.05, 0.45)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 10_000), val=fractions, test=fractions)
def test_split_ranges_partition_the_series_in_order(n, val, test):
    r = split_ranges(n, val, test)
    assert r["train"][0] == 0 and r["train"][1] == r["val"][0] and r["val"][1] == r["test"][0]
    assert r["test"][1] == n
    assert all(a <= b for a, b in r.values())
    assert r["val"][1] - r["val"][0] == int(n * val) and r["test"][1] - r["test"][0] == int(n * test)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(30, 300),
    window=st.integers(1, 6),
    horizon=st.integers(1, 4),
    stride=st.integers(1, 5),
    val=fractions,
    test=fractions,
)
def test_windows_stay_inside_their_split_and_targets_never_overlap(n, window, horizon, stride, val, test):
    dm = ArrayDataModule(np.arange(n)[:, None], window=window, horizon=horizon, stride=stride,
                         val_fraction=val, test_fraction=test)
    try:
        dm.setup()
    except DataError as e:  # only allowed when some split is genuinely too short
        assert any(b - a < window + horizon for a, b in split_ranges(n, val, test).values())
        assert "split has" in str(e)
        return
    targets_by_split = {}
    for split, (a, b) in dm.split_rows.items():
        ds = dm.datasets[split]
        assert len(ds) == len(window_starts(b - a, window, horizon, stride)) >= 1
        seen = set()
        for i in range(len(ds)):
            x, y = ds[i]
            xt = dm.inverse_transform(x).round().long().flatten().tolist()  # column 0 is the time index
            yt = dm.inverse_transform(y).round().long().flatten().tolist()
            assert xt == list(range(xt[0], xt[0] + window))
            assert yt == list(range(xt[-1] + 1, xt[-1] + 1 + horizon))  # targets follow the inputs
            assert a <= xt[0] and yt[-1] < b  # the whole window is inside the split
            if i > 0:
                assert xt[0] - prev == stride
            prev = xt[0]
            seen.update(yt)
        targets_by_split[split] = seen
    assert not targets_by_split["train"] & targets_by_split["val"]
    assert not targets_by_split["train"] & targets_by_split["test"]
    assert not targets_by_split["val"] & targets_by_split["test"]


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(40, 200),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-3, 1e3),
    shift=st.floats(-1e3, 1e3),
)
def test_normalisation_uses_the_training_split_only(n, seed, scale, shift):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, 2))
    dm = ArrayDataModule(values)
    dm.setup()
    a, b = dm.split_rows["train"]
    np.testing.assert_allclose(dm.mean, values[a:b].mean(axis=0))
    np.testing.assert_allclose(dm.std, values[a:b].std(axis=0))

    changed = values.copy()
    changed[b:] = changed[b:] * scale + shift  # rewrite everything after the training split
    dm2 = ArrayDataModule(changed)
    dm2.setup()
    np.testing.assert_array_equal(dm2.mean, dm.mean)
    np.testing.assert_array_equal(dm2.std, dm.std)
    x1, y1 = next(iter(dm.test_dataloader()))
    x2, y2 = next(iter(dm2.test_dataloader()))
    # test values change, and are mapped with the (unchanged) training statistics
    torch.testing.assert_close(dm2.inverse_transform(y2), dm2.inverse_transform(y1) * scale + shift,
                               rtol=1e-4, atol=1e-3 * max(1.0, abs(shift)))
    for i in range(len(dm.datasets["train"])):
        torch.testing.assert_close(dm.datasets["train"][i], dm2.datasets["train"][i])


def test_constant_training_column_is_not_divided_by_zero():
    values = np.stack([np.arange(50.0), np.r_[np.zeros(30), np.arange(20.0)]], axis=1)
    dm = ArrayDataModule(values)
    dm.setup()
    assert dm.std[1] == 1.0
    x, _ = dm.datasets["test"][0]
    assert torch.isfinite(x).all()


def test_too_short_split_names_the_split_and_the_numbers():
    dm = ArrayDataModule(np.arange(20.0)[:, None], window=5, horizon=2, val_fraction=0.2, test_fraction=0.2)
    with pytest.raises(DataError, match=r"validation split has 4 rows .* window \+ horizon = 5 \+ 2 needs at least 7"):
        dm.setup()


def test_shuffle_order_depends_only_on_seed_and_epoch():
    s = EpochShuffleSampler(100, seed=3)
    first = list(s)
    assert sorted(first) == list(range(100))
    assert list(s) == first  # no hidden RNG state advanced by iterating
    s.set_epoch(1)
    second = list(s)
    assert second != first
    resumed = EpochShuffleSampler(100, seed=3)
    resumed.set_epoch(1)
    assert list(resumed) == second  # what a resumed run sees at epoch 1
    assert list(EpochShuffleSampler(100, seed=4)) != first


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(window=0), r"window=0 must be an integer >= 1"),
        (dict(horizon=1.5), r"horizon=1.5 must be an integer"),
        (dict(stride=True), r"stride=True must be an integer"),
        (dict(val_fraction=0.0), r"val_fraction=0.0 must be a number strictly between 0 and 1"),
        (dict(val_fraction=0.5, test_fraction=0.5), r"val_fraction \+ test_fraction = 1 must be < 1"),
        (dict(batch_size=0), r"batch_size=0"),
        (dict(num_workers=-1), r"num_workers=-1"),
    ],
)
def test_invalid_arguments_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        ArrayDataModule(np.arange(50.0)[:, None], **kw)
