"""What the tests share, imported as normal modules (`from tests.helpers.scripts import run_script`):

- scripts.py: the one way a test starts this checkout's train.py, eval.py or scripts/*.py as a process,
  with one environment policy, and readers for what those runs leave behind;
- configs.py: Hydra composition in-process (the config `python train.py overrides...` would get) and
  the tiny-run override lists;
- classify_data.py, chromium.py: a toy classification datamodule, a headless Chromium driver.

Fixtures stay in the conftest.py files; a test that starts a process is marked `slow` (tests/conftest.py
enforces it, docs/testing.md explains the fast lane).
"""
