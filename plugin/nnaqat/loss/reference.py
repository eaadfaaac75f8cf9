"""Pure-PyTorch reference implementation of the full (unpruned) RNN-T loss.

This is a slow but simple implementation intended for testing the fast
(k2 / fast_rnnt) losses.  It runs the standard log-space forward recursion
over the ``(T, U + 1)`` lattice, vectorised along anti-diagonals ``t + u = n``
and across the batch, and relies on autograd for gradients.

The lattice convention is the usual ("regular") RNN-T one, and matches
``fast_rnnt.rnnt_loss(..., rnnt_type="regular")``::

    alpha[0, 0] = 0
    alpha[t, u] = logaddexp(alpha[t-1, u] + blank_lp[t-1, u],
                            alpha[t, u-1] + label_lp[t, u-1])
    loss = -(alpha[T-1, U] + blank_lp[T-1, U])

where ``blank_lp[t, u] = log_softmax(logits[t, u])[blank]`` and
``label_lp[t, u] = log_softmax(logits[t, u])[targets[u]]``.
"""

from __future__ import annotations

import torch

__all__ = ["reference_rnnt_loss"]

# Finite stand-in for log(0).  Using -inf would make the backward pass of
# logaddexp(-inf, -inf) produce NaNs; a large finite value keeps all
# gradients well defined (and exactly zero for impossible paths).
_NEG = -1.0e30


def _as_length_tensor(x: torch.Tensor, name: str, batch: int, device: torch.device) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 1 or x.shape[0] != batch:
        raise ValueError(f"{name} must have shape [B]=[{batch}], got {tuple(x.shape)}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {x.dtype}")
    return x.to(device=device, dtype=torch.int64)


