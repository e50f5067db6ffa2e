"""The fast lane (`python -m pytest -m "not slow"`, docs/testing.md) stays fast and still covers every
area: a test that starts a process must be marked slow, and the child processes get the one environment
of tests/helpers/scripts.py."""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest
import torch

from tests.helpers.scripts import ROOT, SRC, run_script, script_env, start_script

TESTS = ROOT / "tests"
STARTS_A_PROCESS = {"run", "Popen", "call", "check_call", "check_output"}  # subprocess.<these>


def test_a_test_not_marked_slow_cannot_start_a_process():
    # This test is not marked slow: the helpers refuse before anything starts, naming the test.
    for start in (run_script, start_script):
        with pytest.raises(pytest.fail.Exception, match=r"test_markers\.py::test_a_test_not_marked_slow.*"
                                                        r"mark it @pytest\.mark\.slow"):
            start("-c", "raise SystemExit(3)")


def _marked_slow(tree: ast.Module) -> bool:
    """Whether the module's `pytestmark` (one mark or a list) holds pytest.mark.slow."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            return "pytest.mark.slow" in ast.unparse(node.value)
    return False


def test_modules_that_start_processes_themselves_are_marked_slow():
    """A test module that calls subprocess directly (a SLURM command, a TensorBoard server) rather than
    through run_script, which checks the marker itself, carries a module-wide slow mark."""
    starters = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        if calls & {f"subprocess.{name}" for name in STARTS_A_PROCESS}:
            starters[path.relative_to(ROOT).as_posix()] = _marked_slow(tree)
    assert "tests/sweeps/test_slurm_cluster.py" in starters  # the check sees what it is meant to see
    assert [name for name, slow in starters.items() if not slow] == []


def test_tests_run_on_one_intra_op_thread_unless_they_ask_for_all(request):
    """The session's switch (tests/conftest.py) that keeps tiny-tensor tests from waiting on OpenMP peers."""
    assert torch.get_num_threads() == 1
    assert request.getfixturevalue("all_threads") == torch.get_num_threads() >= 1


def test_child_environment(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    for leak in ("LOCAL_RANK", "SLURM_JOB_ID", "WANDB_API_KEY", "HYDRA_FULL_ERROR"):
        monkeypatch.setenv(leak, "1")
    monkeypatch.setenv("WANDB_MODE", "online")
    env = script_env(pythonpath=["/callbacks"])
    assert env["PYTHONPATH"].split(os.pathsep) == ["/callbacks", str(SRC), "/elsewhere"]  # this checkout's code first
    assert env["WANDB_MODE"] == "offline"
    assert not {"LOCAL_RANK", "SLURM_JOB_ID", "WANDB_API_KEY", "HYDRA_FULL_ERROR"} & set(env)
    assert script_env(full_error=True)["HYDRA_FULL_ERROR"] == "1"


@pytest.mark.slow
def test_a_child_runs_this_checkouts_code(monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # as in a fresh shell: only the venv's install
    proc = run_script("-c", "import peephole_lstm, os; print(peephole_lstm.__file__, os.environ['WANDB_MODE'])")
    assert proc.returncode == 0, proc.stderr
    path, mode = proc.stdout.split()
    assert Path(path).is_relative_to(SRC) and mode == "offline"


@pytest.mark.slow
def test_the_fast_lane_covers_every_area():
    """`-m "not slow"` collects tests in every folder of tests/ (it is a lane, not a deselection of
    everything), and none of them is one that starts a process."""
    proc = run_script("-m", "pytest", "--collect-only", "-q", "-m", "not slow", "-p", "no:cacheprovider", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fast = [line for line in proc.stdout.splitlines() if "::" in line]
    areas = {Path(line.split("::")[0]).parent.as_posix() for line in fast}
    folders = {p.parent.relative_to(ROOT).as_posix() for p in TESTS.rglob("test_*.py")}
    assert folders - areas == set()
    for slow_module in ("test_scripts.py", "test_errors_first.py", "test_slurm_cluster.py", "test_experiments.py"):
        assert not [line for line in fast if f"/{slow_module}::" in line]
    total = re.search(r"(\d+)/(\d+) tests collected \((\d+) deselected\)", proc.stdout)
    assert total and int(total.group(1)) > int(total.group(3)), proc.stdout[-500:]  # most of the suite is fast
