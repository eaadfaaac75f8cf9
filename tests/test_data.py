"""Data preparation on the real FSDD recordings."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
from lhotse import CutSet, load_manifest

from nnaqat.data.datamodule import RandomGain, RandomMelWarp
from nnaqat.data.features import LOG_ENERGY_FLOOR, SAMPLING_RATE, compute_fbank, fbank_extractor, mel_bin_centers_hz
from nnaqat.data.fsdd import DIGIT_WORDS, ConnectedDigitsConfig, compose_connected_digits, prepare_fsdd
from nnaqat.data.tokenizer import Tokenizer, train_bpe


def test_manifest_counts_and_splits(fsdd_manifests):
    sizes = {split: len(parts["recordings"]) for split, parts in fsdd_manifests.items()}
    assert sizes == {"train": 2000, "dev": 250, "test": 250}
    ranges = {"test": range(0, 5), "dev": range(45, 50), "train": range(5, 45)}
    for split, parts in fsdd_manifests.items():
        for s in parts["supervisions"]:
            assert s.custom["take"] in ranges[split]
            assert s.text == DIGIT_WORDS[s.custom["digit"]]
        speakers = Counter(s.speaker for s in parts["supervisions"])
        assert set(speakers) == {"george", "jackson", "lucas", "theo", "yweweler"}


def test_connected_digits_no_leakage_and_deterministic(fsdd_manifests):
    words = {s: CutSet.from_manifests(**fsdd_manifests[s]) for s in ("train", "test")}
    split_of = {s.id: split for split, parts in fsdd_manifests.items() for s in parts["supervisions"]}
    first = compose_connected_digits(words["test"], 50, seed=7, prefix="test")
    again = compose_connected_digits(words["test"], 50, seed=7, prefix="test")
    other = compose_connected_digits(words["test"], 50, seed=8, prefix="test")
    assert [c.to_dict() for c in first] == [c.to_dict() for c in again]
    assert [c.supervisions[0].text for c in first] != [c.supervisions[0].text for c in other]
    for cut in first:
        (supervision,) = cut.supervisions
        sources = supervision.custom["source_ids"]
        assert 1 <= len(sources) <= 7
        assert {split_of[s] for s in sources} == {"test"}
        assert {s.split("_")[1] for s in sources} == {supervision.speaker}
        assert supervision.text.split() == [DIGIT_WORDS[int(s[0])] for s in sources]
        assert supervision.start == 0 and supervision.duration == pytest.approx(cut.duration)
    audio = first[0].load_audio()
    assert audio.shape[1] == pytest.approx(first[0].duration * 8000, abs=2)


def test_connected_digits_without_edge_silence_start_and_end_on_speech(fsdd_manifests):
    """Training utterances may have no silence at the edges (``--train-min-edge 0``), as a
    recording trimmed to the spoken word has; the words are the same draw as with silences."""
    words = CutSet.from_manifests(**fsdd_manifests["test"])
    tight = ConnectedDigitsConfig(min_edge=0.0, max_edge=0.0)
    bare = compose_connected_digits(words, 20, seed=7, prefix="test", config=tight)
    padded = compose_connected_digits(words, 20, seed=7, prefix="test")
    for cut, reference in zip(bare, padded):
        assert cut.supervisions[0].text == reference.supervisions[0].text
        assert cut.tracks[0].offset == 0 and all(t.cut.id.count("_w") for t in cut.tracks)  # no padding track
        spoken = sum(t.cut.duration for t in cut.tracks)
        assert spoken <= cut.duration < reference.duration  # words and the gaps between them only
    audio = bare[0].load_audio()
    assert audio.shape[1] == pytest.approx(bare[0].duration * 8000, abs=2) and abs(audio[0, 0]) > 0


def test_repeated_digits_are_drawn_more_often_with_repeat_prob(fsdd_manifests):
    words = CutSet.from_manifests(**fsdd_manifests["train"])

    def repeat_fraction(cuts) -> float:
        texts = [c.supervisions[0].text.split() for c in cuts]
        return sum(a == b for t in texts for a, b in zip(t, t[1:])) / sum(len(t) - 1 for t in texts)

    plain = compose_connected_digits(words, 400, seed=2, prefix="train")
    repeated = compose_connected_digits(words, 400, seed=2, prefix="train", config=ConnectedDigitsConfig(repeat_prob=0.5))
    assert repeat_fraction(plain) < 0.2 and 0.45 < repeat_fraction(repeated) < 0.65  # 0.5 + 0.5 * 0.1 expected
    for cut in repeated:  # the text still names the recordings the audio is made of, one speaker each
        (supervision,) = cut.supervisions
        sources = supervision.custom["source_ids"]
        assert supervision.text.split() == [DIGIT_WORDS[int(s[0])] for s in sources]
        assert {s.split("_")[1] for s in sources} == {supervision.speaker}


def test_holdout_speaker_restricts_composition(fsdd_manifests):
    words = CutSet.from_manifests(**fsdd_manifests["train"])
    cuts = compose_connected_digits(words, 40, seed=1, prefix="train", speakers=["george", "lucas"])
    assert {c.supervisions[0].speaker for c in cuts} == {"george", "lucas"}
    with pytest.raises(ValueError, match="nobody"):
        compose_connected_digits(words, 4, seed=1, prefix="x", speakers=["nobody"])


def test_fbank_features_match_settings(fsdd_manifests, tmp_path):
    words = CutSet.from_manifests(**fsdd_manifests["test"])
    cuts = compose_connected_digits(words, 3, seed=3, prefix="test")
    with_feats = compute_fbank(cuts, tmp_path / "feats", speed_factors=[0.9])
    assert len(with_feats) == 6
    for cut in with_feats:
        feats = cut.load_features()
        assert feats.shape == (cut.num_frames, 80)
        assert cut.num_frames == pytest.approx(cut.duration * 100, abs=1)
        assert cut.supervisions[0].text
    # Speed 0.9 lengthens the utterance by 1/0.9.
    assert with_feats[3].duration == pytest.approx(with_feats[0].duration / 0.9, rel=1e-3)
    # Stored features equal a fresh extraction at 16 kHz (lilcom is lossy: small tolerance).
    audio = cuts[0].resample(16000).load_audio()
    fresh = fbank_extractor().extract(audio, 16000)
    np.testing.assert_allclose(with_feats[0].load_features(), fresh, atol=0.1)


def test_random_gain_equals_the_fbank_of_scaled_audio(fsdd_manifests, monkeypatch):
    import torch

    audio = fsdd_manifests["test"]["recordings"][0].resample(SAMPLING_RATE).load_audio()
    extractor = fbank_extractor()
    features = torch.from_numpy(extractor.extract(audio, SAMPLING_RATE))[None]
    below_floor = features[0].numpy() <= LOG_ENERGY_FLOOR + 1e-4
    for draw, db in ((1.0, 10.0), (0.0, -10.0)):  # the two ends of the gain range
        scaled = extractor.extract(audio * 10.0 ** (db / 20.0), SAMPLING_RATE)
        monkeypatch.setattr(torch, "rand", lambda *size: torch.full(size, draw))
        gained = RandomGain(10.0)(features)[0].numpy()
        monkeypatch.undo()
        # Entries at the floor stay there (their energy is unknown below it); every other entry,
        # clamped ones included, is the scaled audio's fbank.
        assert (gained[below_floor] == features[0].numpy()[below_floor]).all()
        np.testing.assert_allclose(gained[~below_floor], scaled[~below_floor], atol=2e-3)
        if db < 0:
            assert (scaled <= LOG_ENERGY_FLOOR + 1e-4).sum() > below_floor.sum()  # the clamp was exercised


def test_mel_warp_moves_a_tone_like_a_frequency_scale():
    import torch

    extractor = fbank_extractor()
    t = np.arange(SAMPLING_RATE // 2) / SAMPLING_RATE
    fbank = lambda hz: torch.from_numpy(extractor.extract(np.sin(2 * np.pi * hz * t).astype(np.float32), SAMPLING_RATE))
    tone = fbank(1000.0)[None]
    warp = RandomMelWarp(0.2, mel_bin_centers_hz())
    assert torch.allclose(warp.warp(tone, torch.tensor([1.0])), tone, atol=1e-3)
    for alpha in (0.85, 1.15):
        warped = warp.warp(tone, torch.tensor([alpha]))
        assert warped.shape == tone.shape
        expected = fbank(1000.0 * alpha).mean(0).argmax()
        assert abs(int(warped[0].mean(0).argmax()) - int(expected)) <= 1
    torch.manual_seed(0)
    assert warp(tone.repeat(3, 1, 1)).shape == (3, *tone.shape[1:])


def test_corrupt_audio_names_the_file(fsdd_dir, tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "recordings").mkdir(parents=True)
    for name in ("1_theo_3.wav", "2_theo_10.wav"):
        shutil.copy(fsdd_dir / "recordings" / name, corpus / "recordings" / name)
    bad = corpus / "recordings" / "3_theo_7.wav"
    bad.write_bytes(b"RIFF\x00\x00not really a wave file")
    with pytest.raises(ValueError, match="3_theo_7.wav"):
        prepare_fsdd(corpus)
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match="3_theo_7.wav"):
        prepare_fsdd(corpus)
    bad.unlink()
    (corpus / "recordings" / "x_theo.wav").write_bytes(b"")
    with pytest.raises(ValueError, match="x_theo.wav"):
        prepare_fsdd(corpus)


def test_manifests_written(fsdd_dir, tmp_path):
    prepare_fsdd(fsdd_dir, output_dir=tmp_path)
    supervisions = load_manifest(tmp_path / "fsdd_supervisions_dev.jsonl.gz")
    assert len(supervisions) == 250


def test_tokenizer_conventions_and_bad_transcripts(tmp_path):
    model = train_bpe([" ".join(DIGIT_WORDS)] * 20 + ["one two", "nine"], tmp_path, vocab_size=32)
    lines = (tmp_path / "tokens.txt").read_text().splitlines()
    assert lines[:3] == ["<blk> 0", "<sos/eos> 1", "<unk> 2"]
    tokenizer = Tokenizer(model)
    ids = tokenizer.encode("three one four")
    assert tokenizer.decode(ids) == "three one four"
    with pytest.raises(ValueError, match="utt-7.*empty"):
        tokenizer.encode("  ", "utt-7")
    with pytest.raises(ValueError, match="utt-8.*unknown"):
        tokenizer.encode("one QUX", "utt-8")


def test_repeat_marker_changes_every_stateless_context_and_decodes_away(tmp_path):
    model = train_bpe([" ".join(DIGIT_WORDS)] * 20 + ["one one two", "nine"], tmp_path, vocab_size=32)
    plain, marked = Tokenizer(model), Tokenizer(model, mark_repeats=True)
    text = "one one one two two nine"
    ids = marked.encode(text)
    assert marked.id_to_piece(marked.repeat_marker_id) == "\u2581"
    assert len(ids) == len(plain.encode(text)) + 3  # one marker per repeated word
    windows = [tuple(ids[max(0, i - 1) : i + 1]) for i in range(len(ids))]  # a 2-token predictor's input
    assert all(a != b for a, b in zip(windows, windows[1:]))
    assert marked.decode(ids) == text
    assert marked.encode("three one four") == plain.encode("three one four")  # no repeats, no markers
    assert plain.with_repeat_marks(False) is plain and plain.with_repeat_marks(True).encode(text) == ids
