"""NNA spec files: both shipped specs load; every bad key or value names the file and the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from nnaqat.nna import NnaSpec, NnaSpecError, QFormat
from repo_paths import NNA_CONF


def test_default_spec_file_is_the_documented_default():
    spec = NnaSpec.from_yaml(NNA_CONF / "int8.yaml")
    assert spec == NnaSpec()
    assert (spec.weights.bits, spec.weights.granularity, spec.activations.bits) == (8, "per_channel", 8)
    assert (spec.accumulator.bits, spec.accumulator.overflow) == (32, "saturate")
    assert (spec.requantization.rounding, spec.requantization.zero_point) == ("single", "after_rounding")
    assert (spec.lut.size, spec.lut.interpolate) == (513, True)
    assert spec.lstm.gate == QFormat(3, 12) and spec.lstm.gate.bits == 16
    assert spec.lstm.nonlinearity == QFormat(0, 15) and spec.lstm.cell_bits == 16 and spec.lstm.hidden_bits == 8
    assert spec.placement_of("joiner.output_linear") == "nna"


def test_harsh_spec_file():
    spec = NnaSpec.from_yaml(NNA_CONF / "harsh.yaml")
    assert spec.lstm.gate.bits == 8 and spec.lstm.nonlinearity.bits == 8 and spec.lstm.cell_bits == 8
    assert (spec.lut.size, spec.lut.interpolate) == (65, False)
    assert (spec.accumulator.bits, spec.accumulator.overflow) == (20, "saturate")
    narrow = NnaSpec.from_yaml(NNA_CONF / "harsh-acc19.yaml")  # the same NNA with one accumulator bit less
    assert narrow == dataclasses.replace(spec, accumulator=dataclasses.replace(spec.accumulator, bits=19))


def test_a_spec_may_fix_the_cell_scale(tmp_path):
    calibrated = NnaSpec.from_yaml(NNA_CONF / "harsh-cell4.yaml")
    fixed = NnaSpec.from_yaml(NNA_CONF / "harsh-cell4-fixed.yaml")
    assert calibrated.lstm.cell_frac_bits is None and fixed.lstm.cell_frac_bits == 1
    assert fixed == dataclasses.replace(calibrated, lstm=dataclasses.replace(calibrated.lstm, cell_frac_bits=1))
    assert fixed.lstm.cell_frac_bit_limits() == (-10, 14)  # Q3.4 gates, Q0.7 tables
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**fixed.to_dict(), "lstm": {**fixed.to_dict()["lstm"], "cell_frac_bits": 15}}))
    with pytest.raises(NnaSpecError, match=f"{path}: lstm: cell_frac_bits must be in -10..14 .* got 15"):
        NnaSpec.from_yaml(path)


def test_spec_is_frozen():
    spec = NnaSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.lut.size = 65  # type: ignore[misc]


def test_placement_first_matching_glob_wins(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text('placement:\n  joiner.output_linear: cpu\n  "joiner.*": nna\n  "encoder.*": cpu\n')
    spec = NnaSpec.from_yaml(path)
    assert spec.placement_of("joiner.output_linear") == "cpu"
    assert spec.placement_of("joiner.encoder_proj") == "nna"
    assert spec.placement_of("encoder.layers.0") == "cpu"
    assert spec.placement_of("predictor.embedding") == "nna"  # no rule: the NNA


def edited(tmp_path: Path, section: str, key: str, value) -> Path:
    """int8.yaml with one value replaced (or added)."""
    data = yaml.safe_load((NNA_CONF / "int8.yaml").read_text())
    if section:
        data[section][key] = value
    else:
        data[key] = value
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "section,key,value,named",
    [
        ("", "accumulators", {"bits": 32}, "'accumulators'"),  # unknown top-level key
        ("lut", "sizes", 65, "'lut.sizes'"),  # unknown nested key
        ("requantization", "rounding", "banker", "requantization.rounding"),
        ("requantization", "zero_point", "before_rounding", "requantization"),  # only with fp32_rne
        ("accumulator", "overflow", "clip", "accumulator.overflow"),
        ("accumulator", "bits", 40, "accumulator: bits"),
        ("weights", "bits", "8", "weights.bits"),  # a string, not an integer
        ("weights", "granularity", "per_row", "weights.granularity"),
        ("lut", "size", 100, "lut: size"),
        ("lut", "interpolate", 1, "lut.interpolate"),
        ("lstm", "gate", "Q3.x", "lstm.gate"),
        ("lstm", "nonlinearity", "Q1.14", "lstm: nonlinearity"),
        ("lstm", "cell_bits", True, "lstm.cell_bits"),
        ("lstm", "cell_frac_bits", 1.5, "lstm.cell_frac_bits"),
        ("lstm", "cell_frac_bits", 31, "lstm: cell_frac_bits must be in -1..30"),
        ("placement", "joiner.*", "gpu", "placement"),
        ("", "lut", [513], "lut"),  # a list where a mapping belongs
    ],
)
def test_bad_spec_names_file_and_key(tmp_path, section, key, value, named):
    path = edited(tmp_path, section, key, value)
    with pytest.raises(NnaSpecError) as error:
        NnaSpec.from_yaml(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and named in message


def test_lut_must_fit_the_gate_format(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("lut:\n  size: 513\nlstm:\n  gate: Q3.4\n  nonlinearity: Q0.7\n")
    with pytest.raises(NnaSpecError, match="lut.size - 1 = 512 exceeds the 256 codes of lstm.gate Q3.4"):
        NnaSpec.from_yaml(path)


@pytest.mark.parametrize("name", sorted(path.name for path in NNA_CONF.glob("*.yaml")))  # every shipped spec
def test_spec_round_trips_through_its_mapping(name):
    """``to_dict`` gives the file's mapping with every key (stored in checkpoints and integer models)."""
    spec = NnaSpec.from_yaml(NNA_CONF / name)
    mapping = spec.to_dict()
    assert NnaSpec.from_dict(mapping) == spec
    assert yaml.safe_load(yaml.safe_dump(mapping)) == mapping  # plain YAML types only
    assert mapping["lstm"]["gate"] == str(spec.lstm.gate) and list(mapping["placement"].items()) == list(spec.placement)
    with pytest.raises(NnaSpecError, match="checkpoint: unknown key 'lut.sizes'"):
        NnaSpec.from_dict({"lut": {"sizes": 3}}, "checkpoint")
