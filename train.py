"""Train a model: `python train.py [overrides]` (see docs/configuration.md)."""
from peephole_lstm.training.ddp import rewrite_child_argv

rewrite_child_argv()  # DDP ranks > 0 join rank 0's job; must run before Hydra parses argv

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from peephole_lstm.training.schema import register_configs  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig):
    from peephole_lstm.training.errors import reported
    from peephole_lstm.training.run import train  # Lightning, W&B: loaded once the config is valid

    with reported():  # a config or data mistake: one message, no traceback (HYDRA_FULL_ERROR=1 shows it)
        return train(cfg)


if __name__ == "__main__":
    main()
