"""Transducer building blocks; importing this package registers the built-in variants."""

from nnaqat.models.encoder import FrameStackSubsampling, FeatureNorm, LstmEncoder
from nnaqat.models.joiner import AdditiveJoiner
from nnaqat.models.predictor import LstmPredictor, StatelessPredictor, TokenHistoryPredictor, WindowedLstmPredictor
from nnaqat.models.transducer import Transducer, TransducerConfig, build_transducer

__all__ = [
    "AdditiveJoiner",
    "FrameStackSubsampling",
    "FeatureNorm",
    "LstmEncoder",
    "LstmPredictor",
    "StatelessPredictor",
    "TokenHistoryPredictor",
    "Transducer",
    "TransducerConfig",
    "WindowedLstmPredictor",
    "build_transducer",
]
