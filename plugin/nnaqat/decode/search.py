"""Transducer search: greedy and modified beam search, batched, resumable across blocks.

Both emit at most one symbol per encoder frame (the "modified" topology), which is what the
pruned loss trains for and what sherpa-onnx decodes with. Each stream owns a search state that
``advance`` extends by a block of encoder frames; a block may hold many streams, each with its
own number of valid frames. Offline decoding is one block holding the whole utterance, so
streaming in any number of blocks gives the offline hypothesis by construction.

Every token remembers the encoder frame it was emitted on, for latency measurements.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import torch

from nnaqat.models.transducer import Transducer

PredictorState = Any  # one predictor's state type (token history, or an LSTM's (h, c))


def _blank_start(model: Transducer) -> Tuple[torch.Tensor, PredictorState]:
    """Projected predictor output ``(1, J)`` and state after the initial blank."""
    predictor = model.predictor
    device = next(model.parameters()).device
    blank = torch.full((1,), model.blank_id, dtype=torch.long, device=device)
    out, state = predictor.step(blank, predictor.initial_state(1, device))
    return model.joiner.decoder_proj(out), state


def _row(predictor, state: PredictorState, index: int) -> PredictorState:
    return predictor.select_state(state, torch.tensor([index], device=_device(state)))


def _device(state: PredictorState) -> torch.device:
    return (state[0] if isinstance(state, tuple) else state).device


@dataclass
class GreedyHypothesis:
    """One stream's greedy search state."""

    decoder_out: torch.Tensor  # (1, J), projected
    state: PredictorState  # one row
    tokens: List[int] = field(default_factory=list)
    frames: List[int] = field(default_factory=list)  # encoder frame of each token


def penalize_blank(logits: torch.Tensor, blank_id: int, blank_penalty: float) -> torch.Tensor:
    """``logits (..., V)`` with ``blank_penalty`` subtracted from the blank logit (as sherpa-onnx's
    ``blank_penalty``): a positive penalty trades deletions for insertions."""
    if blank_penalty == 0.0:
        return logits
    logits = logits.clone()
    logits[..., blank_id] -= blank_penalty
    return logits


class GreedySearch:
    """Greedy search, at most one symbol per frame, over blocks of frames of many streams."""

    def __init__(self, model: Transducer, blank_penalty: float = 0.0) -> None:
        self.model = model
        self.blank_penalty = blank_penalty

    @torch.no_grad()
    def initial(self) -> GreedyHypothesis:
        """One empty hypothesis: the predictor's output ``(1, J)`` after a blank, and its state."""
        decoder_out, state = _blank_start(self.model)
        return GreedyHypothesis(decoder_out, state)

    @torch.no_grad()
    def advance(
        self,
        hyps: Sequence[GreedyHypothesis],
        encoder_out: torch.Tensor,
        valid: torch.Tensor,
        first_frame: Sequence[int],
    ) -> None:
        """Extends every hypothesis in place.

        Args:
          hyps: one state per stream (S).
          encoder_out: ``(S, K, J)`` encoder frames, already through the joiner's encoder projection.
          valid: ``(S,)`` frames of each row to use (the rest is padding).
          first_frame: each stream's index of ``encoder_out[:, 0]`` in its whole utterance.
        """
        model = self.model
        predictor, joiner = model.predictor, model.joiner
        dec = torch.cat([h.decoder_out for h in hyps])
        states = [h.state for h in hyps]
        for t in range(int(valid.max()) if len(hyps) else 0):
            logits = joiner(encoder_out[:, t], dec, project_input=False)
            tokens = penalize_blank(logits, model.blank_id, self.blank_penalty).argmax(dim=-1)
            emit = (tokens != model.blank_id) & (valid > t)
            rows = emit.nonzero().flatten().tolist()
            if not rows:
                continue
            out, new_state = predictor.step(tokens[rows], predictor.concat_states([states[i] for i in rows]))
            dec = dec.clone()
            dec[rows] = joiner.decoder_proj(out)
            for j, i in enumerate(rows):
                states[i] = _row(predictor, new_state, j)
                hyps[i].tokens.append(int(tokens[i]))
                hyps[i].frames.append(first_frame[i] + t)
        for i, h in enumerate(hyps):
            h.decoder_out, h.state = dec[i : i + 1], states[i]

    @staticmethod
    def best(hyp: GreedyHypothesis) -> Tuple[List[int], List[int]]:
        """``(tokens, emission frames)``."""
        return list(hyp.tokens), list(hyp.frames)


