import lightning as L
import numpy as np
import pytest
import torch

from peephole_lstm.data import MackeyGlassDataModule, TaskSpec
from peephole_lstm.data.mackey_glass import mackey_glass


def test_batches_follow_the_forecast_contract():
    dm = MackeyGlassDataModule(length=400, window=16, horizon=3, batch_size=8)
    assert dm.spec == TaskSpec(task="forecast", input_size=1, output_size=1, horizon=3, target_names=["x"])
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (8, 16, 1) and x.dtype == torch.float32
        assert y.shape == (8, 3, 1) and y.dtype == torch.float32


def test_series_is_on_the_chaotic_attractor_and_seeded():
    a = mackey_glass(1000, seed=0)
    assert a.shape == (1000,)
    # tau=17 attractor: x stays within roughly [0.2, 1.4] and never settles to a fixed point or cycle
    assert 0.2 < a.min() < 0.6 and 1.1 < a.max() < 1.4
    assert a[-200:].std() > 0.15
    np.testing.assert_array_equal(a, mackey_glass(1000, seed=0))
    assert not np.allclose(a, mackey_glass(1000, seed=1))


def test_rk4_integration_converges_as_dt_shrinks():
    # With a constant history the trajectory is defined independently of dt; RK4 at dt=0.1 must
    # match dt=0.01 closely over a stretch shorter than chaos amplifies errors over.
    coarse = mackey_glass(100, dt=0.1, washout=0, history_noise=0.0)
    fine = mackey_glass(100, dt=0.01, washout=0, history_noise=0.0)
    assert np.abs(coarse - fine).max() < 1e-3
    euler_like = mackey_glass(100, dt=1.0, washout=0, history_noise=0.0)
    assert np.abs(euler_like - fine).max() > np.abs(coarse - fine).max()


def test_inverse_transform_recovers_the_series():
    dm = MackeyGlassDataModule(length=300, window=10, horizon=2, stride=1, seed=2)
    dm.setup()
    series = mackey_glass(300, seed=2)
    a, _ = dm.split_rows["test"]
    _, y = dm.datasets["test"][0]
    np.testing.assert_allclose(dm.inverse_transform(y)[:, 0].numpy(), series[a + 10 : a + 12], rtol=1e-5)
    a, b = dm.split_rows["train"]
    np.testing.assert_allclose(dm.mean, [series[a:b].mean()])


def test_setup_is_idempotent_and_data_deterministic():
    dm = MackeyGlassDataModule(length=300, seed=5)
    dm.setup()
    first = dm.datasets
    dm.setup("fit")
    assert dm.datasets is first
    x1, _ = next(iter(dm.train_dataloader()))
    x2, _ = next(iter(MackeyGlassDataModule(length=300, seed=5).train_dataloader()))
    torch.testing.assert_close(x1, x2)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(length=1), r"length=1 must be an integer >= 2"),
        (dict(tau=-1.0), r"tau=-1.0 must be a positive number"),
        (dict(tau=17.05), r"multiples of dt"),
        (dict(gamma="x"), r"gamma='x' must be a number"),
        (dict(seed=-1), r"seed=-1"),
    ],
)
def test_invalid_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        MackeyGlassDataModule(**kw)


def test_series_too_short_for_window_fails_in_setup():
    dm = MackeyGlassDataModule(length=100, window=32)
    with pytest.raises(ValueError, match="validation split has 15 rows"):
        dm.spec


class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)
        self.first_batches = []

    def training_step(self, batch, i):
        x, y = batch
        if i == 0:
            self.first_batches.append(x.clone())
        return torch.nn.functional.mse_loss(self.lin(x[:, -1:]), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_reshuffles_each_epoch_reproducibly(tmp_path):
    def run():
        dm = MackeyGlassDataModule(length=300, batch_size=16, seed=1)
        model = _Recorder()
        L.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=0, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  default_root_dir=tmp_path).fit(model, dm)
        return model.first_batches

    a, b = run(), run()
    assert len(a) == 2 and not torch.equal(a[0], a[1])  # Lightning called set_epoch: new order
    torch.testing.assert_close(a, b)
