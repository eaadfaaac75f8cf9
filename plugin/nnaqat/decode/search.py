"""Batched transducer search over encoder outputs: greedy and modified beam search.

Both emit at most one symbol per encoder frame (the "modified" topology), which is what the
pruned loss trains for and what sherpa-onnx decodes with.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from nnaqat.models.transducer import Transducer


def _first_decoder_out(model: Transducer, batch_size: int, device: torch.device):
    """Projected predictor output and state after the initial blank, for ``batch_size`` rows."""
    blank = torch.full((batch_size,), model.blank_id, dtype=torch.long, device=device)
    out, state = model.predictor.step(blank, model.predictor.initial_state(batch_size, device))
    return model.joiner.decoder_proj(out), state


@torch.no_grad()
def greedy_search(model: Transducer, encoder_out: torch.Tensor, encoder_lens: torch.Tensor) -> List[List[int]]:
    """Greedy search, all utterances of the batch in step.

    Args:
      encoder_out: ``(N, T, E)`` encoder output; encoder_lens ``(N,)``.
    Returns:
      Token ids per utterance (blank excluded).
    """
    predictor, joiner = model.predictor, model.joiner
    n = encoder_out.size(0)
    enc = joiner.encoder_proj(encoder_out)
    dec, state = _first_decoder_out(model, n, encoder_out.device)
    hyps: List[List[int]] = [[] for _ in range(n)]
    for t in range(int(encoder_lens.max())):
        logits = joiner(enc[:, t], dec, project_input=False)
        tokens = logits.argmax(dim=-1)
        emit = (tokens != model.blank_id) & (encoder_lens > t)
        if not bool(emit.any()):
            continue
        rows = emit.nonzero().flatten()
        for i in rows.tolist():
            hyps[i].append(int(tokens[i]))
        new_out, new_state = predictor.step(tokens[rows], predictor.select_state(state, rows))
        dec = dec.clone()
        dec[rows] = joiner.decoder_proj(new_out)
        state = _scatter_state(state, rows, new_state)
    return hyps


def _scatter_state(state, rows: torch.Tensor, new_rows):
    """Writes ``new_rows`` of a batched predictor state into rows ``rows`` of ``state``."""
    if isinstance(state, tuple):
        out = tuple(s.clone() for s in state)
        for s, n in zip(out, new_rows):
            s[:, rows] = n
        return out
    out = state.clone()
    out[rows] = new_rows
    return out


@torch.no_grad()
def modified_beam_search(
    model: Transducer, encoder_out: torch.Tensor, encoder_lens: torch.Tensor, beam: int = 4
) -> List[List[int]]:
    """Beam search with at most one symbol per frame; hypotheses with equal tokens are merged.

    All hypotheses of all utterances go through the joiner and the predictor together, frame
    by frame.

    Args:
      encoder_out: ``(N, T, E)``; encoder_lens ``(N,)``; beam: hypotheses kept per utterance.
    Returns:
      The best token sequence per utterance (by total log-probability).
    """
    predictor, joiner = model.predictor, model.joiner
    n = encoder_out.size(0)
    device = encoder_out.device
    enc = joiner.encoder_proj(encoder_out)
    dec0, state0 = _first_decoder_out(model, 1, device)
    # Per utterance: token tuples, scores (K,), projected decoder outputs (K, J), predictor state (K rows).
    beams: List[Tuple[List[tuple], torch.Tensor, torch.Tensor, object]] = [
        ([()], torch.zeros(1, device=device), dec0, state0) for _ in range(n)
    ]
    for t in range(int(encoder_lens.max())):
        active = [i for i in range(n) if int(encoder_lens[i]) > t]
        sizes = [len(beams[i][0]) for i in active]
        dec = torch.cat([beams[i][2] for i in active])
        enc_rows = torch.cat([enc[i, t].expand(k, -1) for i, k in zip(active, sizes)])
        log_probs = joiner(enc_rows, dec, project_input=False).log_softmax(dim=-1)
        vocab = log_probs.size(1)

        offset = 0
        expansions = []  # (utterance, parent row in its beam, token, score, new tokens)
        plans = {}
        for i, k in zip(active, sizes):
            ys, scores, _, _ = beams[i]
            total = (scores[:, None] + log_probs[offset : offset + k]).flatten()
            offset += k
            top_scores, top_index = total.topk(min(beam, total.numel()))
            merged: Dict[tuple, Tuple[float, int, int]] = {}
            for score, index in zip(top_scores.tolist(), top_index.tolist()):
                parent, token = divmod(index, vocab)
                new_ys = ys[parent] if token == model.blank_id else ys[parent] + (token,)
                if new_ys in merged:
                    old_score, old_parent, old_token = merged[new_ys]
                    merged[new_ys] = (float(torch.logaddexp(torch.tensor(old_score), torch.tensor(score))), old_parent, old_token)
                else:
                    merged[new_ys] = (score, parent, token)
            plans[i] = merged
            expansions.extend(
                (i, parent, token) for (parent_ys, (_, parent, token)) in merged.items() if token != model.blank_id
            )

        # One predictor call for every hypothesis that emitted a token.
        stepped = {}
        if expansions:
            tokens = torch.tensor([tok for _, _, tok in expansions], device=device)
            states = predictor.concat_states(
                [predictor.select_state(beams[i][3], torch.tensor([parent], device=device)) for i, parent, _ in expansions]
            )
            out, new_states = predictor.step(tokens, states)
            new_dec = joiner.decoder_proj(out)
            for row, (i, parent, token) in enumerate(expansions):
                stepped[(i, parent, token)] = (new_dec[row : row + 1], predictor.select_state(new_states, torch.tensor([row], device=device)))

        for i in active:
            ys, _, dec_i, state_i = beams[i]
            new_ys, new_scores, new_dec, new_state = [], [], [], []
            for key, (score, parent, token) in plans[i].items():
                new_ys.append(key)
                new_scores.append(score)
                if token == model.blank_id:
                    index = torch.tensor([parent], device=device)
                    new_dec.append(dec_i[index])
                    new_state.append(predictor.select_state(state_i, index))
                else:
                    d, s = stepped[(i, parent, token)]
                    new_dec.append(d)
                    new_state.append(s)
            beams[i] = (new_ys, torch.tensor(new_scores, device=device), torch.cat(new_dec), predictor.concat_states(new_state))

    return [list(ys[int(scores.argmax())]) for ys, scores, _, _ in beams]


def search(
    model: Transducer, encoder_out: torch.Tensor, encoder_lens: torch.Tensor, method: str, beam: int = 4
) -> List[List[int]]:
    """Dispatches to ``greedy_search`` or ``modified_beam_search`` by name."""
    if method == "greedy_search":
        return greedy_search(model, encoder_out, encoder_lens)
    if method == "modified_beam_search":
        return modified_beam_search(model, encoder_out, encoder_lens, beam)
    raise ValueError(f"unknown decoding method {method!r}; use greedy_search or modified_beam_search")
