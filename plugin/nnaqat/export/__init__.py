"""Exporters: the packed sub-8-bit side-car for NNA toolchains (here), ONNX in sherpa-onnx's
contract (``onnx``), ONNX Runtime parity (``ort``) and sherpa-onnx decoding (``sherpa``)."""

from nnaqat.export.packed import SizeReport, load_packed, pack_indices, save_packed, unpack_indices

__all__ = ["SizeReport", "load_packed", "pack_indices", "save_packed", "unpack_indices"]
