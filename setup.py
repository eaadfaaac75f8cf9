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

# SSE4.1 has instructions for rounding (rint, floor); without them each is a call into libm.
SSE4 = ["-msse4.2"] if platform.machine() in ("x86_64", "AMD64") else []

setup(
    ext_modules=[
        CppExtension(
            "nnaqat._kernels",
            sorted(str(p) for p in Path("plugin/nnaqat").glob("**/csrc/*.cpp")),
            # No fused multiply-add: float products must round as two separate operations.
            # OpenMP: at::parallel_for runs on torch's threads only when compiled with it.
            extra_compile_args=["-O3", "-ffp-contract=off", "-fopenmp", *SSE4],
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=False)},
)
