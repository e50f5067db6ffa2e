#!/usr/bin/env bash
# One command from a fresh clone to a first result: creates (or reuses) .venv, installs the right torch
# build, the package with its C++ kernel and the training/test/export extras, then runs the showcase.
#
#   ./scripts/setup.sh                  set up (idempotent) and run `python train.py`
#   ./scripts/setup.sh --no-showcase    set up only
#
# Environment (all optional):
#   PYTHON                        interpreter for the venv (python3; needs >= 3.10)
#   PEEPHOLE_LSTM_VENV            where the venv lives (.venv in the repository root)
#   PEEPHOLE_LSTM_TORCH           torch requirement (torch==2.13.0, the version the project is tested on)
#   PEEPHOLE_LSTM_TORCH_INDEX     index for torch: a URL, or "default" for pip's configured index.
#                                 Unset: the CPU-only wheels (download.pytorch.org/whl/cpu) on Linux
#                                 without an NVIDIA GPU (nvidia-smi), else pip's index (CUDA build).
#   PEEPHOLE_LSTM_NO_EXTENSION=1  install without the C++ kernel (pure-PyTorch fused path) instead of
#                                 failing when it does not compile
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${PEEPHOLE_LSTM_VENV:-$ROOT/.venv}
SHOWCASE=1
for arg in "$@"; do
    case "$arg" in
        --no-showcase) SHOWCASE=0 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown argument '$arg' (allowed: --no-showcase, --help)" >&2; exit 2 ;;
    esac
done
say() { printf '\n==> %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    PY=${PYTHON:-python3}
    command -v "$PY" >/dev/null || { echo "setup.sh: '$PY' not found; install Python >= 3.10 or set PYTHON" >&2; exit 1; }
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || { echo "setup.sh: $("$PY" --version 2>&1) is too old; Python >= 3.10 is needed (set PYTHON)" >&2; exit 1; }
    say "creating the virtualenv $VENV"
    "$PY" -m venv "$VENV"
else
    say "reusing the virtualenv $VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
PIP="python -m pip -q"

TORCH_REQ=${PEEPHOLE_LSTM_TORCH:-torch==2.13.0}
# find_spec looks for a package without importing it (importing torch takes seconds).
have() { python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" "$@"; }
if have torch && [ -z "${PEEPHOLE_LSTM_TORCH:-}" ]; then
    say "torch already installed (set PEEPHOLE_LSTM_TORCH to install another version)"
else
    INDEX=${PEEPHOLE_LSTM_TORCH_INDEX-}
    if [ -z "$INDEX" ]; then
        # A bare `pip install torch` on Linux pulls the multi-GB CUDA build; without a GPU the CPU
        # wheels do the same work.
        if [ "$(uname -s)" = Linux ] && ! nvidia-smi -L >/dev/null 2>&1; then
            INDEX=https://download.pytorch.org/whl/cpu
        else
            INDEX=default
        fi
    fi
    $PIP install --upgrade pip
    if [ "$INDEX" = default ]; then
        say "installing $TORCH_REQ from pip's index"
        $PIP install "$TORCH_REQ"
    else
        say "installing $TORCH_REQ from $INDEX"
        $PIP install "$TORCH_REQ" --index-url "$INDEX"
    fi
fi

# The editable install compiles the kernel (a minute or two); skip it when nothing it depends on changed.
STAMP="$VENV/.peephole-lstm-installed"
STATE=$( { cat setup.py pyproject.toml src/peephole_lstm/nn/csrc/*; echo "${PEEPHOLE_LSTM_NO_EXTENSION:-}${PEEPHOLE_LSTM_PORTABLE:-}"; } | python -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STATE" ] && have peephole_lstm lightning pytest tensorboard websocket onnxruntime sklearn music21; then
    say "peephole-lstm already installed (sources unchanged)"
else
    say "installing peephole-lstm with its C++ kernel and the [train,dev,export] extras"
    $PIP install "setuptools>=77" wheel numpy  # numpy: torch warns at build time without it
    # No build isolation: setup.py compiles the kernel against the torch installed above.
    $PIP install --no-build-isolation -e ".[train,dev,export]"
    echo "$STATE" > "$STAMP"
fi
python - <<'PY'
import os, sys
import torch
import peephole_lstm
from peephole_lstm.nn import fused
print(f"peephole-lstm {peephole_lstm.__version__}, torch {torch.__version__}, C++ kernel: {fused.extension_available()}")
if not fused.extension_available() and os.environ.get("PEEPHOLE_LSTM_NO_EXTENSION") != "1":
    sys.exit("setup.sh: the fused C++ kernel was built but does not import; see the messages above")
PY

if [ "$SHOWCASE" = 1 ]; then
    say "the showcase: python train.py (peephole LSTM on Mackey-Glass, about 20 s)"
    python train.py
    say "done. Activate the environment with: . $VENV/bin/activate"
fi
