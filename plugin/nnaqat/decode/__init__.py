"""Transducer search and scoring."""

from nnaqat.decode.search import greedy_search, modified_beam_search, search
from nnaqat.decode.wer import ErrorStats, write_error_stats

__all__ = ["ErrorStats", "greedy_search", "modified_beam_search", "search", "write_error_stats"]
