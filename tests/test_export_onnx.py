"""ONNX export in sherpa-onnx's LSTM contract: ONNX Runtime parity and the real sherpa-onnx client."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, load_manifest

from nnaqat.data.fsdd import compose_connected_digits
from nnaqat.data.tokenizer import Tokenizer
from nnaqat.decode.streaming import StreamingDecoder, decode_cuts_streaming, decode_streams
from nnaqat.decode.wav_stream import stream_wav
from nnaqat.decode.wer import error_stats
from nnaqat.export.onnx import (
    DecoderForOnnx, EncoderForOnnx, OnnxFiles, count_ops, export_onnx, quantize_int8, read_metadata,
)
from nnaqat.export.ort import OrtTransducer, parity
from nnaqat.export.sherpa import check_model_files, decode_with_sherpa, transcribe_with_sherpa
from nnaqat.models import Transducer, TransducerConfig
from nnaqat.quant import QuantConfig, quantize_
from repo_paths import REPO

CHUNK_FRAMES = 2


@pytest.fixture(scope="module")
def exported(small_model, tiny_data, tmp_path_factory):
    """fp32 and post-training int8 exports, 2 encoder frames per chunk."""
    fp32 = export_onnx(small_model, tiny_data.bpe_model.parent / "tokens.txt", tmp_path_factory.mktemp("onnx"), CHUNK_FRAMES)
    return {"fp32": fp32, "int8": quantize_int8(fp32)}


@pytest.fixture(scope="module")
def dev_features(tiny_data):
    return [torch.from_numpy(c.load_features()) for c in load_manifest(tiny_data.dev)]


@pytest.fixture(scope="module")
def test_audio(fsdd_manifests) -> CutSet:
    """20 connected-digit utterances with audio (8 kHz) from the FSDD test takes."""
    words = CutSet.from_manifests(**fsdd_manifests["test"])
    return compose_connected_digits(words, 20, seed=3, prefix="test", speakers=["jackson", "theo"]).to_eager()


def _io(path: Path):
    graph = onnx.load(str(path)).graph
    shape = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    elem = lambda v: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)
    return [(v.name, elem(v), shape(v)) for v in graph.input], [(v.name, shape(v)) for v in graph.output]


def test_files_follow_the_sherpa_onnx_lstm_contract(exported, small_model):
    files = exported["fp32"]
    enc, dec = small_model.encoder, small_model.predictor
    meta = read_metadata(files.encoder)
    # 2 encoder frames of 8x frame stacking read 8*2 + 8 + 1 = 25 frames and advance 16. Three
    # state rows: two LSTM layers and the causal mean normalisation's running statistics.
    expected = {"model_type": "lstm", "T": "25", "decode_chunk_len": "16", "num_encoder_layers": "3",
                "d_model": "96", "rnn_hidden_size": "96"}
    assert {k: meta[k] for k in expected} == expected
    inputs, outputs = _io(files.encoder)
    assert inputs == [("x", "FLOAT", ["N", 25, 80]), ("state0", "FLOAT", [3, "N", enc.d_model]),
                      ("state1", "FLOAT", [3, "N", enc.hidden_size])]
    assert [name for name, _ in outputs] == ["encoder_out", "new_state0", "new_state1"]
    ort_model = OrtTransducer(files)
    encoder_out, state0, state1 = ort_model.run_encoder(np.zeros((3, 25, 80), np.float32), *ort_model.initial_state(3))
    assert (encoder_out.shape, state0.shape, state1.shape) == ((3, CHUNK_FRAMES, 32), (3, 3, 96), (3, 3, 96))
    assert read_metadata(files.decoder) == {"context_size": "2", "vocab_size": str(dec.vocab_size)}
    assert _io(files.decoder) == ([("y", "INT64", ["N", 2])], [("decoder_out", ["N", 32])])
    assert _io(files.joiner) == ([("encoder_out", "FLOAT", ["N", 32]), ("decoder_out", "FLOAT", ["N", 32])],
                                 [("logit", ["N", dec.vocab_size])])
    assert files.tokens.read_text().splitlines()[0] == "<blk> 0"
    for fp32_file, int8_file in zip(files.models(), exported["int8"].models()):
        assert read_metadata(fp32_file).items() <= read_metadata(int8_file).items()
    assert check_model_files(exported["int8"])["model_type"] == "lstm"


def test_fp32_onnx_runtime_equals_torch_chunk_by_chunk(exported, small_model, dev_features):
    report = parity(small_model, OrtTransducer(exported["fp32"]), dev_features)
    assert report.frames > 500
    assert report.logit <= 1e-4, report
    assert report.argmax_agree == report.frames


def test_fp32_encoder_batches_streams(exported, small_model, dev_features):
    ort_model = OrtTransducer(exported["fp32"])
    x = torch.stack([f[:25] for f in dev_features[:3]])
    with torch.no_grad():  # real, different states per stream: those after this chunk
        _, _, state = small_model.encoder(x, torch.full((3,), 25))
    out_o = ort_model.run_encoder(x.numpy(), *(s.numpy() for s in state))
    with torch.no_grad():
        out_t = EncoderForOnnx(small_model)(x, *state)
    for t, o in zip(out_t, out_o):
        assert np.abs(t.numpy() - o).max() <= 1e-4


def test_post_training_int8_is_icefalls_dynamic_quantization(exported, small_model, dev_features):
    fp32, int8 = exported["fp32"], exported["int8"]
    ops = {part: count_ops(path) for part, path in zip(("encoder", "decoder", "joiner"), int8.models())}
    assert "MatMul" not in ops["encoder"] and ops["encoder"]["MatMulInteger"] == 2  # frame stacking, projection
    assert ops["encoder"]["LSTM"] == 2  # LSTMs stay float, as in icefall's int8 exports
    assert ops["decoder"]["MatMulInteger"] == 1 and ops["decoder"]["DequantizeLinear"] == 1  # int8 embedding
    assert "MatMul" not in ops["joiner"] and ops["joiner"]["MatMulInteger"] == 1
    assert int8.total_bytes() < 0.7 * fp32.total_bytes()
    report = parity(small_model, OrtTransducer(int8), dev_features)
    assert report.logit > 1e-3, report  # really quantized
    assert report.argmax_agree >= 0.98 * report.frames, report  # and still the same model


@pytest.fixture(scope="module")
def qat_model(small_model):
    """The small model with 4-bit S8BQAT codebooks (Lloyd-Max rounding), as a QAT checkpoint loads."""
    model = copy.deepcopy(small_model)
    quantize_(model, QuantConfig(quantizer="s8bqat", weight_bits=4)).finalize(model)
    return model.eval()


def test_quantization_aware_int8_stores_the_codebook_weights(qat_model, tiny_data, tmp_path, dev_features):
    files = export_onnx(qat_model, tiny_data.bpe_model.parent / "tokens.txt", tmp_path, CHUNK_FRAMES, "int8-qat")
    assert files.encoder.name == "encoder.int8-qat.onnx"
    quantized = qat_model.quantizer.quantized(qat_model)
    stored = {}
    for path in files.models():
        graph = onnx.load(str(path)).graph
        int8 = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
        for node in graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] in int8:
                stored[node.input[0]] = int8[node.input[0]]
        assert not [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and i.dims
                    and np.prod(i.dims) >= 1024], f"{path.name} still holds large float weights"
    # Every quantized weight is stored once, as exactly its codebook's int8 values.
    assert len(stored) == len(quantized)
    expected = sorted(tuple(np.sort(q.levels[q.indices].numpy().ravel())) for q in quantized.values())
    assert sorted(tuple(np.sort(v.ravel())) for v in stored.values()) == expected
    fp32_bytes = sum(p.numel() * 4 for p in qat_model.parameters())
    assert files.total_bytes() < 0.4 * fp32_bytes
    # As written, the graphs compute what PyTorch computes with those weights.
    report = parity(qat_model, OrtTransducer(files, optimize=False), dev_features)
    assert report.logit <= 1e-4 and report.argmax_agree == report.frames, report


def test_int8_qat_export_needs_a_quantized_model(small_model, tiny_data, tmp_path):
    with pytest.raises(ValueError, match="quantization-aware"):
        export_onnx(small_model, tiny_data.bpe_model.parent / "tokens.txt", tmp_path, CHUNK_FRAMES, "int8-qat")


def test_export_rejects_what_sherpa_onnx_cannot_run(tmp_path, tiny_data):
    tokens = tiny_data.bpe_model.parent / "tokens.txt"
    lstm_predictor = Transducer(TransducerConfig(vocab_size=10, predictor="lstm", joiner_dim=8,
                                                 encoder_kwargs={"hidden_size": 16, "num_layers": 1}))
    with pytest.raises(ValueError, match="last context_size tokens, not LstmPredictor"):
        export_onnx(lstm_predictor, tokens, tmp_path)
    projected = Transducer(TransducerConfig(vocab_size=10, joiner_dim=8,
                                            encoder_kwargs={"hidden_size": 16, "num_layers": 1, "proj_size": 8}))
    with pytest.raises(ValueError, match="proj_size"):
        export_onnx(projected, tokens, tmp_path)


def test_windowed_lstm_predictor_exports_as_a_sherpa_onnx_decoder(tmp_path, tiny_data):
    torch.manual_seed(0)
    config = TransducerConfig(vocab_size=12, predictor="windowed_lstm", joiner_dim=8,
                              encoder_kwargs={"hidden_size": 16, "num_layers": 1},
                              predictor_kwargs={"embedding_dim": 16, "hidden_size": 12, "context_size": 4})
    model = Transducer(config).eval()
    files = export_onnx(model, tiny_data.bpe_model.parent / "tokens.txt", tmp_path)
    onnx_model = OrtTransducer(files, optimize=False)
    assert onnx_model.context_size == 4
    contexts = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 5], [0, 0, 5, 5], [0, 5, 5, 5], [5, 5, 5, 5], [3, 11, 7, 2]])
    assert not any(m.training for m in model.modules()), "export must leave the model in eval mode"
    with torch.no_grad():
        expected = DecoderForOnnx(model).eval()(contexts).numpy()
    np.testing.assert_allclose(onnx_model.run_decoder(contexts.numpy()), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("blank_penalty", [0.0, 1.5])
def test_sherpa_onnx_fp32_equals_our_streaming_greedy(exported, small_model, test_audio, tiny_data, blank_penalty):
    run = decode_with_sherpa(exported["fp32"], test_audio, sample_rate=16000, dump_features=True,
                             blank_penalty=blank_penalty)
    assert len(run.utterances) == len(test_audio) and 0 < run.rtf < 1
    tokenizer = Tokenizer(tiny_data.bpe_model)
    # 1. Our streaming greedy on exactly the feature chunks sherpa-onnx's encoder received.
    decoder = StreamingDecoder(small_model, "greedy_search", chunk_frames=CHUNK_FRAMES, blank_penalty=blank_penalty)
    g = decoder.geometry
    utterances = []
    for u in run.utterances:
        chunks = torch.from_numpy(u.chunk_features)
        assert chunks.shape[1:] == (g.size, 80)
        frames = torch.cat([chunks[0]] + [c[g.size - g.shift :] for c in chunks[1:]])  # undo the overlap
        utterances.append((u.id, frames, 1.0))
        assert u.text.split() == tokenizer.decode(u.tokens).split()
    ours = {s.id: s.tokens for s in decode_streams(decoder, utterances).streams}
    assert [u.id for u in run.utterances if ours[u.id] != u.tokens] == []
    # 2. Our streaming greedy on lhotse features of the audio as is (sherpa-onnx had silence appended).
    plain = decode_cuts_streaming(small_model, test_audio, chunk_frames=CHUNK_FRAMES, blank_penalty=blank_penalty)
    plain_tokens = {s.id: s.tokens for s in plain.streams}
    assert [u.id for u in run.utterances if plain_tokens[u.id] != u.tokens] == []
    assert sum(len(u.tokens) > 0 for u in run.utterances) > len(test_audio) / 2


def test_sherpa_onnx_failures_raise_instead_of_exiting(exported, tmp_path, test_audio):
    broken = OnnxFiles.in_dir(tmp_path)
    for src, dst in zip((*exported["fp32"].models(), exported["fp32"].tokens), (*broken.models(), broken.tokens)):
        dst.write_bytes(src.read_bytes())
    # No metadata: caught before sherpa-onnx sees it, naming the file.
    model = onnx.load(str(broken.decoder))
    del model.metadata_props[:]
    onnx.save(model, str(broken.decoder))
    with pytest.raises(ValueError, match=r"decoder\.onnx: metadata lacks \['context_size', 'vocab_size'\]"):
        decode_with_sherpa(broken, test_audio.subset(first=1))
    # A joiner sherpa-onnx cannot load: it exits the child, and we get an exception.
    broken.decoder.write_bytes(exported["fp32"].decoder.read_bytes())
    broken.joiner.write_bytes(b"not an onnx model")
    with pytest.raises(RuntimeError, match="sherpa-onnx exited with code"):
        decode_with_sherpa(broken, test_audio.subset(first=1))


def test_export_and_sherpa_decode_scripts(small_model, small_checkpoint, tiny_data, test_audio, tmp_path):
    onnx_dir = tmp_path / "onnx"
    done = subprocess.run(
        [sys.executable, str(REPO / "local/export_onnx.py"), "--checkpoint", str(small_checkpoint),
         "--tokens", str(tiny_data.bpe_model.parent / "tokens.txt"), "--out-dir", str(onnx_dir),
         "--chunk-frames", "2", "--check-cuts", str(tiny_data.dev), "--check-num", "4"],
        check=True, capture_output=True, text=True,
    )
    assert "fp32 vs PyTorch on 4 utterances: max |dlogit|" in done.stdout
    manifest = tmp_path / "test_raw.jsonl.gz"
    test_audio.to_file(manifest)
    done = subprocess.run(
        [sys.executable, str(REPO / "local/sherpa_decode.py"), "--onnx-dir", str(onnx_dir), "--precision", "fp32",
         "--exp-dir", str(tmp_path), "--cuts", f"test={manifest}"],
        check=True, capture_output=True, text=True,
    )
    assert "RTF" in done.stdout
    errs = (tmp_path / "sherpa-onnx" / "greedy_search" / "errs-test-fp32-chunk-2.txt").read_text()
    ours = decode_cuts_streaming(small_model, test_audio, chunk_frames=CHUNK_FRAMES).streams
    tokenizer = Tokenizer(tiny_data.bpe_model)
    stats, _ = error_stats([(s.id, test_audio[s.id].supervisions[0].text.split(), tokenizer.decode(s.tokens).split())
                            for s in ours])
    assert errs.splitlines()[0] == f"%WER = {stats.wer:.2f}"


def test_transcribe_own_audio_at_any_rate(exported, small_model, small_checkpoint, test_audio, tiny_data, tmp_path):
    cut = test_audio[0]
    wav = tmp_path / "mine.wav"
    sf.write(wav, cut.resample(44100).load_audio()[0], 44100)  # "your own" recording, at 44.1 kHz
    tokenizer = Tokenizer(tiny_data.bpe_model)
    expected = tokenizer.decode(decode_cuts_streaming(small_model, [cut], chunk_frames=CHUNK_FRAMES).streams[0].tokens)
    assert expected  # a real transcript to compare
    for partials in (list(stream_wav(small_model, tokenizer, wav, chunk_frames=CHUNK_FRAMES)),
                     list(transcribe_with_sherpa(exported["fp32"], wav))):
        *growing, final = partials
        assert final.final and final.text == expected
        assert growing and all(expected.startswith(p.text) and not p.final for p in growing)
        assert [p.seconds for p in growing] == sorted(p.seconds for p in growing)
    done = subprocess.run(
        [sys.executable, str(REPO / "local/transcribe.py"), str(wav), "--checkpoint", str(small_checkpoint),
         "--bpe-model", str(tiny_data.bpe_model), "--chunk-frames", str(CHUNK_FRAMES)],
        check=True, capture_output=True, text=True,
    )
    assert done.stdout.splitlines()[-1] == f"mine: {expected}"
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    with pytest.raises(ValueError, match="broken.wav: unreadable audio"):
        next(transcribe_with_sherpa(exported["fp32"], broken))
