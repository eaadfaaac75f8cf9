"""Weight quantization for 8-bit NNAs: one verb, :func:`quantize_`, and registered quantizers."""

from nnaqat.quant.api import derive_centroids, quantize_
from nnaqat.quant.codebook import hard_compress, int8_scale, nearest_index, snap_to_int8_grid
from nnaqat.quant.config import QuantConfig, quantizable_parameters, resolve_bits
from nnaqat.quant.lloyd_max import lloyd_max
from nnaqat.quant.mracos import mracos
from nnaqat.quant.quantizers import QuantizedTensor, WeightQuantizer

__all__ = [
    "QuantConfig",
    "QuantizedTensor",
    "WeightQuantizer",
    "derive_centroids",
    "hard_compress",
    "int8_scale",
    "lloyd_max",
    "mracos",
    "nearest_index",
    "quantizable_parameters",
    "quantize_",
    "resolve_bits",
    "snap_to_int8_grid",
]
