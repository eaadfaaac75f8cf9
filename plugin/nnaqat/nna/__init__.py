"""Emulated NNA numerics (design §4): the spec, the integer reference engine's operators
(``reference``, NumPy only), the training-time emulation (``ops``, torch), bit-exact with each
other, and the emulated layers built from them (``linear.NnaLinear``). Importing this package
does not import torch."""

from nnaqat.nna.lut import Lut, build_lut, spec_lut
from nnaqat.nna.spec import NnaSpec, NnaSpecError, QFormat

__all__ = ["Lut", "NnaSpec", "NnaSpecError", "QFormat", "build_lut", "spec_lut"]
