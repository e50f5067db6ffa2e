#!/usr/bin/env python
"""Training, inference and streaming speed of PeepholeLSTM against torch.nn.LSTM and a naive loop.

    python scripts/benchmark.py                       # every shape, training and inference, table on stdout
    python scripts/benchmark.py --shapes small,medium --repeats 9 --json results.json
    python scripts/benchmark.py --quick               # a fast look (small + stream, 3 rounds)
    python scripts/benchmark.py --shapes 4x6x3x5 --impls nn.LSTM,auto/diagonal --json -
    python scripts/benchmark.py --modes infer --shapes medium,large
    python scripts/benchmark.py --device cuda --dtypes float32,bfloat16,float16 --impls nn.LSTM,auto/diagonal,fused-torch/diagonal

Modes: "train" is a training step, forward + backward of output.sum() over the whole sequence;
"infer" is one forward of the whole sequence under torch.inference_mode() with the module in eval
mode (what validation, test, predict and deployment run). Each round times every implementation once,
in rotating order, so the ratio to nn.LSTM is the median of ratios measured side by side in the same
process. On CUDA, nn.LSTM is cuDNN's LSTM and every timing ends with torch.cuda.synchronize(). "warm-up" is the first call of a fresh module (any
compilation included); its one-off part is the first call minus the second (the second call's own
work grows with T, the one-off part must not). On the long shape both are also measured at T=100.
The "stream" shape is inference with B=1, one step per call, carrying the state (ms per call), in
every mode. GFLOP/s counts the GEMM work only (3x the forward GEMMs for a training step). On a loaded shared host,
`--threads 1 --clock cpu` times with this process's CPU time, which leaves out the time other processes
hold the core (not their effect on the caches).
"torch.compile/..." is torch.compile(PeepholeLSTM(...), dynamic=True) (the fused layers as operators),
compiled cold (inductor's caches off), so its warm-up is the whole compilation of the model; inductor's
probe of the CPU's vector ISAs, which the first CPU compilation in a process runs whatever the model (it
builds a test library per ISA once per machine and cache directory), is timed before them and reported
as "inductor_isa_probe_s" in the machine line, not in a row; "+head" adds a per-step
MLP head (Linear, tanh, Linear to 1) to the module, the surrounding work inductor can fuse.
Allocator state matters: with glibc's default malloc, big buffers freed by one call come back as fresh
pages that fault on first touch in the next (nn.LSTM's workspace does; the fused kernel keeps its
buffers). To compare with nobody paging, run under
GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4000000000:glibc.malloc.trim_threshold=4000000000
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
from torch import nn

from peephole_lstm import PeepholeLSTM
from peephole_lstm.nn import fused
from peephole_lstm.nn.layer import _step_function

SHAPES = {  # name: (B, T, input, hidden)
    "small": (32, 50, 8, 16),
    "medium": (64, 100, 32, 128),
    "large": (64, 200, 64, 512),
    "long": (16, 1000, 32, 128),
    "stream": (1, 200, 32, 128),  # 200 single-step calls
}
DEFAULT_IMPLS = ["nn.LSTM", "naive-loop", "auto/none", "auto/diagonal", "auto/full", "eager/diagonal"]
ALL_IMPLS = DEFAULT_IMPLS + [
    "script/diagonal", "compile/diagonal", "fused-torch/diagonal", "torch.compile/diagonal", "auto+head/diagonal",
    "torch.compile+head/diagonal", "triton/none", "triton/diagonal", "triton/full",
]
MODES = ("train", "infer")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


class NaiveLoop(nn.Module):
    """A diagonal-peephole LSTM as tutorials write it: eight small matmuls and the gate math per step."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        bound = hidden_size ** -0.5

        def p(*shape):
            return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))

        self.w_x = nn.ParameterList([p(input_size, hidden_size) for _ in range(4)])
        self.w_h = nn.ParameterList([p(hidden_size, hidden_size) for _ in range(4)])
        self.b = nn.ParameterList([p(hidden_size) for _ in range(4)])
        self.peep = nn.ParameterList([p(hidden_size) for _ in range(3)])
        self.hidden_size = hidden_size

    def step(self, x, h, c):
        wx, wh, b, p = self.w_x, self.w_h, self.b, self.peep
        i = torch.sigmoid(x @ wx[0] + h @ wh[0] + b[0] + p[0] * c)
        f = torch.sigmoid(x @ wx[1] + h @ wh[1] + b[1] + p[1] * c)
        g = torch.tanh(x @ wx[2] + h @ wh[2] + b[2])
        c = f * c + i * g
        o = torch.sigmoid(x @ wx[3] + h @ wh[3] + b[3] + p[2] * c)
        return o * torch.tanh(c), c

    def forward(self, x, state=None):
        if state is None:
            zeros = x.new_zeros(x.shape[1], self.hidden_size)
            state = (zeros, zeros)
        h, c = state[0].reshape(-1, self.hidden_size), state[1].reshape(-1, self.hidden_size)
        outputs = []
        for x_t in x:
            h, c = self.step(x_t, h, c)
            outputs.append(h)
        return torch.stack(outputs), (h.unsqueeze(0), c.unsqueeze(0))


