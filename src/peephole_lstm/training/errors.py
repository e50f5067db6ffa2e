"""User-facing errors: a config or data mistake prints one clear message first, and no traceback.

Hydra prints a traceback for any exception a task raises, after a line "Error executing job with
overrides: [...]". `train.py` and `eval.py` run their task inside `reported()`, which catches the errors
that describe a mistake of the user (a key, a value, a file, a checkpoint): a single run prints the
message and exits with status 1; a multirun job raises it as Hydra's `CompactHydraException`, of which
Hydra prints only the message, so the other jobs still run. Any other exception is a bug or a failure
of the run and keeps its traceback; HYDRA_FULL_ERROR=1 keeps it for user errors too.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from typing import Any, Iterator

from hydra.errors import CompactHydraException, InstantiationException
from omegaconf import DictConfig, OmegaConf

from peephole_lstm.data.base import DataError

FULL_ERROR = "HYDRA_FULL_ERROR"


class ConfigError(ValueError):
    """A config value or key that cannot work; the message names the key and what is allowed.

    The base of every "your configuration is wrong" error: `ModelConfigError` (training/module.py, a
    `model.*` setting) and `CheckpointError` (training/checkpointing.py, a `ckpt_path`) derive from it.
    Mistakes in the data itself are `peephole_lstm.data.DataError` (the data package does not import
    the training code).
    """


# What `reported()` prints as one message: a mistake of the user, not a bug.
USER_ERRORS = (ConfigError, DataError)


class UserError(CompactHydraException):
    """A mistake in the config, the data or a checkpoint path; Hydra prints just this message."""


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Around a task function: user errors become one-message `UserError`s (unless HYDRA_FULL_ERROR=1)."""
    try:
        yield
    except USER_ERRORS as e:
        if os.environ.get(FULL_ERROR) == "1":
            raise
        message = f"Error: {e}"
        if _multirun():
            raise UserError(message) from None
        logging.getLogger(__name__).debug(message)  # into train.log (the console shows it below)
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _prefixed(key: str, node: Any, message: str) -> str:
    """'window=0 must be ...' from a datamodule -> 'data.window=0 must be ...' (the key the user sets)."""
    match = re.match(r"(\w+)=", message)
    if match and isinstance(node, DictConfig) and match.group(1) in node:
        return f"{key}.{message}"
    return f"{key}: {message}"


def instantiate(node: Any, key: str, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, with a constructor's argument error reported as a ConfigError naming `key`.

    Hydra wraps such errors in "Error in call to target ..." plus a traceback through its own frames;
    the message of the constructor (e.g. `window=0 must be an integer >= 1`) is what the user needs.
    """
    import hydra.utils
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, (DataError, ConfigError)):
            raise cause from None
        if isinstance(cause, (ValueError, MisconfigurationException)):
            raise ConfigError(_prefixed(key, node, str(cause))) from cause
        raise


def check_missing(cfg: DictConfig, choices: dict | None = None) -> None:
    """Name every required key (`???`) that was not set, with the command-line fix, before anything runs."""
    missing = [k for k in sorted(OmegaConf.missing_keys(cfg)) if not k.startswith("hydra.")]
    if not missing:
        return
    group = missing[0].split(".")[0]
    choice = (choices or {}).get(group)
    which = f" ({group}={choice})" if choice and all(k.startswith(f"{group}.") for k in missing) else ""
    verb = "is" if len(missing) == 1 else "are"
    example = " ".join(f"{k}=<value>" for k in missing)
    raise ConfigError(f"{', '.join(missing)} {verb} required but not set{which}; add {example} to the command line")

