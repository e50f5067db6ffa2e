"""The sweeps read run directories without importing the training code (Lightning and all): checked in a
fresh interpreter, as the modules a test session imported would hide it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a fresh interpreter


def test_sweeps_read_run_dirs_without_the_training_code():
    code = ("import sys, peephole_lstm.rundir, peephole_lstm.sweeps.jobs, peephole_lstm.sweeps.launcher, "
            "peephole_lstm.sweeps.report; "
            "print(sorted(m for m in sys.modules if m.startswith(('peephole_lstm.training', 'lightning'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
