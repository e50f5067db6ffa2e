#!/usr/bin/env bash
# The full test suite in the environment scripts/setup.sh made: `python -m pytest -q` inside .venv.
# Arguments go to pytest (e.g. ./scripts/test.sh tests/nn -x). Sets the environment up first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PEEPHOLE_LSTM_VENV:-$(pwd)/.venv}
./scripts/setup.sh --no-showcase
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export WANDB_MODE=${WANDB_MODE:-offline}  # the tests never touch the network
# --durations=25: the slowest tests at the end of the output, to see where the time goes (docs/testing.md).
exec python -m pytest -q --durations=25 "$@"
