"""The whole NNA transducer: a model trained on real FSDD, converted with ``nna_``, calibrated and
exported, runs in the NumPy integer engine with zero mismatching integers against the emulated
torch model (encoder outputs, joiner logits, greedy hypotheses), streaming or not."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass
from typing import List

import numpy as np
import pytest
import torch
from lhotse import load_manifest

from nnaqat.checkpoint import load_model
from nnaqat.data.datamodule import batch_to_tensors, eval_dataloader
from nnaqat.data.tokenizer import Tokenizer
from nnaqat.decode.search import greedy_search
from nnaqat.decode.wer import error_stats
from nnaqat.models import Transducer, TransducerConfig, build_transducer
from nnaqat.nna import NnaSpec
from nnaqat.nna.convert import calibrate, freeze_calibration, nna_
from nnaqat.nna.engine import IntegerTransducer
from nnaqat.nna.export import export_integer_model
from nnaqat.nna.integer_model import VERSION, load_integer_model, save_integer_model, to_arrays
from nnaqat.quant import QuantConfig, quantize_
from nnaqat.sizes import read_weight_size
from repo_paths import NNA_CONF, REPO

SPECS = {name: NnaSpec.from_yaml(NNA_CONF / f"{name}.yaml") for name in ("int8", "harsh")}
SPECS["int8-fixed-cell"] = dataclasses.replace(  # the cell scale fixed by the spec (Q5.10), not calibrated
    SPECS["int8"], lstm=dataclasses.replace(SPECS["int8"].lstm, cell_frac_bits=10)
)
CALIBRATION_BATCHES = 4


@pytest.fixture(scope="module")
def tokenizer(tiny_data) -> Tokenizer:
    return Tokenizer(tiny_data.bpe_model)


@pytest.fixture(scope="module")
def calibration_batches(tiny_data, tokenizer):
    """The first training batches, as (x, x_lens, y, y_lens)."""
    batches = []
    for batch in eval_dataloader(load_manifest(tiny_data.train), max_duration=20.0):
        batches.append(batch_to_tensors(batch, tokenizer)[:4])
        if len(batches) == CALIBRATION_BATCHES:
            return batches
    return batches


@pytest.fixture(scope="module")
def dev(tiny_data):
    """Real connected-digit dev utterances: ids, texts, padded fbank ``(N, T, 80)`` and lengths."""
    cuts = load_manifest(tiny_data.dev)
    x = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(c.load_features()) for c in cuts], batch_first=True)
    return list(cuts.ids), [c.supervisions[0].text for c in cuts], x, torch.tensor([c.num_frames for c in cuts])


def codes_of(value: torch.Tensor, source) -> np.ndarray:
    """The integer codes a dequantized tensor holds (exact: same scale and zero point)."""
    scale, zero_point = source.scale_and_zero_point()
    return (torch.round(value / scale) + zero_point).long().numpy()


@dataclass
class Converted:
    spec_name: str
    model: Transducer
    engine: IntegerTransducer
    features: torch.Tensor  # normalised, (N, T, F): the float front-end's output, shared by both
    encoder_out: torch.Tensor  # emulated, dequantized (N, T', d_model)
    encoder_lens: torch.Tensor
    hyps: List[List[int]]  # emulated greedy search


@pytest.fixture(scope="module", params=list(SPECS))
def converted(request, small_checkpoint, calibration_batches, dev, tmp_path_factory) -> Converted:
    model = load_model([small_checkpoint])
    nna_(model, SPECS[request.param])
    calibrate(model, calibration_batches)
    freeze_calibration(model)
    model.eval()
    path = tmp_path_factory.mktemp("integer") / "model.npz"
    save_integer_model(export_integer_model(model), path)  # the engine runs what the file holds
    engine = IntegerTransducer.load(path)
    _, _, x, x_lens = dev
    with torch.no_grad():
        features = model.encoder.feature_norm(x)
        encoder_out, _ = model.encoder.encode_normalised(features)
        encoder_lens = model.encoder.output_length(x_lens)
        hyps = greedy_search(model, encoder_out, encoder_lens)
    return Converted(request.param, model, engine, features, encoder_out, encoder_lens, hyps)


def test_encoder_outputs_match_integer_for_integer(converted, dev):
    _, _, _, x_lens = dev
    expected = codes_of(converted.encoder_out, converted.model.encoder.output_range)
    compared = mismatches = 0
    for i, (frames, length) in enumerate(zip(x_lens.tolist(), converted.encoder_lens.tolist())):
        engine = converted.engine
        out = engine.encode(engine.quantize_features(converted.features[i, :frames].numpy()))
        assert out.shape == (length, converted.model.encoder.d_model)
        compared += out.size
        mismatches += int(np.count_nonzero(out != expected[i, :length]))
    print(f"[{converted.spec_name}] encoder output codes: {mismatches} mismatches of {compared}")
    assert mismatches == 0 and compared > 10_000


def test_joiner_logits_match_on_the_transcript_lattice(converted, dev, tokenizer):
    """Logits of every (frame, transcript prefix) pair: encoder projection, predictor, joiner."""
    model, engine = converted.model, converted.engine
    ids, texts, _, _ = dev
    blank, context_size = model.blank_id, model.predictor.context_size
    output_range = model.joiner.output_linear.output_observer
    compared = mismatches = 0
    for i, text in enumerate(texts):
        tokens = tokenizer.encode(text)
        length = int(converted.encoder_lens[i])
        with torch.no_grad():
            enc = model.joiner.encoder_proj(converted.encoder_out[i, :length])
            dec = model.joiner.decoder_proj(model.predictor(torch.tensor([[blank] + tokens]))[0])
            expected = codes_of(model.joiner(enc[:, None], dec[None], project_input=False), output_range)
        history = [blank] * context_size + tokens
        enc_q = engine.project_encoder(codes_of(converted.encoder_out[i, :length], model.encoder.output_range))
        dec_q = np.stack([engine.predict(history[u : u + context_size]) for u in range(len(tokens) + 1)])
        logits = engine.join(enc_q[:, None], dec_q[None])
        assert logits.shape == expected.shape == (length, len(tokens) + 1, model.config.vocab_size)
        compared += logits.size
        mismatches += int(np.count_nonzero(logits != expected))
    print(f"[{converted.spec_name}] joiner logit codes: {mismatches} mismatches of {compared}")
    assert mismatches == 0


@pytest.mark.parametrize("chunk_frames", [None, 1, 3])
def test_greedy_hypotheses_identical_streaming_or_not(converted, dev, chunk_frames):
    _, _, _, x_lens = dev
    engine_hyps = [
        converted.engine.decode(converted.features[i, :frames].numpy(), chunk_frames)
        for i, frames in enumerate(x_lens.tolist())
    ]
    differing = sum(a != b for a, b in zip(engine_hyps, converted.hyps))
    print(f"[{converted.spec_name}] chunk {chunk_frames}: {differing} of {len(engine_hyps)} hypotheses differ")
    assert differing == 0
    assert sum(len(h) for h in engine_hyps) > 2 * len(engine_hyps)  # real hypotheses, not empty ones


@pytest.mark.parametrize("blank_penalty", [1.0, 2.5])
def test_blank_penalty_gives_the_same_hypotheses_in_both(converted, dev, tokenizer, blank_penalty):
    """The penalty, in logits for the torch search and in logit codes for the engine's, changes
    hypotheses (fewer deletions) identically in both."""
    _, _, _, x_lens = dev
    model = converted.model
    with torch.no_grad():
        hyps = greedy_search(model, converted.encoder_out, converted.encoder_lens, blank_penalty=blank_penalty)
    scale, _ = model.joiner.output_linear.output_observer.scale_and_zero_point()
    engine_hyps = [
        converted.engine.decode(converted.features[i, :frames].numpy(), 3, blank_penalty / float(scale))
        for i, frames in enumerate(x_lens.tolist())
    ]
    changed = sum(a != b for a, b in zip(hyps, converted.hyps))
    print(f"[{converted.spec_name}] penalty {blank_penalty}: {changed} of {len(hyps)} hypotheses changed by it")
    assert engine_hyps == hyps and changed > 0


def test_integer_models_make_real_hypotheses(converted, small_checkpoint, dev, tokenizer):
    """The comparisons above are between real hypotheses, and the default-spec integer model
    (no emulation in training) decodes as well as the float model, within 5 % absolute."""
    ids, texts, x, x_lens = dev
    float_model = load_model([small_checkpoint])
    with torch.no_grad():
        out, lens, _ = float_model.encoder(x, x_lens)
        float_hyps = greedy_search(float_model, out, lens)

    def wer(hyps: List[List[int]]) -> float:
        return error_stats([(i, t.split(), tokenizer.decode(h).split()) for i, t, h in zip(ids, texts, hyps)])[0].wer

    float_wer, integer_wer = wer(float_hyps), wer(converted.hyps)
    print(f"[{converted.spec_name}] greedy WER: float {float_wer:.2f}, integer {integer_wer:.2f}")
    assert float_wer < 60.0 and integer_wer < 60.0
    if converted.spec_name == "int8":
        assert integer_wer <= float_wer + 5.0


def test_integer_model_file_round_trip_and_version(converted, tmp_path):
    integer = export_integer_model(converted.model)
    path = tmp_path / "model.npz"
    save_integer_model(integer, path)
    arrays, loaded = to_arrays(integer), to_arrays(load_integer_model(path))
    assert arrays.keys() == loaded.keys()
    assert all(np.array_equal(arrays[k], loaded[k]) for k in arrays)
    assert arrays["encoder.layers.0.input.weight"].dtype == np.int64
    with np.load(path) as data:
        stored = dict(data)
    stored["version"] = np.array(VERSION + 1)
    np.savez(tmp_path / "future.npz", **stored)
    with pytest.raises(ValueError, match="future.npz: .*version"):
        load_integer_model(tmp_path / "future.npz")
    (tmp_path / "short.npz").write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="short.npz: "):
        load_integer_model(tmp_path / "short.npz")


def test_sub8bit_side_car_stores_k_bit_indices_and_decodes_the_same(small_checkpoint, calibration_batches, dev, tmp_path):
    """AAT + 2-bit S8BQAT: every weight tensor goes into the side-car as 2-bit indices into int8
    codebooks (the NNA's per-channel weight scales keep at most 4 codes per row), and the
    engine loaded from the file gives the hypotheses of the engine built in memory."""
    model = load_model([small_checkpoint])
    nna_(model, SPECS["int8"])
    quantize_(model, QuantConfig(quantizer="s8bqat", weight_bits=2)).finalize(model)
    calibrate(model, calibration_batches)
    freeze_calibration(model)
    integer = export_integer_model(model.eval())
    path = tmp_path / "model.npz"
    report = save_integer_model(integer, path)
    arrays = to_arrays(integer)
    sizes = {key: arrays[key].size for key in report.index_bits}
    # Never larger than 2-bit indices with a 4-entry codebook per output row (which always fits),
    # and nearly every weight at 2 bits (a tiny tensor may be smaller with one 3-bit codebook).
    per_row_2bit = sum(-(-n * 2 // 8) + arrays[key].shape[0] * 4 for key, n in sizes.items())
    assert report.weights <= per_row_2bit
    at_2_bits = sum(n for key, n in sizes.items() if report.index_bits[key] <= 2)
    assert at_2_bits >= 0.95 * report.weight_count, report.index_bits
    assert path.stat().st_size < 0.5 * report.weight_count  # with the .npz headers, still half of int8 weights alone
    _, _, x, x_lens = dev
    with torch.no_grad():
        features = model.encoder.feature_norm(x)
    loaded, in_memory = IntegerTransducer.load(path), IntegerTransducer(integer)
    for i, length in enumerate(x_lens.tolist()[:8]):
        assert loaded.decode(features[i, :length].numpy()) == in_memory.decode(features[i, :length].numpy())


def test_converted_checkpoint_rebuilds_the_same_integers(converted, small_checkpoint):
    """A converted model's state dict, loaded into a freshly converted float model, exports the
    same integers (how training checkpoints of an emulated model come back)."""
    rebuilt = load_model([small_checkpoint])
    nna_(rebuilt, converted.model.nna_spec, state_dict=converted.model.state_dict())
    a, b = to_arrays(export_integer_model(converted.model)), to_arrays(export_integer_model(rebuilt))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_engine_imports_no_torch():
    code = "import sys, nnaqat.nna.engine, nnaqat.nna.integer_model; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_nna_refuses_models_it_cannot_emulate(small_checkpoint):
    model = load_model([small_checkpoint])
    nna_(model, SPECS["int8"])
    with pytest.raises(ValueError, match="already"):
        nna_(model, SPECS["int8"])
    with pytest.raises(RuntimeError, match="no data"):  # uncalibrated: nothing to export
        export_integer_model(model)
    for predictor, name in (("lstm", "LstmPredictor"), ("windowed_lstm", "WindowedLstmPredictor")):
        other = build_transducer(TransducerConfig(vocab_size=8, predictor=predictor))
        with pytest.raises(ValueError, match=f"no NNA version of the predictor {name}"):
            nna_(other, SPECS["int8"])
    projected = build_transducer(TransducerConfig(vocab_size=8, encoder_kwargs={"hidden_size": 16, "proj_size": 8}))
    with pytest.raises(ValueError, match="projections"):
        nna_(projected, SPECS["int8"])


def test_convert_then_export_nna_scripts_write_a_side_car_the_engine_loads(small_checkpoint, tiny_data, tmp_path):
    """``local/convert_nna.py`` (post-training conversion, here with 3-bit weights) saves an NNA
    checkpoint that loads back converted and calibrated; ``local/export_nna.py`` writes its side-car
    and the size summary."""
    converted, out = tmp_path / "pretrained.pt", tmp_path / "model.nna.npz"
    subprocess.run(
        [sys.executable, str(REPO / "local/convert_nna.py"), "--checkpoint", str(small_checkpoint),
         "--nna-spec", str(NNA_CONF / "int8.yaml"), "--calibration-cuts", str(tiny_data.train),
         "--calibration-batches", "2", "--bpe-model", str(tiny_data.bpe_model), "--out", str(converted),
         "--quantizer", "s8bqat", "--weight-bits", "3"],
        capture_output=True, text=True, check=True,
    )
    model = load_model([converted])
    assert model.nna_spec == SPECS["int8"] and model.quantizer.config.weight_bits == 3
    done = subprocess.run([sys.executable, str(REPO / "local/export_nna.py"), "--checkpoint", str(converted),
                           "--out", str(out)], capture_output=True, text=True, check=True)
    assert "read back exactly" in done.stdout and "index bits per tensor" in done.stdout, done.stdout
    engine = IntegerTransducer.load(out)
    assert engine.model.spec == SPECS["int8"]
    expected, loaded = to_arrays(export_integer_model(model)), to_arrays(engine.model)
    assert expected.keys() == loaded.keys() and all((expected[k] == loaded[k]).all() for k in expected)
    size = read_weight_size(tmp_path / "model.nna.size.json")
    assert 2.9 < size.index_bits <= 3.1 and size.stored_bytes < size.count  # 3-bit indices, a few at more
    refused = subprocess.run([sys.executable, str(REPO / "local/export_nna.py"), "--checkpoint", str(small_checkpoint),
                              "--out", str(tmp_path / "fp32.nna.npz")], capture_output=True, text=True)
    assert refused.returncode != 0 and "not an NNA model" in refused.stderr

