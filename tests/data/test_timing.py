import pytest
import torch

from peephole_lstm.data import TaskSpec, TimingDataModule


def all_batches(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_msd_end_is_a_forecast_of_the_spike_delay():
    dm = TimingDataModule(task="msd", seq_len=40, n_train=64, n_val=8, n_test=8, delay_min=3,
                          delay_max=30, batch_size=16)
    assert dm.spec == TaskSpec(task="forecast", input_size=1, output_size=1, horizon=1, target_names=["delay"],
                               timing="delay", delay_scale=28.0, delay_offset=2.0)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 40, 1) and y.shape == (16, 1, 1)
    assert x.dtype == y.dtype == torch.float32
    x, y = all_batches(dm.train_dataloader())
    for xi, yi in zip(x, y):
        spikes = xi[:, 0].nonzero().flatten()
        assert len(spikes) == 2 and set(xi.unique().tolist()) == {0.0, 1.0}
        delay = int(spikes[1] - spikes[0])
        assert 3 <= delay <= 30
        assert dm.inverse_transform(yi).item() == pytest.approx(delay)
    delays = dm.inverse_transform(y).round().flatten()
    assert len(delays.unique()) > 10  # delays vary over the range


def test_msd_per_step_holds_the_delay_from_the_second_spike_on():
    dm = TimingDataModule(task="msd", msd_target="per_step", seq_len=30, n_train=20, n_val=4, n_test=4,
                          delay_min=2, delay_max=20, batch_size=4)
    assert dm.spec.task == "seq2seq"
    x, y = all_batches(dm.test_dataloader())
    assert y.shape == (4, 30, 1)
    for xi, yi in zip(x, y):
        t1, t2 = xi[:, 0].nonzero().flatten().tolist()
        assert (yi[:t2] == 0).all()
        torch.testing.assert_close(yi[t2:], torch.full_like(yi[t2:], (t2 - t1 - 1) / 19))  # (d - delay_min + 1) / 19 delays


def test_gts_target_spikes_every_period_after_the_start():
    dm = TimingDataModule(task="gts", seq_len=60, period=7, start_max=10, n_train=32, n_val=4, n_test=4,
                          batch_size=8)
    assert dm.spec == TaskSpec(task="seq2seq", input_size=1, output_size=1, target_names=["spike"],
                               timing="spike_train")
    x, y = all_batches(dm.train_dataloader())
    starts = set()
    for xi, yi in zip(x, y):
        (t0,) = xi[:, 0].nonzero().flatten().tolist()
        starts.add(t0)
        assert yi[:, 0].nonzero().flatten().tolist() == list(range(t0 + 7, 60, 7))
    assert len(starts) > 3 and max(starts) <= 10


@pytest.mark.parametrize("wave", ["sine", "triangle", "square"])
def test_pfg_target_is_the_periodic_waveform_after_the_cue(wave):
    dm = TimingDataModule(task="pfg", waveform=wave, seq_len=50, period=8, start_max=5, n_train=8, n_val=2,
                          n_test=2, batch_size=8)
    assert dm.spec.target_names == [wave]
    x, y = all_batches(dm.train_dataloader())
    for xi, yi in zip(x, y):
        (t0,) = xi[:, 0].nonzero().flatten().tolist()
        assert (yi[:t0] == 0).all()
        wave_part = yi[t0:, 0]
        torch.testing.assert_close(wave_part[8:], wave_part[:-8])  # periodic with the period
        assert wave_part.max() == pytest.approx(1.0) and wave_part.min() == pytest.approx(-1.0)
        if wave != "square":  # in phase with the sine: 0 at the cue, peak a quarter period later
            assert wave_part[0] == pytest.approx(0.0, abs=1e-6) and wave_part[2] == pytest.approx(1.0)


def test_generation_is_deterministic_and_splits_differ():
    a = TimingDataModule(task="gts", seed=3)
    b = TimingDataModule(task="gts", seed=3)
    a.setup()
    b.setup()
    torch.testing.assert_close(a.datasets["test"].tensors, b.datasets["test"].tensors)
    torch.testing.assert_close(next(iter(a.train_dataloader())), next(iter(b.train_dataloader())))
    assert not torch.equal(a.datasets["train"].tensors[0][:200], a.datasets["val"].tensors[0])
    c = TimingDataModule(task="gts", seed=4)
    c.setup()
    assert not torch.equal(a.datasets["test"].tensors[0], c.datasets["test"].tensors[0])


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(task="copy"), r"task='copy' is not allowed; choose one of \['msd', 'gts', 'pfg'\]"),
        (dict(msd_target="middle"), r"msd_target='middle' is not allowed; choose one of \['end', 'per_step', 'spike'\]"),
        (dict(waveform="saw"), r"waveform='saw' is not allowed; choose one of \['sine', 'triangle', 'square'\]"),
        (dict(delay_min=30, delay_max=20), r"delay_min=30 must be <= delay_max=20"),
        (dict(seq_len=50, delay_max=50), r"seq_len=50 must be > delay_max=50"),
        (dict(task="pfg", seq_len=30, start_max=10, period=20), r"seq_len=30 must be > start_max \+ period = 30"),
        (dict(period=1), r"period=1 must be an integer >= 2"),
        (dict(n_val=0), r"n_val=0 must be an integer >= 1"),
    ],
)
def test_invalid_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        TimingDataModule(**kw)


def test_msd_spike_target_is_one_spike_at_t1_plus_twice_the_delay():
    dm = TimingDataModule(task="msd", msd_target="spike", seq_len=61, delay_min=5, delay_max=30, n_train=200,
                          n_val=4, n_test=4, batch_size=50)
    spec = dm.spec
    assert spec.task == "seq2seq" and spec.timing == "echo_spike" and spec.target_names == ["spike"]
    x, y = all_batches(dm.train_dataloader())
    delays = set()
    for xi, yi in zip(x, y):
        t1, t2 = xi[:, 0].nonzero().flatten().tolist()
        assert yi[:, 0].nonzero().flatten().tolist() == [t1 + 2 * (t2 - t1)]
        delays.add(t2 - t1)
    assert min(delays) >= 5 and max(delays) <= 30 and len(delays) > 15
    assert torch.equal(dm.inverse_transform(y), y)  # a spike is not a delay


def test_msd_fine_distinction_draws_only_49_and_50():
    dm = TimingDataModule(task="msd", seq_len=60, delay_min=49, delay_max=50, n_train=100, n_val=4, n_test=4)
    assert dm.spec.timing == "delay" and (dm.spec.delay_scale, dm.spec.delay_offset) == (2, 48)
    x, y = all_batches(dm.train_dataloader())
    assert set(y.flatten().tolist()) == {0.5, 1.0}  # the two classes as far apart as a whole range
    assert set(dm.inverse_transform(y).round().flatten().tolist()) == {49.0, 50.0}


def test_msd_spike_needs_room_for_the_output_spike():
    with pytest.raises(ValueError, match="seq_len=60 must be > 2 \\* delay_max = 60"):
        TimingDataModule(task="msd", msd_target="spike", seq_len=60, delay_max=30)
