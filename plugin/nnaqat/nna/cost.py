"""Engine-latency cost model: the per-frame latency of a transducer on an NNA with CPU fallback.

A model is a graph of ops (:class:`Op`) named as the NNA model's modules, so that the spec's
placement globs (``placement: {"joiner.activation": cpu, "*": nna}``) place them. Per encoder
frame (our interpretation; the AAT paper gives no formula):

- compute: each op's multiply-accumulates (element-wise ops count one per element) over the
  throughput of where it runs;
- weights: every op fetches its weights once per run over the weight bandwidth, K-bit weights on
  the NNA (``K/8`` bytes per weight plus a ``2**K``-byte codebook below 8 bits), float32 on the CPU;
- transfers: every edge between an NNA op and a CPU op costs a fixed per-tensor latency plus the
  tensor's bytes over the transfer bandwidth. The front-end (``features``) and the search
  (``search``) always run on the CPU.

Encoder and joiner ops run once per frame; the predictor and the decoder projection once per
emitted symbol (``symbols_per_frame``, at most 1 with one symbol per frame). NumPy-free and
torch-free: :func:`transducer_ops` reads a model's sizes only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from nnaqat.nna.spec import NnaSpec

CPU_ENDPOINTS = ("features", "search")  # the float front-end and the search, always on the CPU


@dataclass(frozen=True)
class DeviceProfile:
    """Throughputs and costs of one device (defaults: an illustrative small NNA beside a phone CPU)."""

    nna_macs_per_second: float = 100e9
    cpu_macs_per_second: float = 4e9
    weight_bytes_per_second: float = 4e9
    cpu_weight_bits: int = 32  # ops that fall back to the CPU run in float
    transfer_seconds: float = 20e-6  # fixed cost of moving one tensor between NNA and CPU
    transfer_bytes_per_second: float = 1e9

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "device profile") -> DeviceProfile:
        """A profile from a mapping of its fields (e.g. a YAML file's; ``source`` names it in
        errors); numbers may be strings such as ``100e9``, which YAML reads as text."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown} (expected some of {sorted(fields)})")
        values = {}
        for key, value in data.items():
            kind = int if fields[key].type in (int, "int") else float
            try:
                if isinstance(value, bool):
                    raise ValueError
                values[key] = kind(value)
            except (TypeError, ValueError):
                raise ValueError(f"{source}: {key} must be a number, got {value!r}") from None
            if values[key] <= 0:
                raise ValueError(f"{source}: {key} must be positive, got {value!r}")
        return cls(**values)


@dataclass(frozen=True)
class Op:
    """One op of the model graph, per run."""

    name: str
    macs: int
    output_elements: int
    inputs: Tuple[str, ...] = ()  # producer op names
    weights: Tuple[Tuple[str, int], ...] = ()  # (parameter name, weights fetched per run)
    per_symbol: bool = False  # runs once per emitted symbol instead of once per frame


@dataclass
class LatencyReport:
    """Seconds per encoder frame, in total and by part."""

    placement: Dict[str, str]
    compute: Dict[str, float] = field(default_factory=dict)  # per op
    weights: Dict[str, float] = field(default_factory=dict)  # per op
    transfers: Dict[str, float] = field(default_factory=dict)  # per crossing edge "producer->consumer"

    @property
    def seconds_per_frame(self) -> float:
        return sum(self.compute.values()) + sum(self.weights.values()) + sum(self.transfers.values())

    @property
    def cpu_ops(self) -> List[str]:
        return [name for name, where in self.placement.items() if where == "cpu" and name not in CPU_ENDPOINTS]


