"""Emulated NNA numerics (design §4): the spec, the integer reference engine's operators
(``reference``, ``reference_lstm``, NumPy only), the training-time emulation (``ops``, torch),
bit-exact with each other, the emulated layers built from them (``linear``, ``lstm``, ``layers``),
the NNA versions of a transducer and the call that converts one (``models``, ``convert.nna_``),
the exported integer model and the engine that runs it (``export``, ``integer_model``,
``engine``, NumPy only), and the engine-latency cost model (``cost``). Importing this package
does not import torch."""

from nnaqat.nna.lut import Lut, build_lut, spec_lut
from nnaqat.nna.spec import NnaSpec, NnaSpecError, QFormat

__all__ = ["Lut", "NnaSpec", "NnaSpecError", "QFormat", "build_lut", "spec_lut"]
