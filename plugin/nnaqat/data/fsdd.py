"""Free Spoken Digit Dataset (FSDD): download, lhotse manifests, connected-digit utterances.

FSDD holds isolated digits (``{digit}_{speaker}_{take}.wav``, 8 kHz). Isolated words are too
easy for a transducer, so utterances are built TIDIGITS-style by joining 1-7 recordings of one
speaker and one split with short random silences, deterministically from a seed.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import soundfile as sf
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.cut import Cut, MixedCut, PaddingCut
from lhotse.cut.mixed import MixTrack
from lhotse.utils import LOG_EPSILON, compute_num_samples, fastcopy

FSDD_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
FSDD_URL = f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/{FSDD_COMMIT}.tar.gz"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FILENAME = re.compile(r"^(?P<digit>[0-9])_(?P<speaker>[a-z]+)_(?P<take>[0-9]+)\.wav$")


@dataclass(frozen=True)
class TakeSplit:
    """Official FSDD split by take index: test 0-4; we carve dev 45-49 out of train."""

    test: Tuple[int, int] = (0, 4)
    dev: Tuple[int, int] = (45, 49)

    def split_of(self, take: int) -> str:
        if self.test[0] <= take <= self.test[1]:
            return "test"
        if self.dev[0] <= take <= self.dev[1]:
            return "dev"
        return "train"


def download_fsdd(target_dir: Path | str, local_tarball: Optional[Path | str] = None) -> Path:
    """Makes ``target_dir/free-spoken-digit-dataset/recordings`` exist and returns the corpus dir.

    Uses ``local_tarball`` when given (an archive whose top folder holds ``recordings/``), else
    downloads upstream at the pinned commit. Does nothing when the recordings are there already.
    """
    target_dir = Path(target_dir)
    corpus_dir = target_dir / "free-spoken-digit-dataset"
    if (corpus_dir / "recordings").is_dir():
        return corpus_dir
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
        if local_tarball is None:
            archive = Path(tmp) / "fsdd.tar.gz"
            logging.info("downloading %s", FSDD_URL)
            urllib.request.urlretrieve(FSDD_URL, archive)
        else:
            archive = Path(local_tarball)
            if not archive.is_file():
                raise FileNotFoundError(f"FSDD tarball not found: {archive}")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        found = [p.parent for p in Path(tmp).glob("*/recordings")]
        if len(found) != 1:
            raise ValueError(f"{archive}: expected one top-level folder with recordings/, found {found}")
        shutil.move(str(found[0]), corpus_dir)
    return corpus_dir


def _read_recording(path: Path) -> Recording:
    """A lhotse Recording for ``path``; unreadable or empty audio raises naming the file."""
    try:
        info = sf.info(str(path))
    except Exception as error:  # soundfile raises several types for corrupt headers
        raise ValueError(f"{path}: unreadable audio ({error})") from error
    if info.frames == 0 or info.channels != 1:
        raise ValueError(f"{path}: expected non-empty mono audio, got {info.frames} frames x {info.channels} channels")
    return Recording.from_file(path)


def prepare_fsdd(
    corpus_dir: Path | str, split: TakeSplit = TakeSplit(), output_dir: Optional[Path | str] = None
) -> Dict[str, Dict[str, RecordingSet | SupervisionSet]]:
    """Lhotse recordings and supervisions per split (``train``/``dev``/``test``).

    Each supervision covers one word and carries ``speaker`` and ``custom={"digit", "take"}``.
    Files not named ``{digit}_{speaker}_{take}.wav`` and unreadable audio raise ValueError.
    With ``output_dir``, writes ``fsdd_{recordings,supervisions}_{split}.jsonl.gz`` there.
    """
    recordings_dir = Path(corpus_dir) / "recordings"
    paths = sorted(recordings_dir.glob("*.wav"))
    if not paths:
        raise FileNotFoundError(f"no .wav files in {recordings_dir}")
    by_split: Dict[str, Tuple[List[Recording], List[SupervisionSegment]]] = {}
    for path in paths:
        match = FILENAME.match(path.name)
        if match is None:
            raise ValueError(f"{path}: file name is not {{digit}}_{{speaker}}_{{take}}.wav")
        recording = _read_recording(path)
        take = int(match["take"])
        supervision = SupervisionSegment(
            id=recording.id,
            recording_id=recording.id,
            start=0.0,
            duration=recording.duration,
            text=DIGIT_WORDS[int(match["digit"])],
            speaker=match["speaker"],
            language="English",
            custom={"digit": int(match["digit"]), "take": take},
        )
        recordings, supervisions = by_split.setdefault(split.split_of(take), ([], []))
        recordings.append(recording)
        supervisions.append(supervision)

    manifests = {
        name: {"recordings": RecordingSet.from_recordings(r), "supervisions": SupervisionSet.from_segments(s)}
        for name, (r, s) in sorted(by_split.items())
    }
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        for name, parts in manifests.items():
            parts["recordings"].to_file(output_dir / f"fsdd_recordings_{name}.jsonl.gz")
            parts["supervisions"].to_file(output_dir / f"fsdd_supervisions_{name}.jsonl.gz")
    return manifests


@dataclass(frozen=True)
class ConnectedDigitsConfig:
    """How connected-digit utterances are drawn."""

    min_digits: int = 1
    max_digits: int = 7
    min_gap: float = 0.05  # seconds of silence between words
    max_gap: float = 0.30
    min_edge: float = 0.10  # seconds of silence before the first and after the last word
    max_edge: float = 0.30
    # Chance that a word repeats the previous digit (another recording of it) instead of being
    # drawn at random: repeated digits are what a transducer finds hardest to emit twice.
    repeat_prob: float = 0.0


def compose_connected_digits(
    cuts: CutSet,
    num_utterances: int,
    seed: int,
    prefix: str,
    config: ConnectedDigitsConfig = ConnectedDigitsConfig(),
    speakers: Optional[Sequence[str]] = None,
) -> CutSet:
    """Joins single-word cuts of one speaker into connected-digit utterances.

    Args:
      cuts: one single-word supervision per cut (as from :func:`prepare_fsdd`).
      num_utterances: how many utterances to draw; speakers take turns.
      seed: the draw is a pure function of ``seed`` and the inputs' ids.
      prefix: utterance ids are ``{prefix}-{speaker}-{index:05d}``.
      speakers: restrict to these speakers (default: all in ``cuts``).
    Returns:
      Lazily mixed cuts (audio joined on load), each with one supervision spanning the whole
      utterance whose text is the space-joined words.
    """
    pools: Dict[str, List[Cut]] = {}
    for cut in sorted(cuts, key=lambda c: c.id):
        pools.setdefault(cut.supervisions[0].speaker, []).append(cut)
    chosen = sorted(speakers) if speakers is not None else sorted(pools)
    missing = [s for s in chosen if s not in pools]
    if missing:
        raise ValueError(f"speakers {missing} have no recordings in this split")
    if not chosen:
        raise ValueError("no speakers to compose utterances from (no cuts, or an empty speaker list)")
    rng = random.Random(seed)
    composed = []
    for index in range(num_utterances):
        speaker = chosen[index % len(chosen)]
        words: List[Cut] = []
        for _ in range(rng.randint(config.min_digits, config.max_digits)):
            if words and config.repeat_prob > 0 and rng.random() < config.repeat_prob:
                digit = words[-1].supervisions[0].text
                words.append(rng.choice([c for c in pools[speaker] if c.supervisions[0].text == digit]))
            else:
                words.append(rng.choice(pools[speaker]))
        gaps = [rng.uniform(config.min_gap, config.max_gap) for _ in words[1:]]
        edges = (rng.uniform(config.min_edge, config.max_edge), rng.uniform(config.min_edge, config.max_edge))
        composed.append(_join(f"{prefix}-{speaker}-{index:05d}", words, gaps, edges))
    return CutSet.from_cuts(composed)


def _join(cut_id: str, words: List[Cut], gaps: List[float], edges: Tuple[float, float]) -> Cut:
    """One mixed cut: ``edges[0]`` silence, the words separated by ``gaps``, ``edges[1]`` silence."""
    tracks, offset = [], edges[0]
    for i, word in enumerate(words):
        tracks.append(MixTrack(cut=fastcopy(word, id=f"{cut_id}_w{i}", supervisions=[]), offset=offset))
        offset += word.duration + (gaps[i] if i < len(gaps) else 0.0)
    sampling_rate = words[0].sampling_rate
    tail_samples = compute_num_samples(edges[1], sampling_rate)
    if tail_samples > 0:
        tail = PaddingCut(id=f"{cut_id}_pad", duration=edges[1], sampling_rate=sampling_rate,
                          feat_value=LOG_EPSILON, num_samples=tail_samples)
        tracks.append(MixTrack(cut=tail, offset=offset))
    joined = MixedCut(id=cut_id, tracks=tracks)
    # One supervision spanning the utterance, anchored on the first word's track.
    first = joined.tracks[0]
    first.cut.supervisions = [
        SupervisionSegment(
            id=cut_id,
            recording_id=first.cut.recording_id,
            start=-first.offset,
            duration=joined.duration,
            text=" ".join(w.supervisions[0].text for w in words),
            speaker=words[0].supervisions[0].speaker,
            language="English",
            custom={"source_ids": [w.supervisions[0].id for w in words]},
        )
    ]
    return joined


def speakers_of(cuts: Iterable[Cut]) -> List[str]:
    """Sorted speakers of the first supervision of each cut."""
    return sorted({c.supervisions[0].speaker for c in cuts})