class WithHead(nn.Module):
    """A layer and a per-step MLP head: pointwise work around the operator that inductor can fuse."""

    def __init__(self, lstm: nn.Module, hidden_size: int):
        super().__init__()
        self.lstm = lstm
        self.head = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1))

    def forward(self, x, state=None):
        out, state = self.lstm(x, state)
        return self.head(out), state


def make(impl: str, input_size: int, hidden_size: int) -> nn.Module:
    if impl == "nn.LSTM":
        return nn.LSTM(input_size, hidden_size)
    if impl == "naive-loop":
        return NaiveLoop(input_size, hidden_size)
    backend, peephole = impl.split("/")
    head = backend.endswith("+head")
    backend = backend.removesuffix("+head")
    whole_model = backend == "torch.compile"
    if backend == "fused-torch":  # the pure-PyTorch implementation of the fused algorithm, on CPU
        backend = "fused"
    if backend in ("compile", "torch.compile"):  # a fresh compilation, so that warm-up includes it
        torch._dynamo.reset()
        _step_function.cache_clear()
    module = PeepholeLSTM(input_size, hidden_size, peephole=peephole, backend="auto" if whole_model else backend)
    if head:
        module = WithHead(module, hidden_size)
    return torch.compile(module, dynamic=True) if whole_model else module


def path_of(impl: str, module: nn.Module) -> str:
    if impl == "nn.LSTM":
        return "aten lstm"
    if impl == "naive-loop":
        return "python loop"
    if impl.startswith("torch.compile"):
        return "inductor + fused op"
    return (module.lstm if isinstance(module, WithHead) else module).last_path


def gemm_flops(impl: str, batch: int, steps: int, input_size: int, hidden: int) -> float:
    """Forward GEMM FLOPs of one sequence: input and recurrent projections (+ full peephole matrices)."""
    per_step = 2 * batch * 4 * hidden * (input_size + hidden)
    if impl.endswith("/full"):
        per_step += 2 * batch * 3 * hidden * hidden
    return float(per_step * steps)


@dataclass
class Row:
    shape: str
    mode: str  # train | infer | stream
    device: str
    dtype: str
    B: int
    T: int
    input: int
    hidden: int
    impl: str
    path: str
    ms_per_step: float
    tokens_per_s: float
    gflops: float
    ratio_vs_lstm: Optional[float]
    warmup_s: float
    warmup_extra_s: float  # first call minus second call: the one-off cost (compilation, allocator, caches)
    warmup_T100_s: Optional[float] = None  # long shape only: the same at T=100, same B/input/hidden
    warmup_T100_extra_s: Optional[float] = None


