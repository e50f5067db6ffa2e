"""Builds the optional C++ kernel of the fused backend (peephole_lstm.nn._fused_cpu) at install time.

Metadata lives in pyproject.toml. The extension needs torch at build time, so install with
`pip install --no-build-isolation -e .` after torch. If it cannot be built (no compiler, no torch, or
PEEPHOLE_LSTM_NO_EXTENSION=1) the package still installs and the fused backend runs its pure-PyTorch
path; `peephole_lstm.nn.fused.extension_available()` tells which one you have.
"""
import os
import platform
import sys

from setuptools import setup


def extensions():
    if os.environ.get("PEEPHOLE_LSTM_NO_EXTENSION") == "1":
        return {}, []
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("peephole-lstm: torch not importable at build time; installing without the C++ kernel "
              "(use `pip install --no-build-isolation` after installing torch)", file=sys.stderr)
        return {}, []
    args = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
    # The kernel is compiled for the machine that installs it (a source install); set
    # PEEPHOLE_LSTM_PORTABLE=1 to build a binary that runs on any x86-64/arm64 CPU.
    if os.environ.get("PEEPHOLE_LSTM_PORTABLE") != "1" and platform.machine() in ("x86_64", "AMD64"):
        args.append("-march=native")
    class OptionalBuildExt(BuildExtension):
        """A compiler error leaves the package on the pure-PyTorch path instead of failing the install."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as error:  # noqa: BLE001 - any compiler/linker failure
                print(f"peephole-lstm: could not build the fused C++ kernel ({error}); "
                      "the fused backend will use its pure-PyTorch path", file=sys.stderr)

    # OpenMP makes at::parallel_for in the kernel really parallel (without it ATen's header runs it
    # serially); the extension then shares the libgomp torch has already loaded.
    link = []
    if platform.system() == "Linux":
        args.append("-fopenmp")
        link.append("-fopenmp")
    ext = CppExtension(
        "peephole_lstm.nn._fused_cpu",
        ["src/peephole_lstm/nn/csrc/fused_lstm.cpp"],
        extra_compile_args=args,
        extra_link_args=link,
    )
    return {"build_ext": OptionalBuildExt}, [ext]


cmdclass, ext_modules = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
