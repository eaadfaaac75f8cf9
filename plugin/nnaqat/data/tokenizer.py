"""Sentencepiece tokens with the k2/sherpa-onnx conventions: <blk>=0, <sos/eos>=1, <unk>=2."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, List

import sentencepiece as spm

BLANK, SOS_EOS, UNK = "<blk>", "<sos/eos>", "<unk>"
WORD_BOUNDARY = "\u2581"  # sentencepiece's word-boundary mark "▁"


def train_bpe(transcripts: Iterable[str], output_dir: Path | str, vocab_size: int, model_type: str = "unigram") -> Path:
    """Trains ``output_dir/bpe.model`` and writes ``output_dir/tokens.txt``; returns the model path.

    ``vocab_size`` is a soft limit: tiny corpora (digits) have fewer possible pieces.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    text_path = output_dir / "transcript_words.txt"
    text_path.write_text("".join(f"{t}\n" for t in transcripts))
    spm.SentencePieceTrainer.train(
        input=str(text_path),
        model_prefix=str(output_dir / "bpe"),
        model_type=model_type,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        user_defined_symbols=[BLANK, SOS_EOS],
        unk_id=2,
        bos_id=-1,
        eos_id=-1,
        input_sentence_size=100_000_000,
        minloglevel=2,
    )
    tokenizer = Tokenizer(output_dir / "bpe.model")
    (output_dir / "tokens.txt").write_text("".join(f"{tokenizer.id_to_piece(i)} {i}\n" for i in range(len(tokenizer))))
    return output_dir / "bpe.model"


class Tokenizer:
    """Text <-> token ids; rejects text the model cannot represent instead of emitting <unk>.

    With ``mark_repeats``, a word equal to the word before it is preceded by the bare
    word-boundary piece ``▁`` ("one one one" -> ``▁one ▁ ▁one ▁ ▁one``). A stateless predictor
    sees only its last ``k`` tokens, so in a run of more than ``k`` equal words its input stops
    changing and greedy search cannot tell whether it has already emitted the next word; with the
    marker every emission changes it. The marker detokenizes to a space, so decoders, sherpa-onnx
    and WER scoring need no change; it only shapes the training targets.
    """

    def __init__(self, model_path: Path | str, mark_repeats: bool = False) -> None:
        self.model_path = Path(model_path)
        self.sp = spm.SentencePieceProcessor(model_file=str(model_path))
        if self.sp.piece_to_id(BLANK) != 0 or self.sp.unk_id() != 2:
            raise ValueError(f"{model_path}: expected {BLANK}=0 and {UNK}=2")
        self.blank_id = 0
        self.unk_id = 2
        self.mark_repeats = mark_repeats
        self.repeat_marker_id = self.sp.piece_to_id(WORD_BOUNDARY)
        if mark_repeats and self.repeat_marker_id == self.unk_id:
            raise ValueError(f"{model_path}: no bare {WORD_BOUNDARY!r} piece to mark repeated words with")

    def with_repeat_marks(self, mark_repeats: bool) -> "Tokenizer":
        """This tokenizer if it already marks repeats as asked, else one of the same model that does
        (e.g. the targets a checkpoint's ``TransducerConfig.mark_repeats`` says it learned)."""
        return self if mark_repeats == self.mark_repeats else Tokenizer(self.model_path, mark_repeats)

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def id_to_piece(self, index: int) -> str:
        """The sentencepiece of token ``index`` (``<blk>``, ``<sos/eos>``, ``<unk>`` for 0-2)."""
        return self.sp.id_to_piece(index)

    def encode(self, text: str, utterance_id: str = "?") -> List[int]:
        """Token ids of ``text``; empty text or characters unknown to the model raise ValueError."""
        if not text or not text.strip():
            raise ValueError(f"utterance {utterance_id}: empty transcript")
        ids = self._encode_marking_repeats(text) if self.mark_repeats else self.sp.encode(text)
        if self.unk_id in ids:
            unknown = sorted({ch for ch in text if self.sp.encode(ch) and self.unk_id in self.sp.encode(ch)})
            raise ValueError(f"utterance {utterance_id}: transcript {text!r} has characters unknown to the tokenizer {unknown}")
        return ids

    def _encode_marking_repeats(self, text: str) -> List[int]:
        words = text.split()  # sentencepiece splits on whitespace first: the same pieces per word
        ids: List[int] = []
        for i, (word, pieces) in enumerate(zip(words, self.sp.encode(words))):
            if i > 0 and word == words[i - 1]:
                ids.append(self.repeat_marker_id)
            ids.extend(pieces)
        return ids

    def decode(self, ids: List[int]) -> str:
        """Token ids -> text, without the special tokens (0-2) and repeat markers."""
        return " ".join(self.sp.decode([i for i in ids if i > 2]).split())  # a repeat marker leaves a space