def reference_rnnt_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
) -> torch.Tensor:
    """Full RNN-T negative log-likelihood per utterance (reference version).

    Args:
      logits: ``[B, T, U+1, V]`` unnormalised joiner outputs (``log_softmax``
        over ``V`` is applied here).  Floating point.
      targets: ``[B, U]`` integer label sequences, padded.  Only
        ``targets[b, :target_lengths[b]]`` is read; those entries must lie in
        ``[0, V)``.
      logit_lengths: ``[B]`` integer number of valid frames ``T_b``,
        ``1 <= T_b <= T``.
      target_lengths: ``[B]`` integer number of valid labels ``U_b``,
        ``0 <= U_b <= U``.
      blank: index of the blank symbol, ``0 <= blank < V``.

    Returns:
      ``[B]`` tensor with ``-log P(targets_b | x_b)``, same dtype as
      ``logits`` and differentiable w.r.t. ``logits``.  Entries of ``logits``
      outside ``[:T_b, :U_b+1]`` do not influence the result.

    Raises:
      ValueError: on inconsistent shapes, non-integer lengths, lengths out of
        range, ``T_b < 1``, an out-of-range ``blank`` or out-of-range targets.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise ValueError(f"logits must be a 4-D tensor [B, T, U+1, V], got {shape}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")
    B, T, U1, V = logits.shape
    U = U1 - 1
    if B < 1 or T < 1 or U1 < 1 or V < 1:
        raise ValueError(f"logits must have non-empty dimensions, got {tuple(logits.shape)}")

    targets = torch.as_tensor(targets)
    if targets.dim() != 2 or targets.shape[0] != B or targets.shape[1] != U:
        raise ValueError(
            f"targets must have shape [B, U]=[{B}, {U}] (logits U+1={U1}), got {tuple(targets.shape)}"
        )
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer tensor, got dtype {targets.dtype}")
    if not isinstance(blank, int) or isinstance(blank, bool) or not 0 <= blank < V:
        raise ValueError(f"blank must be an int in [0, V={V}), got {blank!r}")

    device = logits.device
    t_len = _as_length_tensor(logit_lengths, "logit_lengths", B, device)
    u_len = _as_length_tensor(target_lengths, "target_lengths", B, device)
    if bool((t_len < 1).any()) or bool((t_len > T).any()):
        raise ValueError(f"logit_lengths must lie in [1, T={T}], got {t_len.tolist()}")
    if bool((u_len < 0).any()) or bool((u_len > U).any()):
        raise ValueError(f"target_lengths must lie in [0, U={U}], got {u_len.tolist()}")

    targets = targets.to(device=device, dtype=torch.int64)
    u_idx = torch.arange(U, device=device)
    label_valid = u_idx[None, :] < u_len[:, None]  # [B, U]
    if bool(((targets < 0) | (targets >= V))[label_valid].any()):
        raise ValueError(f"targets[b, :target_lengths[b]] must lie in [0, V={V})")
    safe_targets = torch.where(label_valid, targets, torch.zeros_like(targets))

    # Compute in at least float32 (the sentinel _NEG does not fit in fp16).
    work_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    lp = torch.log_softmax(logits.to(work_dtype), dim=-1)

    # Valid lattice region of each utterance; everything outside is masked
    # with torch.where so that padding (even NaN/inf) cannot leak in.
    t_idx = torch.arange(T, device=device)
    t_ok = t_idx[None, :] < t_len[:, None]  # [B, T]
    u1_ok = torch.arange(U1, device=device)[None, :] <= u_len[:, None]  # [B, U+1]
    blank_mask = t_ok[:, :, None] & u1_ok[:, None, :]  # [B, T, U+1]
    label_mask = t_ok[:, :, None] & label_valid[:, None, :]  # [B, T, U]

    neg = torch.tensor(_NEG, dtype=work_dtype, device=device)
    blank_lp = torch.where(blank_mask, lp[..., blank], neg)  # [B, T, U+1]
    gather_idx = safe_targets[:, None, :, None].expand(B, T, U, 1)
    label_lp = torch.where(label_mask, lp[:, :, :U, :].gather(3, gather_idx).squeeze(3), neg)  # [B, T, U]
    # Clamp genuine -inf log-probs (e.g. from -inf logits) to the sentinel.
    blank_lp = blank_lp.clamp(min=_NEG)
    label_lp = label_lp.clamp(min=_NEG)

    # Skew to anti-diagonal layout: X_skew[b, n, u] = X[b, n - u, u].
    n_diag = int((t_len + u_len).max().item())  # diagonals 0 .. n_diag-1 needed
    n_idx = torch.arange(n_diag, device=device)
    tt = n_idx[:, None] - torch.arange(U1, device=device)[None, :]  # [N, U+1]
    tt_ok = (tt >= 0) & (tt < T)
    tt_c = tt.clamp(0, T - 1)
    uu = torch.arange(U1, device=device).expand(n_diag, U1)
    blank_skew = torch.where(tt_ok, blank_lp[:, tt_c, uu], neg)  # [B, N, U+1]
    label_skew = torch.where(tt_ok[:, :U], label_lp[:, tt_c[:, :U], uu[:, :U]], neg)  # [B, N, U]

    # alpha on diagonal n, indexed by u (cell (t=n-u, u)).
    diag = torch.full((B, U1), _NEG, dtype=work_dtype, device=device)
    diag[:, 0] = 0.0  # alpha[0, 0] = 0 (constant tensor, no autograd history)
    diags = [diag]
    neg_col = neg.expand(B, 1)
    for n in range(1, n_diag):
        from_t = diag + blank_skew[:, n - 1]  # (t-1, u) --blank--> (t, u)
        from_u = diag[:, :U] + label_skew[:, n - 1]  # (t, u-1) --label--> (t, u)
        diag = torch.logaddexp(from_t, torch.cat([neg_col, from_u], dim=1))
        diags.append(diag)
    alpha = torch.stack(diags, dim=1)  # [B, N, U+1], alpha[b, n, u] = alpha[b, n-u, u]

    b_idx = torch.arange(B, device=device)
    final_alpha = alpha[b_idx, t_len - 1 + u_len, u_len]
    final_blank = blank_lp[b_idx, t_len - 1, u_len]
    return (-(final_alpha + final_blank)).to(logits.dtype)
