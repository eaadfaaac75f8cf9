"""Streaming decoding of a model trained on real FSDD: equal to offline decoding, batched, with latencies."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lhotse import CutSet, load_manifest

from nnaqat.data.fsdd import compose_connected_digits
from nnaqat.data.tokenizer import Tokenizer
from nnaqat.decode.latency import matched_latencies, word_emission_times, word_end_times
from nnaqat.decode.search import search
from nnaqat.decode.streaming import ChunkGeometry, StreamingDecoder, decode_cuts_streaming
from nnaqat.decode.wer import error_stats
from nnaqat.models import Transducer, TransducerConfig
from repo_paths import REPO

METHODS = ["greedy_search", "modified_beam_search"]


@pytest.fixture(scope="module")
def dev(tiny_data):
    return load_manifest(tiny_data.dev)


@pytest.fixture(scope="module")
def offline(small_model, dev):
    """Whole-utterance hypotheses of the dev set, per method (the reference)."""
    x = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(c.load_features()) for c in dev], batch_first=True)
    x_lens = torch.tensor([c.num_frames for c in dev])
    with torch.no_grad():
        encoder_out, encoder_lens, _ = small_model.encoder(x, x_lens)
    return {m: dict(zip(dev.ids, search(small_model, encoder_out, encoder_lens, m, beam=4))) for m in METHODS}


@pytest.fixture(scope="module")
def dev_mixed(fsdd_manifests, dev, tmp_path_factory) -> Path:
    """The dev utterances as audio MixedCuts (drawn as conftest's ``tiny_data`` draws them)."""
    words = CutSet.from_manifests(**fsdd_manifests["dev"])
    mixed = compose_connected_digits(words, len(dev), seed=2, prefix="dev", speakers=["jackson", "theo"])
    assert [(c.id, c.supervisions[0].text) for c in mixed] == [(c.id, c.supervisions[0].text) for c in dev]
    path = tmp_path_factory.mktemp("mixed") / "dev_raw.jsonl.gz"
    mixed.to_file(path)
    return path


def test_model_makes_real_hypotheses(offline, dev, tiny_data):
    tokenizer = Tokenizer(tiny_data.bpe_model)
    hyps = offline["greedy_search"]
    results = [(c.id, c.supervisions[0].text.split(), tokenizer.decode(hyps[c.id]).split()) for c in dev]
    stats, _ = error_stats(results)
    correct = stats.words - stats.deletions - stats.substitutions
    assert stats.wer < 60.0 and correct > stats.words / 2  # the comparisons below are between real hypotheses


def test_chunk_geometry_matches_the_encoder(small_model):
    g = ChunkGeometry(factor=8, chunk_frames=2)
    assert (g.size, g.shift) == (25, 16)
    assert [g.output_frames(n) for n in (16, 17, 24, 25, 40)] == [0, 1, 1, 2, 2]
    for k in (1, 2, 5):
        g = ChunkGeometry.of(small_model, k)
        out, _, _ = small_model.encoder(torch.zeros(1, g.size, 80), torch.tensor([g.size]))
        assert out.size(1) == k == g.output_frames(g.size)
    with pytest.raises(ValueError, match="chunk_frames >= 1"):
        ChunkGeometry(8, 0)


@pytest.mark.parametrize("method", METHODS)
def test_streaming_equals_offline_on_every_dev_utterance(small_model, dev, offline, method):
    for chunk_frames in (1, 3, 8):
        for max_streams in (1, 5, 64):
            run = decode_cuts_streaming(small_model, dev, method, beam=4, chunk_frames=chunk_frames, max_streams=max_streams)
            got = {s.id: s.tokens for s in run.streams}
            differing = [i for i in dev.ids if got[i] != offline[method][i]]
            assert differing == [], f"chunk {chunk_frames}, {max_streams} streams: {differing}"
            if max_streams == 5:  # streams joined as others finished: batches of several sizes
                assert len(set(run.batch_sizes)) > 1
    assert 0 < run.rtf < 1


def test_features_in_arbitrary_pieces_and_partial_results(small_model, dev, offline):
    decoder = StreamingDecoder(small_model, "greedy_search", chunk_frames=3)
    cuts = list(dev)[:4]
    streams = [decoder.create_stream(c.id) for c in cuts]
    feats = [torch.from_numpy(c.load_features()) for c in cuts]
    positions = [0] * len(cuts)
    partials = {c.id: [] for c in cuts}
    rng = random.Random(0)
    while not all(s.done for s in streams):
        for i, s in enumerate(streams):  # audio arrives in uneven pieces, differently per stream
            if positions[i] < len(feats[i]):
                n = rng.randint(1, 37)
                s.accept_features(feats[i][positions[i] : positions[i] + n])
                positions[i] += n
                if positions[i] >= len(feats[i]):
                    s.input_finished()
        ready = [s for s in streams if s.ready()]
        if ready:
            decoder.decode_chunk(ready)
        for s in ready:
            partials[s.id].append(decoder.result(s)[0])
    for s in streams:
        final = decoder.result(s)[0]
        assert final == offline["greedy_search"][s.id]
        assert all(final[: len(p)] == p for p in partials[s.id])  # greedy partial results only grow
    with pytest.raises(RuntimeError, match="after input_finished"):
        streams[0].accept_features(feats[0][:1])


def test_too_short_utterance_gives_empty_hypothesis(small_model):
    decoder = StreamingDecoder(small_model, "modified_beam_search", chunk_frames=2)
    stream = decoder.create_stream("short")
    stream.accept_features(torch.zeros(16, 80))  # one frame less than an encoder frame needs
    assert not stream.ready()
    stream.input_finished()
    assert stream.done and decoder.result(stream)[0] == []


def test_word_end_times_from_mixed_cuts(dev_mixed):
    cut = load_manifest(dev_mixed)[0]
    ends = word_end_times(cut)
    words = cut.supervisions[0].text.split()
    assert len(ends) == len(words) and ends == sorted(ends)
    first = cut.tracks[0]
    assert ends[0] == pytest.approx(first.offset + first.cut.duration)
    assert ends[-1] < cut.duration  # trailing silence after the last word
    assert word_end_times(first.cut) is None  # a single recording has no word tracks


def test_word_emission_and_matched_latencies():
    pieces = ["\u2581", "one", "\u2581t", "wo", "\u2581three"]
    assert word_emission_times(pieces, [0.1, 0.2, 0.3, 0.4, 0.5]) == [0.2, 0.4, 0.5]
    # "two" deleted, "nine" inserted: only "one" and "three" are timed.
    got = matched_latencies(["one", "two", "three"], [1.0, 2.0, 3.0], ["one", "nine", "three"], [1.25, 2.5, 3.5])
    assert got == pytest.approx([0.25, 0.5])


def test_streaming_decode_script_equals_offline_script(small_exp_dir, tiny_data, dev_mixed, small_checkpoint):
    common = ["--exp-dir", str(small_exp_dir), "--checkpoint", str(small_checkpoint),
              "--bpe-model", str(tiny_data.bpe_model), "--method", "greedy_search"]
    subprocess.run([sys.executable, str(REPO / "local/decode.py"), *common, "--cuts", f"dev={tiny_data.dev}"],
                   check=True, capture_output=True)
    done = subprocess.run(
        [sys.executable, str(REPO / "local/streaming_decode.py"), *common, "--chunk-frames", "2",
         "--cuts", f"dev={tiny_data.dev}", "--word-times", f"dev={dev_mixed}"],
        check=True, capture_output=True, text=True,
    )
    suffix = small_checkpoint.stem
    offline = (small_exp_dir / "greedy_search" / f"recogs-dev-{suffix}.txt").read_text()
    streaming_dir = small_exp_dir / "streaming" / "greedy_search"
    assert (streaming_dir / f"recogs-dev-{suffix}-chunk-2.txt").read_text() == offline
    assert (streaming_dir / f"errs-dev-{suffix}-chunk-2.txt").read_text().startswith("%WER = ")
    line = done.stdout.strip().splitlines()[-1]
    assert "RTF" in line and "chunk compute" in line and "emission latency" in line
    figures = json.loads((streaming_dir / f"stats-dev-{suffix}-chunk-2.json").read_text())
    assert figures["latency_words"] > 0 and abs(figures["latency_ms_mean"]) < 1000
    assert figures["chunk_ms_mean"] > 0 and 0 < figures["rtf"] < 1


def test_streaming_equals_offline_with_an_lstm_predictor(dev):
    """The search state is whatever the predictor carries: here an LSTM's (h, c) (untrained model)."""
    torch.manual_seed(0)
    config = TransducerConfig(vocab_size=12, predictor="lstm", joiner_dim=16,
                              encoder_kwargs={"hidden_size": 32, "num_layers": 2, "subsampling_factor": 8},
                              predictor_kwargs={"embedding_dim": 16, "hidden_size": 24})
    model = Transducer(config).eval()
    cuts = dev.subset(first=6)
    x = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(c.load_features()) for c in cuts], batch_first=True)
    with torch.no_grad():
        encoder_out, encoder_lens, _ = model.encoder(x, torch.tensor([c.num_frames for c in cuts]))
    for method in METHODS:
        offline = search(model, encoder_out, encoder_lens, method, beam=3)
        assert sum(map(len, offline)) > 10
        run = decode_cuts_streaming(model, cuts, method, beam=3, chunk_frames=3, max_streams=4)
        assert {s.id: s.tokens for s in run.streams} == dict(zip(cuts.ids, offline))
