"""TensorBoard as the offline dashboard: the event files of a real run read back with TensorBoard's own
reader hold every scalar of every stage (points counted per metric), the forecast plot as an image,
and the HParams records (the run's arms and its final metrics)."""
from __future__ import annotations

import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from peephole_lstm.training import train  # noqa: E402
from peephole_lstm.training.loggers import run_hparams  # noqa: E402
from tests.helpers.configs import FAST, compose_config  # noqa: E402
from tests.helpers.scripts import results  # noqa: E402

EPOCHS = 3


def _read(run_dir):
    files = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return files, events


def test_every_stage_every_scalar_the_plot_and_the_hparams_are_kept(tmp_path):
    fast = [o for o in FAST if o != "trainer.max_epochs=1"]
    cfg = compose_config("train", ["logger=tensorboard", *fast, f"trainer.max_epochs={EPOCHS}", "data.length=300"],
                         output_dir=tmp_path)
    train(cfg)
    res = results(tmp_path)
    files, events = _read(tmp_path)
    assert len(files) == 1, files  # one writer for fit, validate and test: nothing overwritten

    scalars = events.Tags()["scalars"]
    points = {tag: len(events.Scalars(tag)) for tag in scalars}
    assert points["train/loss"] == EPOCHS
    # one point per training epoch, plus the final validation of the best checkpoint
    for tag in ("val/loss", "val/mse", "val/mae", "val/nrmse"):
        assert points[tag] == EPOCHS + 1, (tag, points)
    for tag in ("test/loss", "test/mse", "test/mae", "test/nrmse"):
        assert points[tag] == 1, (tag, points)
    # the final metrics, exactly as results.json has them
    for key, value in res["metrics"].items():
        (point,) = events.Scalars(f"final/{key}")
        assert point.value == pytest.approx(value, rel=1e-6), key
    assert events.Scalars("test/nrmse")[0].value == pytest.approx(res["metrics"]["test/nrmse"], rel=1e-6)

    (image,) = events.Images("plots/test_forecast")
    assert image.encoded_image_string[:4] == b"\x89PNG" and image.width > 100 and image.height > 100

    # HParams plugin: the experiment (columns), the session start (this run's values) and its end
    content = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(content)
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert values["model.peephole"] == "diagonal"
    assert values["seed"] == 0 and values["model.variant"] == "null" and values["data"] == "mackey_glass"
    assert values["trainer.max_epochs"] == EPOCHS  # an override is an arm too
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {f"final/{k}" for k in res["metrics"]}


def test_run_hparams_are_the_arms_and_the_overrides():
    cfg = compose_config("train", ["model.variant=CIFG", "seed=2", "data=timing", "tags=[a,b]"])
    hparams = run_hparams(cfg, ["model.variant=CIFG", "seed=2", "data=timing", "tags=[a,b]"])
    assert run_hparams(cfg, [], {"data": "timing"})["data"] == "timing"
    assert run_hparams(cfg)["data"] == "TimingDataModule"  # outside Hydra: the datamodule's class
    assert hparams["model.variant"] == "CIFG" and hparams["seed"] == 2
    assert hparams["data"] == "timing" and hparams["tags"] == "['a', 'b']"  # the group's option name
    assert all(isinstance(v, (bool, int, float, str)) for v in hparams.values())
