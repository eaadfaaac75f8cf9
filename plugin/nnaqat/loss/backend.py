"""Lazy selection of the pruned RNN-T loss backend (``k2`` or ``fast_rnnt``).

Both packages expose the same functions (``rnnt_loss``, ``rnnt_loss_smoothed``,
``get_rnnt_prune_ranges``, ``do_rnnt_pruning``, ``rnnt_loss_pruned``, ...),
so callers can use whichever is installed.  Nothing is imported until
:func:`rnnt_backend` is called.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

__all__ = ["rnnt_backend", "rnnt_backend_name"]

# Preference order.
_CANDIDATES = ("k2", "fast_rnnt")
# Functions the rest of the project relies on.
_REQUIRED = (
    "rnnt_loss",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
    "rnnt_loss_pruned",
    "get_rnnt_prune_ranges",
    "do_rnnt_pruning",
)


@functools.lru_cache(maxsize=None)  # only successful look-ups are cached
def rnnt_backend() -> ModuleType:
    """Return the pruned RNN-T loss module: ``k2`` if importable, else ``fast_rnnt``.

    Raises:
      ImportError: if neither package can be imported (or lacks the RNN-T API).
    """
    problems = []
    for name in _CANDIDATES:
        try:
            mod = importlib.import_module(name)
        except (ImportError, OSError) as exc:  # OSError: broken shared libs
            problems.append(f"{name}: {exc}")
            continue
        missing = [f for f in _REQUIRED if not hasattr(mod, f)]
        if missing:
            problems.append(f"{name}: missing {', '.join(missing)}")
            continue
        return mod
    raise ImportError(
        "No pruned RNN-T loss backend available: need `k2` or `fast_rnnt` "
        "(run `bash local/setup_env.sh` to install one).\n  " + "\n  ".join(problems)
    )


def rnnt_backend_name() -> str:
    """Name of the module returned by :func:`rnnt_backend` (``"k2"`` or ``"fast_rnnt"``)."""
    return rnnt_backend().__name__
