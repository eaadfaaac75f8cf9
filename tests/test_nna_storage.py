"""The integer model's side-car storage: K-bit codebook indices, narrow integers, exact round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnaqat.nna.storage import decode_arrays, encode_arrays
from nnaqat.sizes import WeightSize, read_weight_size, write_size_summary


def _arrays(rng: np.random.Generator) -> dict:
    per_tensor = rng.choice(np.array([-90, -31, 24, 127]), size=(64, 48))  # one 2-bit codebook
    row_levels = np.stack([rng.choice(np.arange(-127, 128), size=4, replace=False) for _ in range(64)])
    per_row = np.take_along_axis(row_levels, rng.integers(0, 4, size=(64, 48)), axis=1)  # 4 codes per row
    return {
        "format": np.array("nnaqat-nna-integer-model"),
        "encoder.input_scale": np.float32(0.05),
        "encoder.a.weight": per_tensor.astype(np.int64),
        "encoder.b.weight": per_row.astype(np.int64),
        "encoder.c.weight": rng.integers(-127, 128, size=(64, 48)),  # full int8
        "encoder.c.bias": rng.integers(-2**31, 2**31, size=64),
        "encoder.c.shift": rng.integers(-20, 0, size=64),
        "luts.sigmoid": rng.integers(0, 32768, size=257),
    }


def test_round_trip_is_exact_and_weights_take_their_index_bits():
    arrays = _arrays(np.random.default_rng(0))
    stored, report = encode_arrays(arrays)
    decoded = decode_arrays(stored)
    assert decoded.keys() == arrays.keys()
    for key, value in arrays.items():
        assert np.array_equal(decoded[key], value), key
        if np.issubdtype(value.dtype, np.integer):
            assert decoded[key].dtype == np.int64
    assert report.index_bits == {"encoder.a.weight": 2, "encoder.b.weight": 2, "encoder.c.weight": 8}
    n = 64 * 48
    assert report.weights == (n * 2 // 8 + 4) + (n * 2 // 8 + 64 * 4) + n
    assert stored["encoder.c.shift"].dtype == np.int8 and stored["encoder.c.bias"].dtype == np.int32
    assert stored["luts.sigmoid"].dtype == np.int16 and report.luts == 257 * 2
    assert report.total == report.weights + report.luts + report.other
    size = report.weight_size  # what the size summary (model.nna.size.json) records
    assert (size.count, size.stored_bytes) == (3 * n, report.weights)
    assert size.index_bits == pytest.approx((2 + 2 + 8) / 3)  # weighted by tensor size: equal sizes here


def test_mean_index_bits_weigh_each_tensor_by_its_weights():
    rng = np.random.default_rng(1)
    large = rng.choice(np.array([-5, 5]), size=(100, 10))  # 1-bit indices
    small = rng.integers(-127, 128, size=(2, 5))  # stored as int8
    _, report = encode_arrays({"a.weight": large, "b.weight": small})
    assert report.weight_size.index_bits == pytest.approx((1 * 1000 + 8 * 10) / 1010)


def test_size_summary_round_trips_and_names_a_foreign_file(tmp_path):
    artifact = tmp_path / "model.nna.npz"
    artifact.write_bytes(b"x" * 123)
    size = WeightSize(count=1000, stored_bytes=300, index_bits=2.25)
    path = write_size_summary(artifact, size, {"luts": 5})
    assert path == tmp_path / "model.nna.size.json"
    assert read_weight_size(path) == size and json.loads(path.read_text())["file_bytes"] == 123
    path.write_text(json.dumps({"weights": 300, "weight_count": 1000}))  # the schema before WeightSize
    with pytest.raises(ValueError, match="model.nna.size.json"):
        read_weight_size(path)


@pytest.mark.parametrize("levels", [1, 2, 3, 16, 100, 128])
def test_every_codebook_size_round_trips(levels):
    rng = np.random.default_rng(levels)
    values = rng.choice(np.arange(-127, 128), size=levels, replace=False)
    weight = rng.choice(values, size=(32, 40)).astype(np.int64)
    stored, report = encode_arrays({"joiner.output_linear.weight": weight})
    assert np.array_equal(decode_arrays(stored)["joiner.output_linear.weight"], weight)
    assert report.index_bits["joiner.output_linear.weight"] == max(1, int(np.ceil(np.log2(len(np.unique(weight))))))
