"""RNN-T losses: a pure-torch reference and the (lazily imported) pruned backend."""

from .backend import rnnt_backend, rnnt_backend_name
from .reference import reference_rnnt_loss

__all__ = ["reference_rnnt_loss", "rnnt_backend", "rnnt_backend_name"]