@dataclass
class Beam:
    """One stream's beam: K hypotheses in the order the search ranked them."""

    ys: List[Tuple[int, ...]]
    frames: List[Tuple[int, ...]]  # encoder frame of each token of each hypothesis
    scores: torch.Tensor  # (K,) total log-probabilities
    decoder_out: torch.Tensor  # (K, J), projected
    state: PredictorState  # K rows


class ModifiedBeamSearch:
    """Modified beam search (one symbol per frame, equal token sequences merged) over blocks of frames."""

    def __init__(self, model: Transducer, beam: int = 4, blank_penalty: float = 0.0) -> None:
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        self.model = model
        self.beam = beam
        self.blank_penalty = blank_penalty

    @torch.no_grad()
    def initial(self) -> Beam:
        """A beam of one empty hypothesis (score 0, predictor output ``(1, J)`` after a blank)."""
        decoder_out, state = _blank_start(self.model)
        return Beam([()], [()], torch.zeros(1, device=decoder_out.device), decoder_out, state)

    @torch.no_grad()
    def advance(
        self, beams: Sequence[Beam], encoder_out: torch.Tensor, valid: torch.Tensor, first_frame: Sequence[int]
    ) -> None:
        """Extends every beam in place; arguments as :meth:`GreedySearch.advance`."""
        for t in range(int(valid.max()) if len(beams) else 0):
            active = [i for i in range(len(beams)) if int(valid[i]) > t]
            self._frame([beams[i] for i in active], encoder_out[active, t], [first_frame[i] + t for i in active])

    def _frame(self, beams: List[Beam], enc: torch.Tensor, frame: List[int]) -> None:
        """One frame ``enc (S, J)`` of S streams, all hypotheses through the joiner together."""
        model, predictor, joiner = self.model, self.model.predictor, self.model.joiner
        sizes = [len(b.ys) for b in beams]
        enc_rows = torch.cat([enc[i].expand(k, -1) for i, k in enumerate(sizes)])
        logits = joiner(enc_rows, torch.cat([b.decoder_out for b in beams]), project_input=False)
        log_probs = penalize_blank(logits, model.blank_id, self.blank_penalty).log_softmax(dim=-1)
        vocab = log_probs.size(1)

        plans: List[Dict[tuple, Tuple[float, int, int]]] = []
        offset = 0
        for b, k in zip(beams, sizes):
            total = (b.scores[:, None] + log_probs[offset : offset + k]).flatten()
            offset += k
            top_scores, top_index = total.topk(min(self.beam, total.numel()))
            merged: Dict[tuple, Tuple[float, int, int]] = {}  # ys -> (score, parent, token), first ranked kept
            for score, index in zip(top_scores.tolist(), top_index.tolist()):
                parent, token = divmod(index, vocab)
                ys = b.ys[parent] if token == model.blank_id else b.ys[parent] + (token,)
                if ys in merged:
                    old, old_parent, old_token = merged[ys]
                    merged[ys] = (float(torch.logaddexp(torch.tensor(old), torch.tensor(score))), old_parent, old_token)
                else:
                    merged[ys] = (score, parent, token)
            plans.append(merged)

        # One predictor call for every hypothesis that emitted a token.
        expansions = [
            (s, parent, token)
            for s, merged in enumerate(plans)
            for _, parent, token in merged.values()
            if token != model.blank_id
        ]
        stepped = {}
        if expansions:
            tokens = torch.tensor([token for _, _, token in expansions], device=enc.device)
            states = predictor.concat_states([_row(predictor, beams[s].state, parent) for s, parent, _ in expansions])
            out, new_states = predictor.step(tokens, states)
            new_dec = joiner.decoder_proj(out)
            for row, key in enumerate(expansions):
                stepped[key] = (new_dec[row : row + 1], _row(predictor, new_states, row))

        for s, (b, merged) in enumerate(zip(beams, plans)):
            ys, frames, scores, decs, states = [], [], [], [], []
            for key, (score, parent, token) in merged.items():
                ys.append(key)
                scores.append(score)
                if token == model.blank_id:
                    frames.append(b.frames[parent])
                    decs.append(b.decoder_out[parent : parent + 1])
                    states.append(_row(predictor, b.state, parent))
                else:
                    frames.append(b.frames[parent] + (frame[s],))
                    dec, state = stepped[(s, parent, token)]
                    decs.append(dec)
                    states.append(state)
            b.ys, b.frames, b.scores = ys, frames, torch.tensor(scores, device=enc.device)
            b.decoder_out, b.state = torch.cat(decs), predictor.concat_states(states)

    @staticmethod
    def best(beam: Beam) -> Tuple[List[int], List[int]]:
        """The highest-scoring hypothesis: ``(tokens, emission frames)``."""
        k = int(beam.scores.argmax())
        return list(beam.ys[k]), list(beam.frames[k])


