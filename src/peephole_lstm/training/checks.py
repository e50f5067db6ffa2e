"""Check `_target_` config nodes against their constructors' signatures before anything is built.

Hydra's schema cannot know the arguments of an arbitrary class (a datamodule, the Trainer, a callback),
so a typo such as `trainer.max_epoch=3` would otherwise surface as a TypeError deep in instantiation,
possibly after the data is loaded. This names the key and the closest valid ones instead.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any, Mapping

from hydra.utils import get_method
from omegaconf import DictConfig, ListConfig

from peephole_lstm.training.errors import ConfigError


def _parameters(target: str, key: str) -> tuple[set[str], bool]:
    try:
        obj = get_method(target)
    except Exception as e:  # hydra wraps import errors in its own exception types
        raise ConfigError(f"{key}._target_={target!r} cannot be imported: {e}") from None
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return set(), True
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    names = {n for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names, takes_any


def check_targets(node: Any, key: str) -> None:
    """Raise ConfigError for a key of any `_target_` node under `node` that its target does not accept."""
    if isinstance(node, (DictConfig, Mapping)):
        target = node.get("_target_")
        if target is not None:
            allowed, takes_any = _parameters(str(target), key)
            for name in node.keys():
                name = str(name)
                if name.startswith("_") or takes_any or name in allowed:
                    continue
                close = difflib.get_close_matches(name, sorted(allowed), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(
                    f"{key}.{name} is not an argument of {target}{hint} Allowed: {', '.join(sorted(allowed))}"
                )
        for name in node.keys():
            value = node._get_node(name) if isinstance(node, DictConfig) else node[name]
            if isinstance(value, (DictConfig, ListConfig, Mapping, list)):
                check_targets(value, f"{key}.{name}")
    elif isinstance(node, (ListConfig, list)):
        for i, value in enumerate(node):
            check_targets(value, f"{key}[{i}]")


def check_schema_keys(node: DictConfig, schema: type, key: str = "") -> None:
    """Reject keys that a dataclass schema does not define, including ones added with Hydra's `+key=`
    (which opens the struct flag and so bypasses OmegaConf's own check)."""

    fields = {f.name: f for f in dataclasses.fields(schema)}
    for name in node.keys():
        full = f"{key}.{name}" if key else str(name)
        if name not in fields:
            close = difflib.get_close_matches(str(name), sorted(fields), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{full} is not a known key{hint} Allowed: {', '.join(sorted(fields))}")
        sub = node._get_node(name)
        if isinstance(sub, DictConfig) and dataclasses.is_dataclass(sub._metadata.object_type):
            check_schema_keys(sub, sub._metadata.object_type, full)
