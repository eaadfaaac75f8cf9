"""The engine-latency cost model: hand-worked latencies, the real model's sizes, placements."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from nnaqat.models import TransducerConfig, build_transducer
from nnaqat.nna import NnaSpec
from nnaqat.nna.convert import nna_
from nnaqat.nna.cost import DeviceProfile, Op, frame_latency, transducer_ops

# Round numbers: 1e6 MAC/s on the NNA, 1e5 on the CPU, 1e6 weight bytes/s, 1 ms + 1e6 bytes/s a transfer.
PROFILE = DeviceProfile(nna_macs_per_second=1e6, cpu_macs_per_second=1e5, weight_bytes_per_second=1e6,
                        cpu_weight_bits=32, transfer_seconds=1e-3, transfer_bytes_per_second=1e6)  # fmt: skip
CHAIN = [
    Op("features", 0, 100),
    Op("a", 1000, 50, ("features",), (("a.weight", 1000),)),
    Op("b", 500, 10, ("a",), (("b.weight", 500),)),
    Op("search", 0, 1, ("b",)),
]


def placed(rules: dict) -> NnaSpec:
    return dataclasses.replace(NnaSpec(), placement=tuple(rules.items()))


def test_all_on_the_nna_hand_worked():
    report = frame_latency(CHAIN, NnaSpec(), PROFILE)
    # compute 1500 MACs / 1e6; weights 1500 bytes (int8) / 1e6; two crossings (features in, b out):
    # 2 ms + (100 + 10) bytes / 1e6.
    assert report.compute == {"features": 0, "a": 1e-3, "b": 5e-4, "search": 0}
    assert report.weights["a"] == pytest.approx(1e-3) and report.weights["b"] == pytest.approx(5e-4)
    assert report.transfers == pytest.approx({"features->a": 1e-3 + 1e-4, "b->search": 1e-3 + 1e-5})
    assert report.seconds_per_frame == pytest.approx(3e-3 + 2e-3 + 1.1e-4)
    assert report.cpu_ops == []


def test_cpu_fallback_pays_float_compute_float_weights_and_a_transfer_each_way():
    report = frame_latency(CHAIN, placed({"a": "cpu", "*": "nna"}), PROFILE)
    assert report.compute["a"] == pytest.approx(1e-2)  # 1000 MACs at 1e5
    assert report.weights["a"] == pytest.approx(4e-3)  # float32: 4000 bytes
    # features -> a no longer crosses; a -> b does (50 bytes), b -> search still does.
    assert report.transfers == pytest.approx({"a->b": 1e-3 + 5e-5, "b->search": 1e-3 + 1e-5})
    assert report.cpu_ops == ["a"]


def test_k_bit_weights_cost_k_eighths_plus_their_codebook():
    full = frame_latency(CHAIN, NnaSpec(), PROFILE)
    four_bit = frame_latency(CHAIN, NnaSpec(), PROFILE, weight_bits={"a.weight": 4})
    assert four_bit.weights["a"] == pytest.approx((1000 * 4 / 8 + 16) / 1e6)
    assert four_bit.weights["b"] == full.weights["b"]


def model(context_size: int = 2):
    return build_transducer(TransducerConfig(
        vocab_size=32, joiner_dim=24,
        encoder_kwargs={"hidden_size": 40, "num_layers": 2, "subsampling_factor": 8},
        predictor_kwargs={"embedding_dim": 16, "context_size": context_size},
    ))  # fmt: skip


@pytest.mark.parametrize("convert", [False, True])
def test_transducer_ops_fetch_exactly_the_model_weights(convert):
    """Every weight matrix of the deployed network is fetched once per run (the embedding: only
    the context rows), float and NNA models alike."""
    transducer = model()
    if convert:
        nna_(transducer, NnaSpec())
    ops = {op.name: op for op in transducer_ops(transducer)}
    fetched = {name: count for op in ops.values() for name, count in op.weights}
    params = dict(transducer.named_parameters())
    deployed = [n for n, p in params.items() if p.dim() >= 2 and not n.startswith("simple_")]
    assert sorted(fetched) == sorted(deployed)
    for name, count in fetched.items():
        expected = 2 * 16 if name == "predictor.embedding.weight" else params[name].numel()
        assert count == expected, name
    assert ops["encoder.layers.1"].macs == 4 * 40 * 80 + 8 * 40
    assert ops["encoder.residuals.1"].inputs == ("encoder.residuals.0", "encoder.layers.1")
    assert ops["features"].output_elements == 8 * 80  # f new feature frames per encoder frame


def test_a_joiner_nonlinearity_on_the_cpu_costs_three_transfers_per_frame():
    """The AAT paper's case: an op the float model keeps on the CPU costs its inputs' and its
    output's transfers every frame (the decoder side only per symbol)."""
    ops = transducer_ops(model())
    all_nna = frame_latency(ops, NnaSpec(), PROFILE, symbols_per_frame=0.5)
    fallback = frame_latency(ops, placed({"joiner.activation": "cpu", "*": "nna"}), PROFILE, symbols_per_frame=0.5)
    added = set(fallback.transfers) - set(all_nna.transfers)
    assert added == {"joiner.encoder_proj->joiner.activation", "joiner.decoder_proj->joiner.activation",
                     "joiner.activation->joiner.output_linear"}  # fmt: skip
    bytes_per_second = PROFILE.transfer_bytes_per_second
    per_symbol = 0.5 * (1e-3 + 24 / bytes_per_second)  # 24 int8 values, half a symbol per frame
    assert fallback.transfers["joiner.decoder_proj->joiner.activation"] == pytest.approx(per_symbol)
    assert fallback.seconds_per_frame > all_nna.seconds_per_frame
    assert fallback.cpu_ops == ["joiner.activation"]


def test_device_profile_reads_numbers_and_rejects_the_rest():
    assert DeviceProfile.from_dict({"nna_macs_per_second": 2e9}).nna_macs_per_second == 2e9
    # YAML reads 100e9 (no decimal point) as a string
    profile = DeviceProfile.from_dict(yaml.safe_load("nna_macs_per_second: 100e9\ncpu_weight_bits: 16"))
    assert profile.nna_macs_per_second == 100e9 and profile.cpu_weight_bits == 16
    for bad, match in (({"nna_macs": 2e9}, "p.yaml: unknown keys .*nna_macs"),
                       ({"transfer_seconds": "fast"}, "p.yaml: transfer_seconds must be a number"),
                       ({"cpu_weight_bits": True}, "must be a number"),
                       ({"cpu_macs_per_second": 0}, "must be positive")):
        with pytest.raises(ValueError, match=match):
            DeviceProfile.from_dict(bad, "p.yaml")


def test_transducer_ops_refuse_predictors_the_nna_does_not_have():
    model = build_transducer(TransducerConfig(vocab_size=8, predictor="windowed_lstm"))
    with pytest.raises(ValueError, match="stateless predictor only, not 'windowed_lstm'"):
        transducer_ops(model)
