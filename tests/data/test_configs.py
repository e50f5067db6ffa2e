"""conf/data/*.yaml are `_target_` + every constructor argument with its Python default."""
import inspect
from pathlib import Path

import pytest
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from peephole_lstm.data import TaskSpec

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"
SELF_CONTAINED = ["mackey_glass", "timing", "chars", "digits"]


@pytest.mark.parametrize("name", ["mackey_glass", "timing", "csv", "chars", "digits", "jsb_chorales"])
def test_config_lists_every_argument_with_its_default(name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    params = inspect.signature(get_class(cfg._target_).__init__).parameters
    args = {k: p.default for k, p in params.items() if k != "self"}
    keys = [k for k in cfg if k != "_target_"]
    assert sorted(keys) == sorted(args)
    for key in keys:
        if OmegaConf.is_missing(cfg, key):  # required in the config, so the Python default is None
            assert args[key] is None
        else:
            assert cfg[key] == args[key], key


@pytest.mark.parametrize("name", SELF_CONTAINED)
def test_default_config_instantiates_and_validates(name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    if name == "chars":
        cfg.max_chars = 50_000  # the full corpus is fine, just slower
    dm = instantiate(cfg)
    assert isinstance(dm.spec, TaskSpec)
    x, y = next(iter(dm.train_dataloader()))
    assert len(x) == cfg.batch_size
