"""nnaqat: RNN-Transducer recipes and quantization-aware training for 8-bit NNAs."""

__version__ = "0.1.0"
