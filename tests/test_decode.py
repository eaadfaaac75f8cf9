"""Search, WER scoring and icefall-format result files (real model trained on real FSDD)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import soundfile
import torch
from lhotse import Recording, load_manifest

from nnaqat.checkpoint import load_model
from nnaqat.data.fsdd import DIGIT_WORDS
from nnaqat.decode import greedy_search, modified_beam_search
from nnaqat.decode.wer import (
    differing_hypotheses, error_stats, read_recogs, run_length_confusion, runs, write_error_stats, write_recogs,
)
from nnaqat.trainer import TrainConfig, train
from repo_paths import FSDD_RECIPE, REPO


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    exp = tmp_path_factory.mktemp("exp")
    train(
        TrainConfig(
            train_cuts=str(tiny_data.train), dev_cuts=str(tiny_data.dev), bpe_model=str(tiny_data.bpe_model),
            exp_dir=str(exp), num_epochs=3, max_duration=60.0, lr=3e-3, warmup_batches=5, warm_step=10,
            progress=False,
            model={"encoder_kwargs": {"hidden_size": 48, "num_layers": 1},
                   "predictor_kwargs": {"embedding_dim": 32}, "joiner_dim": 32},
        )
    )
    return exp


def test_wer_counts():
    stats, lines = error_stats([("a", "one two three".split(), "one three three four".split()), ("b", ["five"], [])])
    assert (stats.words, stats.substitutions, stats.insertions, stats.deletions) == (4, 1, 1, 1)
    assert stats.wer == pytest.approx(75.0)
    assert lines[1] == "b:\t(five->*)"


def test_errs_file_format(tmp_path):
    stats = write_error_stats(tmp_path / "errs.txt", "test", [("u1", ["one", "two"], ["one", "nine"])])
    text = (tmp_path / "errs.txt").read_text().splitlines()
    assert text[0] == "%WER = 50.00"
    assert "u1:\tone (two->nine)" in text
    assert stats.errors == 1


def test_recogs_roundtrip_and_bad_lines(tmp_path):
    results = [("u2", ["one"], []), ("u1", ["two", "two"], ["two"])]
    write_recogs(tmp_path / "recogs.txt", results)
    assert read_recogs(tmp_path / "recogs.txt") == sorted(results)
    (tmp_path / "bad.txt").write_text("u1:\thyp=['one']\n")
    with pytest.raises(ValueError, match="bad.txt:1: hypothesis of u1 before its reference"):
        read_recogs(tmp_path / "bad.txt")


def test_differing_hypotheses_names_the_utterances_and_needs_the_same_ones():
    ours = [("u1", ["one"], ["one"]), ("u2", ["two"], ["two"]), ("u3", ["six"], [])]
    theirs = [("u3", ["six"], ["six"]), ("u1", ["one"], ["one"]), ("u2", ["two"], ["two"])]
    assert differing_hypotheses(ours, theirs) == ["u3"]
    assert differing_hypotheses(ours, ours) == []
    with pytest.raises(ValueError, match="different utterances.*u3"):
        differing_hypotheses(ours, theirs[1:])


def test_run_length_confusion():
    assert runs("a a b a".split()) == [("a", 2), ("b", 1), ("a", 1)]
    table = run_length_confusion([
        ("u1", "six six six two".split(), "six six two".split()),  # a triple said twice
        ("u2", "one one nine".split(), "one one one eight nine".split()),  # a pair said 3x, an insertion
        ("u3", "four four five".split(), "seven five".split()),  # a pair replaced as a whole
    ])
    assert table == {3: {2: 1}, 2: {3: 1, 0: 1}, 1: {1: 3}}


def test_run_lengths_script(tmp_path):
    write_recogs(tmp_path / "recogs.txt", [("u1", "six six six two".split(), "six six two".split())])
    out = subprocess.run([sys.executable, str(FSDD_RECIPE / "local/run_lengths.py"), str(tmp_path / "recogs.txt")],
                         check=True, capture_output=True, text=True).stdout.splitlines()
    assert out[2:] == ["| 1 | 1 |  | 1 |  |  | 100 % |", "| 3 | 1 |  |  | 1 |  | 0 % |"]
    (tmp_path / "empty.txt").write_text("")
    empty = subprocess.run([sys.executable, str(FSDD_RECIPE / "local/run_lengths.py"), str(tmp_path / "empty.txt")],
                           capture_output=True, text=True)
    assert empty.returncode == 2 and "no reference words in" in empty.stderr


@pytest.fixture(scope="module")
def encoded_dev(trained, tiny_data):
    """``(model, encoder_out, encoder_lens, cuts)`` of the trained model on the dev cuts."""
    model = load_model([trained / "epoch-3.pt"])
    cuts = load_manifest(tiny_data.dev)
    x = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(c.load_features()) for c in cuts], batch_first=True)
    with torch.no_grad():
        encoder_out, encoder_lens, _ = model.encoder(x, torch.tensor([c.num_frames for c in cuts]))
    return model, encoder_out, encoder_lens, cuts


def test_beam_one_equals_greedy(encoded_dev):
    model, encoder_out, encoder_lens, cuts = encoded_dev
    greedy = greedy_search(model, encoder_out, encoder_lens)
    assert greedy == modified_beam_search(model, encoder_out, encoder_lens, beam=1)
    # Batched greedy equals greedy utterance by utterance.
    for i in range(3):
        alone = greedy_search(model, encoder_out[i : i + 1, : encoder_lens[i]], encoder_lens[i : i + 1])
        assert alone[0] == greedy[i]
    beam4 = modified_beam_search(model, encoder_out, encoder_lens, beam=4)
    assert len(beam4) == len(cuts)


def test_blank_penalty_trades_deletions_for_insertions(encoded_dev):
    model, encoder_out, encoder_lens, _ = encoded_dev
    lengths = lambda penalty: [len(h) for h in greedy_search(model, encoder_out, encoder_lens, blank_penalty=penalty)]
    none, some = lengths(0.0), lengths(2.0)
    assert all(b >= a for a, b in zip(none, some)) and sum(some) > sum(none)
    # A prohibitive penalty emits a token on every encoder frame.
    assert lengths(1e4) == encoder_lens.tolist()
    beam = modified_beam_search(model, encoder_out, encoder_lens, beam=4, blank_penalty=1e4)
    assert [len(h) for h in beam] == encoder_lens.tolist()


def test_decode_script_writes_icefall_files(trained, tiny_data, tmp_path):
    cmd = [sys.executable, str(REPO / "local/decode.py"), "--exp-dir", str(trained), "--epoch", "3", "--avg", "2",
           "--bpe-model", str(tiny_data.bpe_model), "--method", "modified_beam_search", "--beam-size", "3",
           "--cuts", f"dev={tiny_data.dev}"]
    subprocess.run(cmd, check=True, capture_output=True)
    out = trained / "modified_beam_search"
    suffix = "epoch-3-avg-2-beam-3"
    errs = (out / f"errs-dev-{suffix}.txt").read_text()
    assert errs.startswith("%WER = ")
    recogs = (out / f"recogs-dev-{suffix}.txt").read_text().splitlines()
    assert len(recogs) == 2 * len(load_manifest(tiny_data.dev))
    assert recogs[0].split("\t")[1].startswith("ref=[")
    assert recogs[1].split("\t")[1].startswith("hyp=[")
    summary = (out / f"wer-summary-dev-{suffix}.txt").read_text().splitlines()
    assert summary[0] == "settings\tWER"
    assert float(summary[1].split("\t")[1]) == pytest.approx(float(errs.splitlines()[0].split("= ")[1]))


def test_decode_wav_files_any_rate(small_exp_dir, small_checkpoint, tiny_data, fsdd_dir, tmp_path):
    wav = fsdd_dir / "recordings" / "7_theo_3.wav"  # 8 kHz
    cd_rate = tmp_path / "7_theo_3_44k.wav"
    soundfile.write(cd_rate, Recording.from_file(wav).resample(44100).load_audio().T, 44100)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    base = [sys.executable, str(REPO / "local/decode.py"), "--exp-dir", str(small_exp_dir), "--checkpoint",
            str(small_checkpoint), "--bpe-model", str(tiny_data.bpe_model)]
    done = subprocess.run(base + ["--wavs", str(wav), str(cd_rate)], check=True, capture_output=True, text=True)
    hyps = dict(line.split("\t") for line in done.stdout.splitlines())
    # One spoken digit, the same at both rates: both reach the model as the same 16 kHz features
    # (up to resampling error). Which digit is the small test model's business.
    assert hyps.keys() == {"7_theo_3", "7_theo_3_44k"} and hyps["7_theo_3"] == hyps["7_theo_3_44k"]
    assert hyps["7_theo_3"] in DIGIT_WORDS
    failed = subprocess.run(base + ["--wavs", str(broken)], capture_output=True, text=True)
    assert failed.returncode != 0 and "broken.wav" in failed.stderr