def transducer_ops(model: Any) -> List[Op]:
    """The op graph of a (float or NNA) transducer with an LSTM encoder, stateless predictor and
    additive joiner; op names are the NNA model's module names.

    Raises:
      ValueError: another predictor variant (the NNA has the stateless one only).
    """
    encoder, predictor, config = model.encoder, model.predictor, model.config
    if config.predictor != "stateless":
        raise ValueError(f"the cost model covers the stateless predictor only, not {config.predictor!r}")
    stacking = encoder.subsampling
    features = stacking.out.weight.shape[1] // stacking.window
    d, h, joiner, vocab = encoder.d_model, encoder.hidden_size, config.joiner_dim, config.vocab_size
    ops = [Op("features", 0, stacking.factor * features)]
    ops.append(Op("encoder.subsampling.out", stacking.window * features * d, d, ("features",),
                  (("encoder.subsampling.out.weight", stacking.window * features * d),)))  # fmt: skip
    source = "encoder.subsampling.out"
    for i in range(encoder.num_layers):
        layer = f"encoder.layers.{i}"
        # Matmuls, then 8 element-wise ops per unit: 5 tables, 3 products (and the cell add).
        ops.append(Op(layer, 4 * h * (d + h) + 8 * h, h, (source,),
                      ((f"{layer}.weight_ih_l0", 4 * h * d), (f"{layer}.weight_hh_l0", 4 * h * h))))  # fmt: skip
        ops.append(Op(f"encoder.residuals.{i}", d, d, (source, layer)))
        source = f"encoder.residuals.{i}"
    context, dim = predictor.context_size, predictor.output_dim
    rows = (("predictor.embedding.weight", context * dim),)  # only the context's rows are read
    ops.append(Op("predictor.embedding", 0, context * dim, ("search",), rows, per_symbol=True))
    predictor_out = "predictor.embedding"
    if predictor.conv is not None:
        kernel = dim * (dim // predictor.conv.groups) * context
        ops.append(Op("predictor.conv", kernel, dim, ("predictor.embedding",), (("predictor.conv.weight", kernel),),
                      per_symbol=True))  # fmt: skip
        predictor_out = "predictor.conv"
    ops += [
        Op("joiner.encoder_proj", d * joiner, joiner, (source,), (("joiner.encoder_proj.weight", d * joiner),)),
        Op("joiner.decoder_proj", dim * joiner, joiner, (predictor_out,),
           (("joiner.decoder_proj.weight", dim * joiner),), per_symbol=True),
        Op("joiner.activation", joiner, joiner, ("joiner.encoder_proj", "joiner.decoder_proj")),
        Op("joiner.output_linear", joiner * vocab, vocab, ("joiner.activation",),
           (("joiner.output_linear.weight", joiner * vocab),)),
        Op("search", 0, 1, ("joiner.output_linear",)),
    ]  # fmt: skip
    return ops


def placement_of_ops(
    ops: List[Op], spec: NnaSpec, overrides: Optional[Mapping[str, str]] = None
) -> Dict[str, str]:
    """``op name -> "nna" | "cpu"``: ``overrides`` first, then ``spec.placement``; the front-end
    and the search are always on the CPU."""
    overrides = overrides or {}
    return {op.name: "cpu" if op.name in CPU_ENDPOINTS else overrides.get(op.name, spec.placement_of(op.name))
            for op in ops}  # fmt: skip


def _weight_bytes(count: int, bits: int) -> float:
    codebook = 2**bits if bits < 8 else 0  # int8 levels of a sub-8-bit codebook
    return count * bits / 8 + codebook


def frame_latency(
    ops: List[Op],
    spec: NnaSpec,
    profile: DeviceProfile,
    weight_bits: Optional[Mapping[str, int]] = None,
    symbols_per_frame: float = 1.0,
    placement: Optional[Mapping[str, str]] = None,
) -> LatencyReport:
    """Per-frame latency of ``ops`` placed by ``spec`` (or ``placement``, op name -> nna/cpu).

    Args:
      weight_bits: bits per parameter name on the NNA (a quantizer's ``bits``); others take the
        spec's weight bits.
      symbols_per_frame: emitted symbols per encoder frame (predictor runs).
    """
    weight_bits = weight_bits or {}
    where = placement_of_ops(ops, spec, placement)
    rate = {op.name: symbols_per_frame if op.per_symbol else 1.0 for op in ops}
    elements = {op.name: op.output_elements for op in ops}
    report = LatencyReport(placement=where)
    activation_bytes = spec.activations.bits / 8
    for op in ops:
        on_nna = where[op.name] == "nna"
        throughput = profile.nna_macs_per_second if on_nna else profile.cpu_macs_per_second
        report.compute[op.name] = rate[op.name] * op.macs / throughput
        fetched = sum(_weight_bytes(n, weight_bits.get(p, spec.weights.bits) if on_nna else profile.cpu_weight_bits)
                      for p, n in op.weights)  # fmt: skip
        report.weights[op.name] = rate[op.name] * fetched / profile.weight_bytes_per_second
        for producer in op.inputs:
            if where[producer] != where[op.name]:
                # A new value crosses once per run of the slower side (the other side keeps it).
                runs = min(rate[producer], rate[op.name])
                size = elements[producer] * activation_bytes / profile.transfer_bytes_per_second
                report.transfers[f"{producer}->{op.name}"] = runs * (profile.transfer_seconds + size)
    return report