class Bench:
    """One implementation on one shape and mode: a module, its input, and a timed call."""

    def __init__(self, impl: str, shape: str, dims, seed: int = 0, mode: str = "train", device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.impl, self.shape = impl, shape
        self.B, self.T, self.I, self.H = dims
        self.mode = "stream" if shape == "stream" else mode
        self.cuda = torch.device(device).type == "cuda"
        torch.manual_seed(seed)
        self.module = make(impl, self.I, self.H).to(device=device, dtype=dtype)
        self.stream = self.mode == "stream"
        if self.mode != "train":
            self.module.eval()
        if self.stream:
            self.x = torch.randn(self.T, 1, 1, self.I, device=device, dtype=dtype)
        else:
            self.x = torch.randn(self.T, self.B, self.I, device=device, dtype=dtype)

    def call(self) -> None:
        # "fused-torch/...": the pure-PyTorch implementation of the fused path, with the C++ kernel off.
        previous = fused.set_extension_enabled(not self.impl.startswith("fused-torch"))
        cold = contextlib.nullcontext()
        if self.impl.startswith("torch.compile"):
            import torch._inductor.config  # noqa: F401 - loaded only for these rows

            # a cold compilation each time a fresh module first runs (no on-disk cache hits)
            cold = torch._inductor.config.patch(force_disable_caches=True)
        try:
            with cold:
                self._call()
        finally:
            fused.set_extension_enabled(previous)

    def _call(self) -> None:
        if self.stream:
            with torch.inference_mode():
                state = None
                for x_t in self.x:
                    _, state = self.module(x_t, state)
            return
        if self.mode == "infer":
            with torch.inference_mode():
                self.module(self.x)
            return
        out, _ = self.module(self.x)
        out.sum().backward()
        for p in self.module.parameters():
            p.grad = None

    clock = staticmethod(time.perf_counter)  # main() sets time.process_time for --clock cpu

    def timed(self, inner: int) -> float:
        # As timeit does: no garbage collection inside a measurement, so that the Python objects one
        # implementation leaves behind (the naive loop's many small tensors) are not paid by the next.
        gc.collect()
        gc.disable()
        try:
            if self.cuda:
                torch.cuda.synchronize()
            start = self.clock()
            for _ in range(inner):
                self.call()
            if self.cuda:
                torch.cuda.synchronize()
            return (self.clock() - start) / inner
        finally:
            gc.enable()


def first_calls(impl: str, shape: str, dims, **kw) -> tuple[float, float]:
    """(first call, first minus second call) of a fresh module."""
    bench = Bench(impl, shape, dims, seed=1, **kw)
    first = bench.timed(1)
    return first, first - bench.timed(1)


def run_shape(shape: str, dims, impls, repeats: int, min_seconds: float, mode: str = "train", device: str = "cpu",
              dtype: str = "float32") -> list[Row]:
    B, T, I, H = dims
    mode = "stream" if shape == "stream" else mode
    kw = dict(mode=mode, device=device, dtype=DTYPES[dtype])
    warmups = {impl: first_calls(impl, shape, dims, **kw) for impl in impls}
    warm_t100 = {}
    if shape == "long":
        warm_t100 = {impl: first_calls(impl, shape, (B, 100, I, H), **kw) for impl in impls}
    benches = {impl: Bench(impl, shape, dims, **kw) for impl in impls}
    for bench in benches.values():
        bench.call()
    # Enough calls per measurement that each one lasts min_seconds (timer and scheduler noise).
    inner = {impl: max(1, int(min_seconds / max(b.timed(1), 1e-6))) for impl, b in benches.items()}
    times = {impl: [] for impl in impls}
    for r in range(repeats):
        order = impls[r % len(impls):] + impls[:r % len(impls)]
        for impl in order:
            times[impl].append(benches[impl].timed(inner[impl]))
    rows = []
    reference = times.get("nn.LSTM")
    for impl in impls:
        t = statistics.median(times[impl])
        ratio = None
        if reference is not None:
            ratio = statistics.median(a / b for a, b in zip(times[impl], reference))
        tokens = B * T if shape != "stream" else T
        flops = gemm_flops(impl, B, T, I, H) * (3 if mode == "train" else 1)
        per_call = t if shape != "stream" else t / T  # stream: per single-step call
        rows.append(Row(
            shape=shape, mode=mode, device=str(device), dtype=dtype, B=B, T=T, input=I, hidden=H, impl=impl,
            path=path_of(impl, benches[impl].module),
            ms_per_step=per_call * 1e3, tokens_per_s=tokens / t, gflops=flops / t / 1e9, ratio_vs_lstm=ratio,
            warmup_s=warmups[impl][0], warmup_extra_s=warmups[impl][1],
            warmup_T100_s=warm_t100[impl][0] if warm_t100 else None,
            warmup_T100_extra_s=warm_t100[impl][1] if warm_t100 else None,
        ))
    return rows


def parse_shapes(text: str):
    shapes = {}
    for name in text.split(","):
        name = name.strip()
        if name in SHAPES:
            shapes[name] = SHAPES[name]
            continue
        try:
            dims = tuple(int(v) for v in name.split("x"))
        except ValueError:
            dims = ()
        if len(dims) != 4 or min(dims) < 1:
            raise SystemExit(f"--shapes: unknown shape {name!r}; use {', '.join(SHAPES)} or BxTxINPUTxHIDDEN")
        shapes[name] = dims
    return shapes


def machine(device: str = "cpu") -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "fused_extension": fused.extension_available(),
        "loadavg_start": os.getloadavg()[0],
        # nn.LSTM's per-call workspace page-faults or not depending on the allocator (see docs/speed.md).
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "gpu": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def table(rows: list[Row]) -> str:
    head = (f"{'shape':<8} {'mode':<6} {'dtype':<8} {'impl':<28} {'path':<24} {'ms/call':>9} {'tokens/s':>10} "
            f"{'GFLOP/s':>8} {'vs LSTM':>8} {'warm-up s (one-off part)':>26}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r.ratio_vs_lstm:.2f}x" if r.ratio_vs_lstm is not None else "-"
        warm = f"{r.warmup_s:.3f} ({r.warmup_extra_s:+.3f})"
        if r.warmup_T100_s is not None:
            warm += f"; T=100: {r.warmup_T100_s:.3f} ({r.warmup_T100_extra_s:+.3f})"
        lines.append(f"{r.shape:<8} {r.mode:<6} {r.dtype:<8} {r.impl:<28} {r.path[:24]:<24} {r.ms_per_step:>9.3f} "
                     f"{r.tokens_per_s:>10.0f} {r.gflops:>8.2f} {ratio:>8} {warm:>26}")
    return "\n".join(lines)


def inductor_isa_probe_seconds() -> float:
    """Run inductor's per-process choice of the CPU vector ISA now (cached for the process after), so
    that the torch.compile rows time the model's compilation and not this probe, which any first CPU
    compilation pays: the first on a machine (or in a new cache directory) builds and loads a test library
    per ISA with the C++ compiler, ~10 s on the 2-core VM; later processes only load the built ones."""
    from torch._inductor import cpu_vec_isa

    start = time.perf_counter()
    cpu_vec_isa.pick_vec_isa()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES), help="names or BxTxINPUTxHIDDEN, comma-separated")
    parser.add_argument("--impls", default=",".join(DEFAULT_IMPLS), help=f"comma-separated, from {', '.join(ALL_IMPLS)}")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: train (forward + backward), "
                        "infer (forward under inference_mode); the stream shape is always inference")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (nn.LSTM is then cuDNN's)")
    parser.add_argument("--dtypes", default="float32", help=f"comma-separated, from {', '.join(DTYPES)}")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per shape (median is reported)")
    parser.add_argument("--min-seconds", type=float, default=0.05, help="minimum duration of one measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time instead of wall time, with --threads 1 only; on a "
                             "loaded shared host it leaves out the time other processes hold the core")
    parser.add_argument("--quick", action="store_true", help="small and stream shapes, 3 rounds")
    parser.add_argument("--json", default=None, help="also write the results as JSON to this path ('-' = stdout)")
    args = parser.parse_args(argv)
    impls = [i.strip() for i in args.impls.split(",")]
    bad = [i for i in impls if i not in ALL_IMPLS]
    if bad:
        raise SystemExit(f"--impls: unknown {bad}; choose from {', '.join(ALL_IMPLS)}")
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    modes = [m.strip() for m in args.modes.split(",")]
    if not modes or set(modes) - set(MODES):
        raise SystemExit(f"--modes: choose from {', '.join(MODES)}, got {args.modes!r}")
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    if not dtypes or set(dtypes) - set(DTYPES):
        raise SystemExit(f"--dtypes: choose from {', '.join(DTYPES)}, got {args.dtypes!r}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        # With several threads CPU time would add up the threads and count OpenMP's spin-waiting.
        if torch.get_num_threads() != 1 or torch.device(args.device).type == "cuda":
            raise SystemExit("--clock cpu needs --threads 1 and a CPU device")
        Bench.clock = staticmethod(time.process_time)
    shapes = parse_shapes("small,stream" if args.quick else args.shapes)
    repeats = 3 if args.quick else args.repeats

    info = machine(args.device)
    info["clock"] = args.clock
    if args.device == "cpu" and any(i.startswith("torch.compile") for i in impls):
        info["inductor_isa_probe_s"] = round(inductor_isa_probe_seconds(), 2)
    rows: list[Row] = []
    for dtype in dtypes:
        for name, dims in shapes.items():
            for mode in (["stream"] if name == "stream" else modes):
                new = run_shape(name, dims, impls, repeats, args.min_seconds, mode, args.device, dtype)
                rows += new
                if args.json != "-":
                    print(table(new), flush=True)
    info["loadavg_end"] = os.getloadavg()[0]
    if args.json != "-":
        print(f"\n{info}")
    if args.json:
        payload = json.dumps({"machine": info, "results": [asdict(r) for r in rows]}, indent=2)
        if args.json == "-":
            print(payload)
        else:
            with open(args.json, "w") as f:
                f.write(payload + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
