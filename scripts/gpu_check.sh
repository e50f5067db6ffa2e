#!/usr/bin/env bash
# The GPU checks of the fused path in one run (docs/speed.md, "On a GPU"), for a CUDA machine that already
# has torch, triton and pytest: nothing is installed, the library is read from src/ (the C++ kernel is
# not built, CPU tensors take the pure-PyTorch twin). Writes to $OUT (the device tool's folder) or to
# ./gpu_check:
#   machine.txt   torch, triton, the GPU
#   tests.log     tests/nn/test_triton.py compiled on CUDA tensors (every option, float32/float64, half
#                 precision, gradcheck), tests/nn/test_fused.py's CUDA tests and its CPU fast lane
#   bench.txt     scripts/benchmark.py --device cuda against cuDNN's nn.LSTM, float32 and bfloat16,
#   bench.json    training and inference at medium and large, streaming
# Each part has its own time limit (4 + 3 min), so that a 15-minute device lease leaves time to rerun;
# a part that runs out keeps what it wrote. Exit status: the tests' (the benchmark's if they passed).
#
#     bash scripts/gpu_check.sh            # from the checkout's root
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/gpu_check}
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

$python -c "
import torch, triton
print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)
print('gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')
" 2>&1 | tee "$out/machine.txt"
$python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu_check.sh: no CUDA device: nothing to check here (tests/nn/test_triton.py runs the kernels in" \
         "Triton's interpreter on CPU instead)" >&2
    exit 2
}

timeout 240 $python -m pytest -q -p no:cacheprovider -m "not slow" tests/nn/test_triton.py tests/nn/test_fused.py \
    2>&1 | tee "$out/tests.log"
tests=${PIPESTATUS[0]}

timeout 180 $python scripts/benchmark.py --device cuda --dtypes float32,bfloat16 --shapes medium,large,stream \
    --modes train,infer --impls nn.LSTM,auto/diagonal,auto/full,fused-torch/diagonal --repeats 5 \
    --json "$out/bench.json" 2>&1 | tee "$out/bench.txt"
bench=${PIPESTATUS[0]}

[ "$tests" -ne 0 ] && exit "$tests"
exit "$bench"
