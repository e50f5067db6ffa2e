"""NaN/Inf in the loss, a gradient or the weights stops training with an error that names the epoch, the
global step and what went non-finite, before the weights or a checkpoint are poisoned."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from peephole_lstm.training.callbacks import FiniteGuard, NonFiniteError
from tests.helpers.configs import TINY_CSV
from tests.helpers.scripts import csv_rows, results, run_script

# The learning rate jumps by 1e30 after the first epoch (a real scheduler config): the first epoch trains
# and checkpoints normally, the second one blows the weights up.
EXPLODE = ["model.scheduler._target_=torch.optim.lr_scheduler.StepLR", "~model.scheduler.T_max",
           "+model.scheduler.step_size=1", "+model.scheduler.gamma=1e30", "trainer.max_epochs=3"]


@pytest.mark.slow
def test_a_run_whose_loss_blows_up_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = run_script("train.py", *TINY_CSV, *EXPLODE, f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode != 0
    message = "non-finite loss (inf) at epoch 1, global step"
    assert message in proc.stderr
    assert "gradient_clip_val" in proc.stderr and "model.cell_clip" in proc.stderr
    res = results(run)
    assert res["status"] == "failed" and message in res["error"] and "NonFiniteError" in res["error"]

    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0  # the epoch that trained normally
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())
    assert {r["epoch"] for r in csv_rows(run)} == {"0"}  # nothing was logged from the poisoned epoch


class Tiny(pl.LightningModule):
    """A linear regression plus a penalty sqrt(|p|) whose gradient at p=0 is NaN while the loss is finite."""

    def __init__(self, with_nan_gradient: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.penalty = nn.Parameter(torch.zeros(2))
        self.with_nan_gradient = with_nan_gradient

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.linear(x), y)
        return loss + self.penalty.abs().sqrt().sum() if self.with_nan_gradient else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path, **kw) -> pl.Trainer:
    return pl.Trainer(default_root_dir=tmp_path, callbacks=[FiniteGuard()], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, **kw)


def _loader():
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g)), batch_size=4)


def test_a_non_finite_gradient_names_the_parameter_and_the_update_is_not_applied(tmp_path):
    model = Tiny(with_nan_gradient=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"non-finite gradient of penalty \(2 NaN of 2 values\) at epoch 0, "
                                             r"global step 0"):
        _trainer(tmp_path, max_epochs=1).fit(model, _loader())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_checkpoint_with_non_finite_weights_is_not_written(tmp_path):
    model = Tiny(with_nan_gradient=False)
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, _loader())  # all finite: trains and saves normally
    good = tmp_path / "good.ckpt"
    trainer.save_checkpoint(good)
    with torch.no_grad():
        model.linear.weight[0, 1] = float("inf")
    with pytest.raises(NonFiniteError, match=r"non-finite weight linear.weight \(1 Inf of 3 values\).*"
                                             r"the checkpoint was not written"):
        trainer.save_checkpoint(tmp_path / "poisoned.ckpt")
    assert not (tmp_path / "poisoned.ckpt").exists()
    assert torch.isfinite(torch.load(good, weights_only=True)["state_dict"]["linear.weight"]).all()
