"""Config composition for every group option, and the schema errors a typo must produce before training."""
from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from peephole_lstm.training.checks import check_schema_keys, check_targets
from peephole_lstm.training.errors import ConfigError
from peephole_lstm.training.schema import TrainConfig
from tests.helpers.configs import CONF, compose_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


GROUPS = ["model", "trainer", "logger", "callbacks", "debug", "recipe", "experiment", "paths", "extras"]


def test_every_group_has_options():
    for group in GROUPS + ["data"]:
        assert options(group), group
    assert {"cpu", "gpu", "ddp", "ddp_cpu"} <= set(options("trainer"))
    assert {"wandb", "csv", "tensorboard", "none"} <= set(options("logger"))


# Hydra reads the config tree again for each composition (a third of a second): the fast lane
# (docs/testing.md) composes every model and experiment, and in the other groups the option that sets
# the most (callbacks=default includes most single-callback files; trainer=ddp_cpu the
# strategy); every other file is composed in the full suite.
LANE_OPTIONS = {"model": None, "experiment": None, "recipe": None, "trainer": {"ddp_cpu"}, "callbacks": {"default"}}


def _lane(group: str, option: str):
    fast = group in LANE_OPTIONS and (LANE_OPTIONS[group] is None or option in LANE_OPTIONS[group])
    return pytest.param(group, option, marks=() if fast else pytest.mark.slow)


@pytest.mark.parametrize("group, option", [_lane(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group, option, tmp_path):
    cfg = compose_config("train", [f"{group}={option}"], output_dir=tmp_path)
    assert cfg.model.arch.name in ("peephole", "lstm", "gru")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    for key in ("trainer", "callbacks", "logger"):
        if cfg[key]:
            check_targets(cfg[key], key)


# The fast lane composes each datamodule class once and one of the five gers_* task files (each of them
# extends data=timing); the full suite composes every file.
@pytest.mark.parametrize("option", [pytest.param(o, marks=pytest.mark.slow if o.startswith("gers_") and o != "gers_msd" else ())
                                    for o in options("data") if o != "csv"])
def test_every_data_option_composes_and_checks_against_its_constructor(option):
    cfg = compose_config("train", [f"data={option}"])
    assert cfg.data._target_.startswith("peephole_lstm.data.")
    check_targets(cfg.data, "data")


@pytest.mark.parametrize("recipe, lr, epochs", [("gers_gts", 5e-4, 192), ("gers_msd_fine", 3e-3, 96)])
def test_a_recipe_is_its_dataset_with_its_budget_and_the_command_line_still_wins(recipe, lr, epochs):
    cfg = compose_config("train", [f"recipe={recipe}"])
    assert cfg.data == compose_config("train", [f"data={recipe}"]).data
    assert (cfg.model.lr, cfg.trainer.max_epochs) == (lr, epochs)
    cfg = compose_config("train", [f"recipe={recipe}", "model.lr=0.1", "trainer.max_epochs=2", "data=timing"])
    assert (cfg.model.lr, cfg.trainer.max_epochs, cfg.data.task) == (0.1, 2, "msd")
    # an experiment keeps the recipe's budget (experiments set the model, recipes the budget)
    cfg = compose_config("train", ["experiment=gers_timing", f"recipe={recipe}", "hydra.mode=RUN"])
    assert (cfg.model.lr, cfg.trainer.max_epochs, cfg.model.hidden_size) == (lr, epochs, 32)


def test_default_is_the_mackey_glass_showcase():
    cfg = compose_config("train")
    assert cfg.data._target_ == "peephole_lstm.data.MackeyGlassDataModule"
    assert cfg.model.arch.name == "peephole" and cfg.model.peephole.name == "diagonal"
    assert list(cfg.logger) == ["wandb"] and cfg.trainer.accelerator == "cpu"
    assert cfg.optimized_metric == "val/loss" and cfg.test is True
    assert set(cfg.callbacks) >= {"model_checkpoint", "prediction_plot"}
    # last.ckpt has a single writer that saves every epoch (resume); model_checkpoint keeps the best
    assert cfg.callbacks.model_checkpoint.save_last is False
    assert cfg.callbacks.last_checkpoint._target_ == "peephole_lstm.training.callbacks.LastCheckpoint"


def test_eval_config_requires_ckpt_path():
    cfg = compose_config("eval")
    assert OmegaConf.is_missing(cfg, "ckpt_path")
    assert compose_config("eval", ["ckpt_path=x.ckpt"]).ckpt_path == "x.ckpt"


def test_debug_configs_override_the_trainer():
    assert compose_config("train", ["debug=fdr"]).trainer.fast_dev_run is True
    assert compose_config("train", ["debug=overfit"]).trainer.overfit_batches == 3
    assert compose_config("train", ["trainer=ddp_cpu"]).trainer.strategy == "ddp"


# The fast lane: one typo of each kind (a choice, the arch, a type, an unknown key); the full suite all.
@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.peephole=diagnol", ["model.peephole", "none", "diagonal", "full"]),
        ("model.arch=transformer", ["model.arch", "peephole", "lstm", "gru"]),
        pytest.param("model.variant=CIFGG", ["model.variant", "vanilla", "CIFG", "FGR"], marks=pytest.mark.slow),
        pytest.param("model.output_peephole=next", ["model.output_peephole", "current", "previous"], marks=pytest.mark.slow),
        ("model.hidden_size=big", ["model.hidden_size", "Integer"]),
        pytest.param("model.bidirectional=maybe", ["model.bidirectional", "not a valid bool"], marks=pytest.mark.slow),
        pytest.param("model.hiden_size=3", ["hiden_size"], marks=pytest.mark.slow),
        ("seeed=1", ["seeed"]),
    ],
)
def test_typos_fail_at_composition_naming_key_and_allowed_values(override, expected):
    with pytest.raises(ConfigCompositionException) as err:
        compose_config("train", [override])
    message = str(err.value) + str(err.value.__cause__)
    for text in expected:
        assert text in message


@pytest.mark.parametrize(
    "override, key, suggestion",
    [
        ("+trainer.max_epoch=3", "trainer.max_epoch", "max_epochs"),
        pytest.param("+data.windw=3", "data.windw", "window", marks=pytest.mark.slow),
        pytest.param("+callbacks.model_checkpoint.monitr=x", "callbacks.model_checkpoint.monitr", "monitor",
                     marks=pytest.mark.slow),
        ("+model.optimizer.weight_decy=0.1", "model.optimizer.weight_decy", "weight_decay"),  # a partial's arguments
    ],
)
def test_unknown_constructor_arguments_are_named_with_suggestions(override, key, suggestion):
    cfg = compose_config("train", [override])
    group = key.split(".")[0]
    node = cfg.model.optimizer if group == "model" else cfg[group]
    prefix = "model.optimizer" if group == "model" else group
    with pytest.raises(ConfigError, match=rf"{key} is not an argument .*did you mean {suggestion}"):
        check_targets(node, prefix)


@pytest.mark.parametrize("override, key", [("+model.hiden_size=3", "model.hiden_size"),
                                           pytest.param("+seeed=1", "seeed", marks=pytest.mark.slow),
                                           pytest.param("+extras.print_cfg=true", "extras.print_cfg", marks=pytest.mark.slow)])
def test_keys_added_with_plus_are_rejected_by_the_schema_check(override, key):
    cfg = compose_config("train", [override])  # `+` opens the struct flag, so composition accepts it
    with pytest.raises(ConfigError, match=rf"{key} is not a known key"):
        check_schema_keys(cfg, TrainConfig)
    check_schema_keys(compose_config("train"), TrainConfig)