METHODS = ("greedy_search", "modified_beam_search")


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """``--method --beam-size --blank-penalty``, as every decoding script takes them."""
    parser.add_argument("--method", default="greedy_search", choices=METHODS)
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--blank-penalty", type=float, default=0.0,
                        help="subtracted from the blank logit (sherpa-onnx's blank_penalty); fewer deletions")


def make_search(
    model: Transducer, method: str, beam: int = 4, blank_penalty: float = 0.0
) -> GreedySearch | ModifiedBeamSearch:
    """``greedy_search`` or ``modified_beam_search`` by name."""
    if method == "greedy_search":
        return GreedySearch(model, blank_penalty)
    if method == "modified_beam_search":
        return ModifiedBeamSearch(model, beam, blank_penalty)
    raise ValueError(f"unknown decoding method {method!r}; use greedy_search or modified_beam_search")


@torch.no_grad()
def search(
    model: Transducer,
    encoder_out: torch.Tensor,
    encoder_lens: torch.Tensor,
    method: str,
    beam: int = 4,
    blank_penalty: float = 0.0,
) -> List[List[int]]:
    """Offline search of a padded batch: every utterance as one block.

    Args:
      encoder_out: ``(N, T, E)`` encoder output (before the joiner's projection); encoder_lens ``(N,)``.
      method: ``greedy_search`` or ``modified_beam_search``; beam: hypotheses kept per utterance.
      blank_penalty: subtracted from the blank logit before the argmax / log-softmax.
    Returns:
      Token ids per utterance (blank excluded); for beam search the highest-scoring hypothesis.
    """
    searcher = make_search(model, method, beam, blank_penalty)
    states = [searcher.initial() for _ in range(encoder_out.size(0))]
    searcher.advance(states, model.joiner.encoder_proj(encoder_out), encoder_lens, [0] * len(states))
    return [searcher.best(s)[0] for s in states]


def greedy_search(
    model: Transducer, encoder_out: torch.Tensor, encoder_lens: torch.Tensor, blank_penalty: float = 0.0
) -> List[List[int]]:
    """:func:`search` with ``greedy_search``."""
    return search(model, encoder_out, encoder_lens, "greedy_search", blank_penalty=blank_penalty)


def modified_beam_search(
    model: Transducer, encoder_out: torch.Tensor, encoder_lens: torch.Tensor, beam: int = 4, blank_penalty: float = 0.0
) -> List[List[int]]:
    """:func:`search` with ``modified_beam_search``."""
    return search(model, encoder_out, encoder_lens, "modified_beam_search", beam, blank_penalty)
