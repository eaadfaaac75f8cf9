"""Tests for nnaqat.loss: reference RNN-T loss vs closed forms, brute force and fast_rnnt."""

import itertools
import math
import subprocess
import sys
import types

import fast_rnnt  # built by local/setup_env.sh: its absence is a failure, not a skip
import pytest
import torch

from nnaqat.loss import reference_rnnt_loss, rnnt_backend, rnnt_backend_name
from nnaqat.loss import backend as backend_mod

BLANK = 0


def _random_batch(B, T, U, V, t_lens, u_lens, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, U + 1, V, generator=g, dtype=dtype)
    targets = torch.randint(1, V, (B, U), generator=g)
    return logits, targets, torch.tensor(t_lens), torch.tensor(u_lens)


def _boundary(t_lens, u_lens):
    """fast_rnnt/k2 boundary: int64 [B, 4] = [begin_symbol, begin_frame, end_symbol, end_frame]."""
    zeros = torch.zeros_like(t_lens)
    return torch.stack([zeros, zeros, u_lens, t_lens], dim=1).to(torch.int64)


def _brute_force(logits, targets, T, U, blank=BLANK):
    """-log P by enumerating all alignments of one utterance (logits [T', U'+1, V])."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    scores = []
    # An alignment has T blanks and U labels, the last symbol is a blank.
    for label_pos in itertools.combinations(range(T + U - 1), U):
        t = u = 0
        s = 0.0
        for k in range(T + U):
            if k in label_pos:
                s = s + lp[t, u, targets[u]]
                u += 1
            else:
                s = s + lp[t, u, blank]
                t += 1
        scores.append(s)
    return -torch.logsumexp(torch.stack(scores), dim=0)


# --------------------------------------------------------------------------
# Reference-only tests (no fast_rnnt needed)
# --------------------------------------------------------------------------


def test_closed_form_T1_U0():
    logits = torch.tensor([[[[0.3, -1.2, 2.0]]]], dtype=torch.float64)  # [1, 1, 1, 3]
    targets = torch.zeros(1, 0, dtype=torch.int64)
    loss = reference_rnnt_loss(logits, targets, torch.tensor([1]), torch.tensor([0]))
    expected = -torch.log_softmax(logits[0, 0, 0], -1)[BLANK]
    torch.testing.assert_close(loss, expected.reshape(1), rtol=0, atol=1e-12)


def test_closed_form_T2_U1():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 2, 2, 3, generator=g, dtype=torch.float64)
    y = 2
    lp = torch.log_softmax(logits[0], -1)  # [t, u, v]
    path_a = lp[0, 0, y] + lp[0, 1, BLANK] + lp[1, 1, BLANK]  # label at t=0
    path_b = lp[0, 0, BLANK] + lp[1, 0, y] + lp[1, 1, BLANK]  # label at t=1
    expected = -torch.logaddexp(path_a, path_b)
    loss = reference_rnnt_loss(logits, torch.tensor([[y]]), torch.tensor([2]), torch.tensor([1]))
    torch.testing.assert_close(loss, expected.reshape(1), rtol=0, atol=1e-12)


def test_matches_brute_force_enumeration():
    t_lens, u_lens = [4, 3, 1, 2], [2, 0, 3, 3]
    logits, targets, tl, ul = _random_batch(4, 4, 3, 5, t_lens, u_lens, seed=2)
    loss = reference_rnnt_loss(logits, targets, tl, ul)
    expected = torch.stack(
        [_brute_force(logits[b], targets[b], t_lens[b], u_lens[b]) for b in range(4)]
    )
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)


def test_nonzero_blank_index():
    logits, targets, tl, ul = _random_batch(2, 3, 2, 4, [3, 2], [2, 1], seed=3)
    targets = torch.tensor([[0, 1], [2, 0]])  # labels may not be the blank (3)
    loss = reference_rnnt_loss(logits, targets, tl, ul, blank=3)
    expected = torch.stack(
        [_brute_force(logits[b], targets[b], int(tl[b]), int(ul[b]), blank=3) for b in range(2)]
    )
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)


def test_padding_invariance():
    t_lens, u_lens = [6, 3, 4], [3, 1, 0]
    logits, targets, tl, ul = _random_batch(3, 6, 3, 5, t_lens, u_lens, seed=4)
    targets[1, 1:] = -1  # padded target ids are never read
    targets[2, :] = 99
    valid = torch.zeros(logits.shape[:3], dtype=torch.bool)
    for b in range(3):
        valid[b, : t_lens[b], : u_lens[b] + 1] = True
    valid = valid[..., None].expand_as(logits)

    x0 = logits.clone().requires_grad_()
    loss0 = reference_rnnt_loss(x0, targets, tl, ul)
    loss0.sum().backward()

    junk = 1e4 * torch.randn(logits.shape, dtype=logits.dtype, generator=torch.Generator().manual_seed(5))
    for pad in (junk, torch.full_like(logits, float("nan")), torch.full_like(logits, -float("inf"))):
        x1 = torch.where(valid, logits, pad).requires_grad_()
        loss1 = reference_rnnt_loss(x1, targets, tl, ul)
        torch.testing.assert_close(loss1, loss0, rtol=0, atol=1e-12)
        loss1.sum().backward()
        torch.testing.assert_close(x1.grad[valid], x0.grad[valid], rtol=0, atol=1e-12)
    # Finite padding receives exactly zero gradient.
    assert torch.all(x0.grad[~valid] == 0)


def test_float32_matches_float64_and_keeps_dtype():
    logits, targets, tl, ul = _random_batch(3, 8, 4, 7, [8, 5, 2], [4, 2, 3], seed=6)
    l64 = reference_rnnt_loss(logits, targets, tl, ul)
    l32 = reference_rnnt_loss(logits.float(), targets, tl, ul)
    assert l64.dtype == torch.float64 and l32.dtype == torch.float32
    torch.testing.assert_close(l32.double(), l64, rtol=1e-5, atol=1e-5)
    assert reference_rnnt_loss(logits.half(), targets, tl, ul).dtype == torch.float16


def test_gradient_matches_finite_differences():
    logits, targets, tl, ul = _random_batch(2, 3, 2, 4, [3, 2], [2, 1], seed=7)
    weights = torch.tensor([0.7, 1.3], dtype=torch.float64)
    x = logits.clone().requires_grad_()
    (reference_rnnt_loss(x, targets, tl, ul) * weights).sum().backward()

    def f(z):
        return float((reference_rnnt_loss(z, targets, tl, ul) * weights).sum())

    g = torch.Generator().manual_seed(8)
    eps = 1e-6
    coords = [(0, 2, 2, 0), (1, 1, 1, 3)]  # fixed coordinates inside the valid region
    coords += [tuple(int(torch.randint(n, (1,), generator=g)) for n in logits.shape) for _ in range(6)]
    for c in coords:
        plus, minus = logits.clone(), logits.clone()
        plus[c] += eps
        minus[c] -= eps
        fd = (f(plus) - f(minus)) / (2 * eps)
        assert math.isclose(x.grad[c].item(), fd, rel_tol=1e-6, abs_tol=1e-8), (c, x.grad[c].item(), fd)


@pytest.mark.parametrize(
    "case",
    [
        "logits_3d",
        "logits_int",
        "targets_wrong_U",
        "targets_wrong_B",
        "targets_float",
        "lengths_wrong_shape",
        "lengths_float",
        "T_zero",
        "T_too_long",
        "U_negative",
        "U_too_long",
        "target_out_of_vocab",
        "target_negative",
        "blank_out_of_range",
    ],
)
def test_invalid_inputs_raise(case):
    B, T, U, V = 2, 4, 3, 5
    logits = torch.randn(B, T, U + 1, V)
    targets = torch.randint(1, V, (B, U))
    tl = torch.tensor([4, 2])
    ul = torch.tensor([3, 1])
    kwargs = {}
    if case == "logits_3d":
        logits = logits[0]
    elif case == "logits_int":
        logits = logits.long()
    elif case == "targets_wrong_U":
        targets = targets[:, :2]
    elif case == "targets_wrong_B":
        targets = targets[:1]
    elif case == "targets_float":
        targets = targets.float()
    elif case == "lengths_wrong_shape":
        tl = torch.tensor([4, 2, 1])
    elif case == "lengths_float":
        ul = ul.float()
    elif case == "T_zero":
        tl = torch.tensor([4, 0])
    elif case == "T_too_long":
        tl = torch.tensor([5, 2])
    elif case == "U_negative":
        ul = torch.tensor([3, -1])
    elif case == "U_too_long":
        ul = torch.tensor([4, 1])
    elif case == "target_out_of_vocab":
        targets[1, 0] = V
    elif case == "target_negative":
        targets[0, 2] = -1
    elif case == "blank_out_of_range":
        kwargs["blank"] = V
    with pytest.raises(ValueError):
        reference_rnnt_loss(logits, targets, tl, ul, **kwargs)


def test_import_is_lazy():
    code = "import sys, nnaqat.loss; print('k2' in sys.modules or 'fast_rnnt' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONPATH": ":".join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"},
    )
    assert out.stdout.strip() == "False"


def test_backend_missing_raises_helpful_importerror(monkeypatch):
    monkeypatch.setitem(sys.modules, "k2", None)  # makes `import k2` raise ImportError
    monkeypatch.setitem(sys.modules, "fast_rnnt", None)
    backend_mod.rnnt_backend.cache_clear()
    try:
        with pytest.raises(ImportError, match="local/setup_env.sh"):
            rnnt_backend()
    finally:
        backend_mod.rnnt_backend.cache_clear()


# --------------------------------------------------------------------------
# Tests against fast_rnnt
# --------------------------------------------------------------------------

# fast_rnnt asserts end_symbol >= 1 (U_b >= 1) whenever a boundary is given.
T_LENS, U_LENS = [10, 7, 4, 9], [5, 3, 1, 5]
B_, T_, U_, V_ = 4, 10, 5, 8


def test_backend_prefers_k2_and_falls_back_to_fast_rnnt(monkeypatch):
    monkeypatch.setitem(sys.modules, "k2", None)  # k2 has no build for this Python and torch
    backend_mod.rnnt_backend.cache_clear()
    try:
        assert rnnt_backend_name() == "fast_rnnt" and rnnt_backend() is fast_rnnt
        k2 = types.ModuleType("k2")
        k2.__dict__.update({name: getattr(fast_rnnt, name) for name in backend_mod._REQUIRED})
        monkeypatch.setitem(sys.modules, "k2", k2)
        backend_mod.rnnt_backend.cache_clear()
        assert rnnt_backend() is k2
        del k2.rnnt_loss_pruned  # a k2 without the pruned loss is passed over
        backend_mod.rnnt_backend.cache_clear()
        assert rnnt_backend() is fast_rnnt
    finally:
        backend_mod.rnnt_backend.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_fast_rnnt_full_loss(dtype):
    logits, targets, tl, ul = _random_batch(B_, T_, U_, V_, T_LENS, U_LENS, dtype=dtype, seed=10)
    logits = 3.0 * logits
    ref = reference_rnnt_loss(logits, targets, tl, ul, blank=BLANK)
    fr = fast_rnnt.rnnt_loss(
        logits=logits, symbols=targets, termination_symbol=BLANK,
        boundary=_boundary(tl, ul), reduction="none",
    )
    assert fr.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(ref, fr, rtol=tol, atol=tol)


def test_gradient_matches_fast_rnnt():
    logits, targets, tl, ul = _random_batch(B_, T_, U_, V_, T_LENS, U_LENS, seed=11)
    x_ref = logits.clone().requires_grad_()
    reference_rnnt_loss(x_ref, targets, tl, ul).sum().backward()
    # fast_rnnt's backward modifies saved tensors in place: use a fresh leaf, no gradcheck.
    x_fr = logits.clone().requires_grad_()
    fast_rnnt.rnnt_loss(
        logits=x_fr, symbols=targets, termination_symbol=BLANK,
        boundary=_boundary(tl, ul), reduction="none",
    ).sum().backward()
    torch.testing.assert_close(x_fr.grad, x_ref.grad, rtol=1e-8, atol=1e-10)


def _pruned_setup(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    am = torch.randn(B_, T_, V_, generator=g, dtype=dtype)
    lm = torch.randn(B_, U_ + 1, V_, generator=g, dtype=dtype)
    targets = torch.randint(1, V_, (B_, U_), generator=g)
    return am, lm, targets, torch.tensor(T_LENS), torch.tensor(U_LENS)


def _pruned_loss(fast_rnnt, am, lm, targets, boundary, s_range):
    _, (px_grad, py_grad) = fast_rnnt.rnnt_loss_smoothed(
        lm=lm.detach(), am=am.detach(), symbols=targets, termination_symbol=BLANK,
        lm_only_scale=0.25, am_only_scale=0.0, boundary=boundary,
        reduction="none", return_grad=True,
    )
    ranges = fast_rnnt.get_rnnt_prune_ranges(
        px_grad=px_grad, py_grad=py_grad, boundary=boundary, s_range=s_range
    )  # [B, T, s_range] int64
    am_p, lm_p = fast_rnnt.do_rnnt_pruning(am=am, lm=lm, ranges=ranges)  # each [B, T, s_range, V]
    loss = fast_rnnt.rnnt_loss_pruned(
        logits=am_p + lm_p, symbols=targets, ranges=ranges, termination_symbol=BLANK,
        boundary=boundary, reduction="none",
    )
    return loss, ranges


def test_pruned_with_full_range_equals_full_loss():
    am, lm, targets, tl, ul = _pruned_setup(seed=12)
    boundary = _boundary(tl, ul)

    am_r, lm_r = am.clone().requires_grad_(), lm.clone().requires_grad_()
    ref = reference_rnnt_loss(am_r[:, :, None, :] + lm_r[:, None, :, :], targets, tl, ul)
    ref.sum().backward()

    am_f, lm_f = am.clone().requires_grad_(), lm.clone().requires_grad_()
    pruned, ranges = _pruned_loss(fast_rnnt, am_f, lm_f, targets, boundary, s_range=U_ + 1)
    assert ranges.shape == (B_, T_, U_ + 1)
    torch.testing.assert_close(pruned, ref, rtol=1e-10, atol=1e-10)
    pruned.sum().backward()
    torch.testing.assert_close(am_f.grad, am_r.grad, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(lm_f.grad, lm_r.grad, rtol=1e-8, atol=1e-10)

    # Joiner == addition: rnnt_loss_simple is the exact full loss as well.
    simple = fast_rnnt.rnnt_loss_simple(
        lm=lm, am=am, symbols=targets, termination_symbol=BLANK, boundary=boundary, reduction="none"
    )
    torch.testing.assert_close(simple, ref.detach(), rtol=1e-10, atol=1e-10)


def test_pruned_with_narrow_range_upper_bounds_full_loss():
    am, lm, targets, tl, ul = _pruned_setup(seed=13)
    ref = reference_rnnt_loss(am[:, :, None, :] + lm[:, None, :, :], targets, tl, ul)
    pruned, ranges = _pruned_loss(fast_rnnt, am, lm, targets, _boundary(tl, ul), s_range=2)
    assert ranges.shape == (B_, T_, 2)
    # Pruning removes paths, so the NLL can only grow (and must stay finite).
    assert torch.isfinite(pruned).all()
    assert torch.all(pruned >= ref - 1e-10)
