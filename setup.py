"""Builds the optional C++ kernel of the fused backend (peephole_lstm.nn._fused_cpu) at install time.

Metadata lives in pyproject.toml. The extension needs torch at build time, so install with
`pip install --no-build-isolation -e .` after torch. If it cannot be built (no compiler, or torch not
importable, e.g. pip's default build isolation) the install fails with the reason: a silent fallback
left users on a ~10x slower path without telling them. PEEPHOLE_LSTM_NO_EXTENSION=1 installs without
it on purpose; the fused backend then runs its pure-PyTorch path
(`peephole_lstm.nn.fused.extension_available()` tells which one you have).
"""
import glob
import os
import platform
import sys

from setuptools import setup


OPT_OUT = "set PEEPHOLE_LSTM_NO_EXTENSION=1 to install without it (pure-PyTorch fused path, slower)"


def extensions():
    if os.environ.get("PEEPHOLE_LSTM_NO_EXTENSION") == "1":
        return {}, []
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        sys.exit("peephole-lstm: torch is not importable at build time, so the fused C++ kernel cannot be "
                 "built. Install torch first, then `pip install --no-build-isolation -e .` (or run "
                 f"./scripts/setup.sh); or {OPT_OUT}.")
    args = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
    # The kernel is compiled for the machine that installs it (a source install); set
    # PEEPHOLE_LSTM_PORTABLE=1 to build a binary that runs on any x86-64/arm64 CPU.
    if os.environ.get("PEEPHOLE_LSTM_PORTABLE") != "1" and platform.machine() in ("x86_64", "AMD64"):
        args.append("-march=native")
    class LoudBuildExt(BuildExtension):
        """A compiler error fails the install, naming the opt-out (the compiler's output is above it)."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as error:  # noqa: BLE001 - any compiler/linker failure
                raise SystemExit(f"peephole-lstm: could not build the fused C++ kernel ({error}); "
                                 f"install a C++ compiler (g++/clang++), or {OPT_OUT}.") from error

    # OpenMP makes at::parallel_for in the kernel really parallel (without it ATen's header runs it
    # serially); the extension then shares the libgomp torch has already loaded.
    link = []
    if platform.system() == "Linux":
        args.append("-fopenmp")
        link.append("-fopenmp")
    # Every source file of the kernel (csrc/ is flat: scripts/setup.sh hashes csrc/* to skip rebuilds);
    # the headers as `depends`, so that an sdist ships them and editing one rebuilds.
    def csrc(pattern):
        return sorted(glob.glob(f"src/peephole_lstm/nn/csrc/{pattern}", root_dir=os.path.dirname(os.path.abspath(__file__))))

    ext = CppExtension(
        "peephole_lstm.nn._fused_cpu",
        csrc("*.cpp"),
        depends=csrc("*.h"),
        extra_compile_args=args,
        extra_link_args=link,
    )
    return {"build_ext": LoudBuildExt}, [ext]


cmdclass, ext_modules = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
