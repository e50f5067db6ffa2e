"""Fixtures of the framework tests (their helpers: tests/helpers/configs.py and scripts.py)."""
from __future__ import annotations

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None  # an in-process run's job config must not leak into later tests
