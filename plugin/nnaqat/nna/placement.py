"""CPU fallback in the emulated model: the ops a spec places on the CPU compute in float.

A deployment toolchain that cannot keep an op accurate on the NNA runs it on the host CPU
instead (in float), at the price of the transfers the cost model (``nna.cost``) charges. The
emulation follows the same placement, so the WER of a placement and its latency come from one
model:

- an op on the CPU reads its inputs as they arrive (dequantized NNA codes, or floats from
  another CPU op) and computes in float with its float weights;
- its output crosses to the NNA as activation codes (quantized with the op's own calibrated
  output range) when an NNA op reads it, and stays float when only CPU ops do.

Ops are named as in :func:`nna.cost.transducer_ops`. The predictor's embedding and convolution
have no float fallback (they run once per emitted symbol on codes; keep them on the NNA). The
integer reference engine runs all-NNA models only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import nn

from nnaqat.nna import ops
from nnaqat.nna.cost import CPU_ENDPOINTS, placement_of_ops, transducer_ops
from nnaqat.nna.spec import NnaSpec

NO_FLOAT_FALLBACK = ("predictor.embedding", "predictor.conv")


@dataclass(frozen=True)
class CpuFallback:
    """How one CPU-placed op hands on its float output."""

    to_nna: bool  # an NNA op reads the output: it crosses as activation codes

    def output(self, y: torch.Tensor, observer: nn.Module, bits: int) -> torch.Tensor:
        """``y`` as the consumers receive it; ``observer`` (a ``RangeObserver``) calibrates the
        codes it crosses as (the range NNA consumers read it with)."""
        observer.observe(y.detach())
        if not self.to_nna:
            return y
        scale, zero_point = observer.scale_and_zero_point()
        return ops.fake_quantize(y, scale, zero_point, bits)


def place_(model: nn.Module, spec: NnaSpec) -> List[str]:
    """Places every op of an emulated ``model`` as ``spec`` says (``nna_`` calls it; call it again
    to move ops of a converted model) and records ``spec`` as ``model.nna_spec``; returns the
    names of the ops on the CPU.

    Raises:
      ValueError: an op with no float fallback is placed on the CPU.
    """
    graph = transducer_ops(model)
    where = placement_of_ops(graph, spec)
    readers: Dict[str, List[str]] = defaultdict(list)
    for op in graph:
        for producer in op.inputs:
            readers[producer].append(op.name)
    on_cpu = [op.name for op in graph if where[op.name] == "cpu" and op.name not in CPU_ENDPOINTS]
    unsupported = [name for name in on_cpu if name in NO_FLOAT_FALLBACK]
    if unsupported:
        raise ValueError(f"no float fallback for {unsupported}: place the predictor on the NNA")
    for op in graph:
        module = model.get_submodule(op.name) if op.name not in CPU_ENDPOINTS else None
        if hasattr(module, "cpu_fallback"):
            to_nna = any(where[reader] == "nna" for reader in readers[op.name])
            module.cpu_fallback = CpuFallback(to_nna) if op.name in on_cpu else None
    model.nna_spec = spec
    return on_cpu


def cpu_ops(model: nn.Module) -> List[str]:
    """Names of ``model``'s modules that run on the CPU (in float)."""
    return [name for name, module in model.named_modules() if getattr(module, "cpu_fallback", None) is not None]
