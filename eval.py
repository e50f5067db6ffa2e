"""Evaluate a checkpoint on its test split: `python eval.py ckpt_path=outputs/.../checkpoints/last.ckpt`."""
import hydra
from omegaconf import DictConfig

from peephole_lstm.training.schema import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig):
    from peephole_lstm.training.errors import reported
    from peephole_lstm.training.run import evaluate  # Lightning, W&B: loaded once the config is valid

    with reported():  # a config or data mistake: one message, no traceback (HYDRA_FULL_ERROR=1 shows it)
        return evaluate(cfg)


if __name__ == "__main__":
    main()
