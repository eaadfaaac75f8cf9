"""The integer model's side-car storage: K-bit codebook indices, narrow integers, exact round trip."""

from __future__ import annotations

import numpy as np
import pytest

from nnaqat.nna.storage import decode_arrays, encode_arrays


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


@pytest.mark.parametrize("levels", [1, 2, 3, 16, 100, 128])
def test_every_codebook_size_round_trips(levels):
    rng = np.random.default_rng(levels)
    values = rng.choice(np.arange(-127, 128), size=levels, replace=False)
    weight = rng.choice(values, size=(32, 40)).astype(np.int64)
    stored, report = encode_arrays({"joiner.output_linear.weight": weight})
    assert np.array_equal(decode_arrays(stored)["joiner.output_linear.weight"], weight)
    assert report.index_bits["joiner.output_linear.weight"] == max(1, int(np.ceil(np.log2(len(np.unique(weight))))))
