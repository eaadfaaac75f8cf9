"""Named model variants: encoders, predictors, joiners and quantizers.

Variants register themselves with a decorator::

    @register("encoder", "lstm")
    class LstmEncoder(nn.Module): ...

and are built by name (``build("encoder", "lstm", **kwargs)``). A third-party package adds
variants by declaring an entry point in the ``nnaqat.variants`` group whose target is a
callable taking this module; it is called once, the first time a kind is looked up.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, Dict, List, TypeVar

KINDS = ("encoder", "predictor", "joiner", "quantizer")
ENTRY_POINT_GROUP = "nnaqat.variants"

T = TypeVar("T")
_variants: Dict[str, Dict[str, Callable[..., Any]]] = {kind: {} for kind in KINDS}
_plugins_loaded = False


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown variant kind {kind!r}; expected one of {KINDS}")


def register(kind: str, name: str) -> Callable[[T], T]:
    """Decorator registering a class or factory as variant ``name`` of ``kind``."""
    _check_kind(kind)

    def decorator(factory: T) -> T:
        existing = _variants[kind].get(name)
        if existing is not None and existing is not factory:
            raise ValueError(f"{kind} variant {name!r} is already registered by {existing!r}")
        _variants[kind][name] = factory  # type: ignore[assignment]
        return factory

    return decorator


def _load_variants() -> None:
    """Imports the built-in variants once, then every entry point of the plugin group."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    importlib.import_module("nnaqat.models")
    importlib.import_module("nnaqat.quant")
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        entry_point.load()(importlib.import_module(__name__))


def names(kind: str) -> List[str]:
    """Sorted names of the registered variants of ``kind``."""
    _check_kind(kind)
    _load_variants()
    return sorted(_variants[kind])


def get(kind: str, name: str) -> Callable[..., Any]:
    """The factory registered as ``name`` of ``kind``; a KeyError lists the known names."""
    _check_kind(kind)
    _load_variants()
    try:
        return _variants[kind][name]
    except KeyError:
        raise KeyError(f"no {kind} variant named {name!r}; known: {', '.join(names(kind))}") from None


def build(kind: str, name: str, **kwargs: Any) -> Any:
    """Instantiates variant ``name`` of ``kind`` with ``kwargs``."""
    return get(kind, name)(**kwargs)
