"""TensorBoard on a finished sweep, looked at in a real headless Chromium: `tensorboard --logdir` on a
loopback port, then the Scalars and HParams dashboards must show the sweep's runs, their curves'
tags, the arms (model.peephole) and the final metrics. Skipped where Chromium is not installed (CI
installs Debian's `chromium`). Set PEEPHOLE_LSTM_SCREENSHOTS=<dir> to keep the screenshots
(docs/img/ holds the ones in docs/configuration.md)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")
pytest.importorskip("websocket")
from tests.helpers.chromium import Browser, chromium_binary  # noqa: E402
from tests.helpers.configs import FAST  # noqa: E402
from tests.helpers.scripts import run_script  # noqa: E402

pytestmark = [pytest.mark.skipif(chromium_binary() is None, reason="needs chromium (apt-get install chromium)"),
              pytest.mark.slow]  # a two-job multirun, a TensorBoard server and a browser

SWEEP = ["-m", "logger=tensorboard", "model.peephole=none,full", "data=timing", "data.n_train=32", "data.n_val=16",
         "data.n_test=16", "data.seq_len=20", "data.delay_min=2", "data.delay_max=10", "model.hidden_size=4",
         *(o for o in FAST if o != "trainer.max_epochs=1"), "trainer.max_epochs=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """A finished two-job sweep and a TensorBoard serving it on 127.0.0.1; yields its URL."""
    cwd = tmp_path_factory.mktemp("dashboard")
    proc = run_script("train.py", *SWEEP, f"hydra.sweep.dir={cwd / 'sweep'}", cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    port = _free_port()
    tensorboard = shutil.which("tensorboard", path=str(Path(sys.executable).parent)) or "tensorboard"
    server = subprocess.Popen([tensorboard, "--logdir", str(cwd / "sweep"), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:  # up once it lists both runs
            try:
                with urllib.request.urlopen(f"{url}/data/runs", timeout=10) as response:
                    if len(json.load(response)) == 2:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "tensorboard did not come up"
            time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _keep(browser: Browser, name: str, tmp_path: Path) -> None:
    path = browser.screenshot(tmp_path / name)
    assert path.read_bytes()[:4] == b"\x89PNG"
    keep = os.environ.get("PEEPHOLE_LSTM_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)


def test_scalars_and_hparams_dashboards_show_the_sweep(dashboard, tmp_path):
    with Browser(width=1400, height=900, timeout=240) as browser:
        text = browser.open(f"{dashboard}/#scalars&tagFilter=nrmse%7Ctrain%2Floss",
                            ["0/tensorboard", "1/tensorboard", "train/loss", "val/nrmse", "test/nrmse"])
        assert "final/test/nrmse" in text
        time.sleep(5)  # let the charts draw for the screenshot
        _keep(browser, "tensorboard_scalars.png", tmp_path)

        # the HParams table: one row per job, the arm that differs, and the final metrics as columns
        # rows: trial, then the columns data, model.peephole, model.variant (the table fills in after its header)
        browser.open(f"{dashboard}/#hparams", ["Trial ID", "model.peephole", "seed", "final/test/nrmse",
                                               "0/tensorboard timing none null", "1/tensorboard timing full null"])
        _keep(browser, "tensorboard_hparams.png", tmp_path)

        browser.open(f"{dashboard}/#images", ["plots/test_forecast"])
