"""Builds the compiled part of the plugin, the extension ``nnaqat._kernels``: the emulated NNA's
kernels (``plugin/nnaqat/nna/csrc``) and S8BQAT's (``plugin/nnaqat/quant/csrc``).

Everything else about the package is declared in pyproject.toml. The extension compiles
against the installed torch, so install with ``--no-build-isolation`` after torch
(``local/setup_env.sh`` does).
"""

import platform
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

# The extension is built where it runs (an editable install, compiled against the local torch),
# so it targets this CPU: rounding instructions (rint, floor) instead of calls into libm, and
# the integer LSTM's gate loop vectorized over 64-bit lanes (AVX-512 where there is one).
# Exactness does not depend on it: no fast-math, no FMA contraction.
NATIVE = ["-march=native"] if platform.machine() in ("x86_64", "AMD64") else []

setup(
    ext_modules=[
        CppExtension(
            "nnaqat._kernels",
            sorted(str(p) for p in Path("plugin/nnaqat").glob("**/csrc/*.cpp")),
            # No fused multiply-add: float products must round as two separate operations.
            # OpenMP: at::parallel_for runs on torch's threads only when compiled with it.
            extra_compile_args=["-O3", "-ffp-contract=off", "-fopenmp", *NATIVE],
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=False)},
)
