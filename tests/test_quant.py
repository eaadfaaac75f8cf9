"""Quantizers: Lloyd-Max, MRACos, the hard compressor, fake quantization, bit configs, packing."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nnaqat import _kernels, registry
from nnaqat.export import load_packed, pack_indices, save_packed, unpack_indices
from nnaqat.models import build_transducer
from nnaqat.quant import (
    QuantConfig,
    hard_compress,
    int8_scale,
    lloyd_max,
    mracos,
    nearest_index,
    quantizable_parameters,
    quantize_,
    resolve_bits,
)
from nnaqat.quant.fake_quant import channel_view, fake_quantize, uniform_int8_levels
from nnaqat.quant.quantizers import CodebookSnap, level_step
from nnaqat.quant.mracos import mracos_and_grad
from nnaqat.sizes import WeightSize
from repo_paths import FSDD_CONF


SMALL_MODEL = {
    "vocab_size": 32,
    "encoder_kwargs": {"hidden_size": 32, "num_layers": 2, "subsampling_factor": 4},
    "predictor_kwargs": {"embedding_dim": 24},
    "joiner_dim": 24,
}


def exhaustive_optimum(x: torch.Tensor, levels: int) -> float:
    """Smallest squared error over every partition of the sorted sample into contiguous cells."""
    xs = x.double().sort().values
    best = math.inf
    for cuts in itertools.combinations(range(1, xs.numel()), levels - 1):
        bounds = (0, *cuts, xs.numel())
        err = sum(((xs[a:b] - xs[a:b].mean()) ** 2).sum().item() for a, b in zip(bounds, bounds[1:]))
        best = min(best, err)
    return best


def squared_error(x: torch.Tensor, centroids: torch.Tensor) -> float:
    return ((x.double() - hard_compress(x, centroids).double()) ** 2).sum().item()


@pytest.mark.parametrize("bits", range(1, 9))
def test_lloyd_max_optimality_conditions(bits):
    torch.manual_seed(bits)
    w = torch.randn(5000) * 0.1 + 0.02 * torch.randn(5000) ** 3  # heavy-tailed, like trained weights
    c = lloyd_max(w, bits)
    assert c.numel() == 2**bits and torch.all(c[1:] > c[:-1])
    cell = nearest_index(w, c)
    for k in range(c.numel()):  # each centroid is the mean of its cell ...
        members = w[cell == k]
        assert members.numel() > 0
        assert members.double().mean().item() == pytest.approx(c[k].item(), abs=1e-5)
    # ... and each threshold the midpoint: every weight sits in the cell of its nearest centroid.
    distances = (w[:, None] - c[None, :]).abs()
    assert torch.all(distances.gather(1, cell[:, None]).squeeze(1) <= distances.min(dim=1).values + 1e-7)


@pytest.mark.parametrize("levels_bits,n", [(1, 12), (2, 12), (3, 11)])
def test_lloyd_max_matches_exhaustive_optimum(levels_bits, n):
    for seed in range(5):
        torch.manual_seed(seed)
        x = torch.cat([torch.randn(n // 2) * 0.3, torch.randn(n - n // 2) + 2.0])
        c = lloyd_max(x, levels_bits)
        assert squared_error(x, c) == pytest.approx(exhaustive_optimum(x, 2**levels_bits), rel=1e-6)


def test_lloyd_max_with_few_distinct_values_returns_them():
    x = torch.tensor([0.5, -0.25, 0.5, 0.0, -0.25])
    assert torch.equal(lloyd_max(x, 3), torch.tensor([-0.25, 0.0, 0.5]))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_lloyd_max_snaps_to_the_int8_grid(bits):
    torch.manual_seed(0)
    w = torch.randn(64, 32) * 0.05
    scale = int8_scale(w)
    c = lloyd_max(w, bits, int8_scale=scale)
    levels = c.double() / scale.double()
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert levels.abs().max() <= 127 and c.numel() <= 2**bits
    assert torch.unique(c).numel() == c.numel()
    unsnapped = lloyd_max(w, bits)
    # Snapping moves no centroid by more than half an int8 step.
    assert (hard_compress(unsnapped, c) - unsnapped).abs().max() <= scale / 2 + 1e-7


def test_lloyd_max_rejects_bad_bits():
    with pytest.raises(ValueError, match="1..8"):
        lloyd_max(torch.randn(10), 9)


def test_mracos_shape_zeros_maxima_and_gradient_direction():
    c = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    assert torch.allclose(mracos(c, c), torch.zeros(4), atol=1e-6)
    midpoints = (c[1:] + c[:-1]) / 2
    assert torch.allclose(mracos(midpoints, c), torch.ones(3))
    # Strictly below 1 everywhere else inside the codebook's range.
    inside = torch.linspace(-1, 2, 601)
    inside = inside[(inside[:, None] - midpoints).abs().min(dim=1).values > 1e-3]
    assert mracos(inside, c).max() < 1
    # A gradient-descent step moves every weight towards its nearest centroid, also outside [c_1, c_L].
    w = torch.cat([torch.linspace(-4, 5, 901), torch.tensor([-1.2, 2.3])]).requires_grad_()
    mracos(w, c).sum().backward()
    nearest = hard_compress(w.detach(), c)
    away = (nearest - w.detach()).abs() > 1e-4
    not_tie = (w.detach()[:, None] - midpoints).abs().min(dim=1).values > 1e-4
    step = -w.grad
    assert torch.all(torch.sign(step[away & not_tie]) == torch.sign((nearest - w.detach())[away & not_tie]))
    # Defined, finite and growing beyond the outermost centroids.
    far = mracos(torch.tensor([-10.0, -3.0, 4.0, 10.0]), c)
    assert torch.isfinite(far).all() and far[0] > far[1] > 1 and far[3] > far[2] > 1


def test_mracos_closed_form_gradient_equals_autograd():
    c = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    w = torch.cat([torch.linspace(-4, 5, 9001), c, (c[1:] + c[:-1]) / 2]).requires_grad_()
    mracos(w, c).sum().backward()
    value, grad = mracos_and_grad(w.detach(), c)
    assert torch.allclose(value, mracos(w.detach(), c))
    # |cos| has a kink at the thresholds: compare the derivative away from them.
    smooth = (w.detach()[:, None] - (c[1:] + c[:-1]) / 2).abs().min(dim=1).values > 1e-4
    assert torch.allclose(grad[smooth], w.grad[smooth], atol=1e-5)


def test_s8bqat_penalty_gradient_is_that_of_lambda_mean_mracos():
    """The closed-form gradient the trainer adds equals autograd through the loss term."""
    torch.manual_seed(0)
    model = build_transducer(SMALL_MODEL)
    quantizer = quantize_(model, QuantConfig(quantizer="s8bqat", weight_bits=2, mracos_weight=3.0, mracos_ramp_batches=0))
    names = list(quantizer.bits)
    weights = [quantizer.latent(model, n) for n in names]
    value = quantizer.penalty_backward(model, 1)
    closed = [w.grad.clone() for w in weights]
    for w in weights:
        w.grad = None
    tiny = torch.finfo(torch.float32).tiny
    live = {n: (quantizer.codebook(n)[1] > tiny).reshape(-1, *[1] * (quantizer.latent(model, n).dim() - 1)) for n in names}
    term = 3.0 * sum((mracos(*quantizer.normalized(model, n)) * live[n]).sum() for n in names) / sum(
        w.numel() for w in weights
    )
    term.backward()
    assert value == pytest.approx(term.item(), rel=1e-5)
    for name, w, g in zip(names, weights, closed):
        assert bool(torch.isfinite(g).all()), name
        assert torch.allclose(g, torch.nan_to_num(w.grad, posinf=0.0, neginf=0.0), rtol=1e-4, atol=1e-9), name


@pytest.mark.parametrize("levels", [2, 4, 8, 9, 16, 256])
def test_nearest_index_is_brute_force_nearest_with_ties_up(levels):
    """Both paths (threshold counting for small codebooks, bucketize for large ones)."""
    torch.manual_seed(levels)
    c = torch.sort(torch.randperm(255)[:levels] - 127.0).values
    midpoints = (c[1:] + c[:-1]) / 2
    w = torch.cat([torch.randn(5000) * 60, c, midpoints, torch.tensor([-500.0, 500.0])])
    distance = (w[:, None] - c[None, :]).abs()
    # Nearest centroid; on an exact tie the upper one (the last of the minima).
    brute = distance.size(1) - 1 - distance.flip(1).argmin(dim=1)
    assert torch.equal(nearest_index(w, c), brute)


@pytest.mark.parametrize("levels", [2, 4, 16, 17, 256])
@pytest.mark.parametrize("per_channel", [False, True])
def test_compiled_snap_is_the_scaled_nearest_level(levels, per_channel):
    """CodebookSnap's compiled forward value, bit for bit, with ties on every threshold."""
    torch.manual_seed(levels)
    c = torch.sort(torch.randperm(255)[:levels] - 127.0).values
    thresholds = (c[1:] + c[:-1]) / 2
    # Power-of-two scales keep w / scale exact, so the ties stay ties.
    scale = torch.tensor([0.5, 2.0**-7, 4.0]) if per_channel else torch.tensor(2.0**-5)
    normalized = torch.cat([torch.randn(3, 700) * 60, thresholds.expand(3, -1), c.expand(3, -1)], dim=1)
    w = normalized * (scale[:, None] if per_channel else scale)
    expected = torch.take(c, nearest_index(w / channel_view(scale, w), c)) * channel_view(scale, w)
    assert torch.equal(_kernels.codebook_snap(w, scale, c), expected)


def test_compiled_mracos_pull_is_mracos_and_grad():
    """The penalty's compiled pass: value and chain-ruled gradient of mracos_and_grad, none for a floor-scale row."""
    torch.manual_seed(0)
    c = torch.tensor([-90.0, -20.0, 10.0, 70.0])
    tiny = torch.finfo(torch.float32).tiny
    scale = torch.tensor([0.01, 0.003, tiny, 0.02])
    w = torch.cat([torch.randn(4, 500) * 80, torch.full((4, 2), 300.0), torch.full((4, 2), -300.0)], dim=1)
    w = w * scale[:, None]
    w[2] = 0.0
    grad, total = _kernels.mracos_pull(w, scale, c, 0.25, tiny)
    value, slope = mracos_and_grad(w / scale[:, None], c)
    live = scale[:, None] > tiny
    assert total.item() == pytest.approx(float((value * live).sum()), rel=1e-6)
    expected = torch.where(live, slope / scale[:, None], 0.0) * 0.25
    assert torch.allclose(grad, expected, rtol=1e-5, atol=0.0)
    assert torch.equal(grad[2], torch.zeros(w.size(1)))


def test_hard_compress_is_nearest_and_idempotent():
    torch.manual_seed(0)
    c = torch.tensor([-0.3, -0.05, 0.1, 0.4])
    w = torch.randn(1000) * 0.3
    snapped = hard_compress(w, c)
    brute = c[(w[:, None] - c[None, :]).abs().argmin(dim=1)]
    assert torch.equal(snapped, brute)
    assert torch.equal(hard_compress(snapped, c), snapped)
    assert set(snapped.unique().tolist()) <= set(c.tolist())


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_round_trip(bits):
    rng = np.random.default_rng(bits)
    for count in (1, 7, 8, 1001):
        indices = rng.integers(0, 2**bits, size=count)
        packed = pack_indices(indices, bits)
        assert len(packed) == math.ceil(count * bits / 8)
        assert np.array_equal(unpack_indices(packed, bits, count), indices)
    for bad in (2**bits, -1, 2**16 + 1):  # out of range on either side, also past a uint16 cast
        with pytest.raises(ValueError, match=f"not all fit in {bits} bits"):
            pack_indices(np.array([0, bad]), bits)
    with pytest.raises(ValueError, match="take .* bytes, got"):  # a truncated file
        unpack_indices(pack_indices(np.zeros(1001, dtype=np.int64), bits)[:-1], bits, 1001)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_uniform_fake_quant_values_lie_on_the_int8_grid(bits):
    torch.manual_seed(0)
    w = torch.randn(16, 40)
    scale = w.abs().amax(dim=1) / 127
    q = fake_quantize(w, scale, bits) / scale[:, None]
    levels = uniform_int8_levels(bits).float()
    assert torch.all((q[..., None] - levels).abs().min(dim=-1).values < 1e-4)
    assert levels.numel() == (2 if bits == 1 else 2**bits - 1)


def test_clipped_ste_gradients():
    w = torch.tensor([[-3.0, -0.4, 0.2, 3.0]], requires_grad=True)
    scale = torch.tensor([1.0 / 127], requires_grad=True)  # the grid spans +-1
    fake_quantize(w, scale, 4).sum().backward()
    assert torch.allclose(w.grad, torch.tensor([[0.0, 1.0, 1.0, 0.0]]), atol=1e-6)
    assert scale.grad is not None and scale.grad.item() != 0  # LSQ learns the step


def test_bit_config_first_matching_rule_wins(tmp_path):
    model = build_transducer(SMALL_MODEL)
    names = quantizable_parameters(model.named_parameters())
    assert not any(n.startswith("simple_") for n in names) and all("bias" not in n for n in names)
    rules = tmp_path / "bits.yaml"
    rules.write_text("encoder.layers.*: 2\nencoder.*: 4\njoiner.output_linear.weight: 8\n")
    bits = resolve_bits(names, QuantConfig(quantizer="s8bqat", weight_bits=3, bit_config=str(rules)))
    assert bits["encoder.layers.0.weight_ih_l0"] == 2
    assert bits["encoder.subsampling.out.weight"] == 4
    assert bits["joiner.output_linear.weight"] == 8
    assert bits["predictor.embedding.weight"] == 3
    for bad in ("encoder.*: 9\n", "encoder.*: true\n"):
        rules.write_text(bad)
        with pytest.raises(ValueError, match="1..8"):
            resolve_bits(names, QuantConfig(quantizer="s8bqat", bit_config=str(rules)))


def test_bit_config_rule_matching_nothing_is_named(tmp_path, caplog):
    names = quantizable_parameters(build_transducer(SMALL_MODEL).named_parameters())
    rules = tmp_path / "bits.yaml"
    rules.write_text("encoder.layer.*: 2\njoiner.*: 4\n")  # "layer" for "layers"
    with caplog.at_level("WARNING"):
        bits = resolve_bits(names, QuantConfig(quantizer="s8bqat", weight_bits=3, bit_config=str(rules)))
    assert "bits.yaml: no parameter matches ['encoder.layer.*'] (3 bits by default)" in caplog.text
    assert bits["encoder.layers.0.weight_ih_l0"] == 3 and bits["joiner.output_linear.weight"] == 4


def test_quantizers_are_registered_by_name():
    assert {"none", "ptq", "uniform", "lsq", "s8bqat"} <= set(registry.names("quantizer"))
    with pytest.raises(KeyError, match="known"):
        quantize_(build_transducer(SMALL_MODEL), QuantConfig(quantizer="nope"))


def batch():
    torch.manual_seed(1)
    x = torch.randn(2, 60, 80)
    return x, torch.tensor([60, 45]), torch.randint(3, 32, (2, 4)), torch.tensor([4, 2])


@pytest.mark.parametrize(
    "name", ["ptq", "uniform", "lsq", "s8bqat", "s8bqat-tensor", "s8bqat-ste", "s8bqat-learned", "s8bqat-levels"]
)
@pytest.mark.parametrize("bits", [1, 2, 3, 8])
def test_finalize_pack_and_reload_are_exact(name, bits, tmp_path):
    torch.manual_seed(0)
    model = build_transducer(SMALL_MODEL).eval()
    name, _, variant = name.partition("-")
    codebook = "tensor" if variant == "tensor" else "channel"
    config = QuantConfig(quantizer=name, weight_bits=bits, codebook=codebook,
                         ste_forward=variant in ("ste", "learned", "levels"), learn_scale=variant == "learned",
                         learn_levels=variant == "levels")  # fmt: skip
    quantizer = quantize_(model, config)
    if variant == "learned":  # as after training: every codebook scale moved off its start
        with torch.no_grad():
            gains = [p for n, p in quantizer.named_parameters() if n.startswith("log_gain__")]
            assert len(gains) == len(quantizer.bits)
            for gain in gains:
                gain.fill_(0.05)
    if variant == "levels":  # as after training: levels moved by up to 3 int8 steps, some may cross or merge
        start = {n: quantizer.codebook(n)[0].detach().clone() for n in quantizer.bits}
        with torch.no_grad():
            steps = [p for n, p in quantizer.named_parameters() if n.startswith("level_steps__")]
            assert len(steps) == len(quantizer.bits)
            for p in steps:
                p.add_((torch.rand_like(p) * 6 - 3) / level_step(bits))
        quantizer.after_step(model, 1)
        moved = {n: quantizer.codebook(n)[0].detach() for n in quantizer.bits}
        assert any(not torch.equal(start[n], moved[n]) for n in moved)
        for n, levels in moved.items():  # the buffers hold the current int8 codebook
            assert torch.equal(getattr(quantizer, f"levels__{n.replace('.', '__')}").float(), levels)
    losses = model(*batch())
    (losses.simple + losses.pruned).sum().backward()  # gradients reach the latent weights through the STE
    assert all(p.grad is not None for n, p in model.named_parameters() if "original" in n or name == "s8bqat")
    with torch.no_grad():
        trained_view = {n: quantizer.weight(model, n).clone() for n in quantizer.bits}
        trained_loss = model(*batch())[1]
    checkpoint = {k: v.clone() for k, v in model.state_dict().items()}
    quantizer.finalize(model)
    quantizer.check_on_codebook(model)
    with torch.no_grad():
        deployed_loss = model(*batch())[1]
    if name != "s8bqat" or variant in ("ste", "learned", "levels"):  # training sees exactly the deployed weights
        assert all(torch.equal(w, quantizer.weight(model, n)) for n, w in trained_view.items())
        # (nn.LSTM takes another kernel for parametrized weights: outputs agree to rounding)
        assert torch.allclose(trained_loss, deployed_loss, rtol=1e-5)
    for weight_name, q in quantizer.quantized(model).items():
        assert q.levels.numel() <= 2**bits and int(q.indices.max()) < q.levels.numel()
        per_channel = name != "s8bqat" or codebook == "channel"
        assert q.scale.shape == ((quantizer.weight(model, weight_name).size(0),) if per_channel else ())
    # A training checkpoint reloads, finalizes to the same weights; the packed file reloads bit-exactly.
    again = build_transducer(SMALL_MODEL).eval()
    quantize_(again, config, state_dict=checkpoint).finalize(again)
    report = save_packed(model, tmp_path / "m.pack")
    unpacked = load_packed(tmp_path / "m.pack").state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith(("quantizer.", "simple_")):
            assert torch.equal(again.state_dict()[key], value), key
            assert torch.equal(unpacked[key], value), key
    assert report.mean_bits == bits
    if bits == 2 and variant == "":  # a truncated side-car is an error naming the file, not zeros
        data = (tmp_path / "m.pack").read_bytes()
        for cut in (len(data) - 1, 20):
            (tmp_path / "short.pack").write_bytes(data[:cut])
            with pytest.raises(ValueError, match="short.pack: .*truncated file"):
                load_packed(tmp_path / "short.pack")
    assert report.weight_size == WeightSize(count=report.num_weights, stored_bytes=report.packed_bytes, index_bits=bits)
    assert report.packed_bytes < report.int8_bytes if bits < 8 else report.packed_bytes < report.fp32_bytes


def test_packed_side_car_refuses_an_nna_model(tmp_path):
    from nnaqat.nna import NnaSpec
    from nnaqat.nna.convert import nna_

    model = build_transducer(SMALL_MODEL)
    nna_(model, NnaSpec())
    quantize_(model, QuantConfig(quantizer="ptq", weight_bits=4)).finalize(model)
    with pytest.raises(ValueError, match="export_nna.py"):
        save_packed(model, tmp_path / "m.pack")
    assert not list(tmp_path.iterdir())


def test_learned_codebook_scale_gets_the_lsq_gradient():
    """With ``learn_scale`` the snapped weight is ``level * scale``: the scale's gradient is
    ``sum (level - w / scale) * dL/dw_q`` over its channel, the float weight's is ``dL/dw_q``."""
    torch.manual_seed(0)
    levels = torch.tensor([-100, -30, 20, 90], dtype=torch.int8)
    scale = torch.tensor([0.01, 0.02, 0.005], requires_grad=True)
    weights = (torch.randn(3, 16) * 0.6).requires_grad_()
    upstream = torch.randn(3, 16)
    snapped = CodebookSnap(lambda: (levels, scale))(weights)
    (snapped * upstream).sum().backward()
    with torch.no_grad():
        index = nearest_index(weights / scale[:, None], levels.float())
        level = levels.float()[index]
        assert torch.equal(snapped, level * scale[:, None])
        assert torch.allclose(scale.grad, ((level - weights / scale[:, None]) * upstream).sum(1), rtol=1e-5)
        assert torch.equal(weights.grad, upstream)


def test_learned_levels_get_the_summed_gradient_of_the_weights_on_them():
    """With ``learn_levels`` a level's gradient is the sum over the weights snapped onto it of
    ``dL/dw_q * scale``, in the parameter's units (a uniform K-bit step) and scaled by
    ``1 / sqrt(numel)``; the float weight's is ``dL/dw_q``."""
    torch.manual_seed(0)
    model = build_transducer(SMALL_MODEL)
    config = QuantConfig(quantizer="s8bqat", weight_bits=2, ste_forward=True, learn_levels=True)
    quantizer = quantize_(model, config)
    name = "joiner.output_linear.weight"
    weight = quantizer.weight(model, name)
    upstream = torch.randn_like(weight)
    (weight * upstream).sum().backward()
    with torch.no_grad():
        levels, scale = quantizer.codebook(name)
        index = nearest_index(*quantizer.normalized(model, name))
        assert torch.equal(weight, levels[index] * channel_view(scale, weight))
        per_level = torch.zeros(levels.numel()).index_add_(0, index.flatten(), (upstream * channel_view(scale, weight)).flatten())
        steps = quantizer.get_parameter("level_steps__" + name.replace(".", "__"))
        assert torch.allclose(steps.grad, per_level * level_step(2) / weight.numel() ** 0.5, rtol=1e-4)
        assert torch.equal(quantizer.latent(model, name).grad, upstream)


def test_learned_levels_follow_the_loss_and_stay_int8():
    """A few Adam steps pulling every snapped weight 30 % outwards spread the 2-bit levels; they
    stay integers in the int8 range and the finalized weights lie on them."""
    torch.manual_seed(0)
    model = build_transducer(SMALL_MODEL)
    quantizer = quantize_(model, QuantConfig(quantizer="s8bqat", weight_bits=2, ste_forward=True, learn_levels=True))
    name = "encoder.layers.0.weight_ih_l0"
    start = quantizer.codebook(name)[0].detach().clone()
    target = quantizer.weight(model, name).detach() * 1.3
    optimizer = torch.optim.Adam([p for n, p in quantizer.named_parameters() if n.startswith("level_steps__")], lr=0.01)
    for step in range(1, 21):
        optimizer.zero_grad()
        ((quantizer.weight(model, name) - target) ** 2).sum().backward()
        optimizer.step()
        quantizer.after_step(model, step)
    levels = quantizer.codebook(name)[0].detach()
    assert levels[0] < start[0] and levels[-1] > start[-1]  # the outer levels moved outwards
    assert torch.equal(levels, levels.round()) and levels.abs().max() <= 127
    quantizer.finalize(model)
    quantizer.check_on_codebook(model)  # every weight is one of these levels times its channel's scale
    assert torch.equal(quantizer.quantized(model)[name].levels.float(), levels)


def test_resumed_learned_codebooks_stay_the_optimizers():
    """Loading a checkpoint into a quantizer of the same shapes (a resumed run, whose optimizer
    exists already) loads the learned levels and scales in place: the optimizer keeps training them."""
    torch.manual_seed(0)
    config = QuantConfig(quantizer="s8bqat", weight_bits=2, ste_forward=True, learn_levels=True, learn_scale=True)
    trained = build_transducer(SMALL_MODEL)
    trained_quantizer = quantize_(trained, config)
    with torch.no_grad():
        for p in trained_quantizer.parameters():
            p.add_(0.5)
    model = build_transducer(SMALL_MODEL)
    quantizer = quantize_(model, config)
    before = dict(quantizer.named_parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model.load_state_dict(trained.state_dict())
    for name, p in quantizer.named_parameters():
        assert p is before[name], name
        assert torch.equal(p, trained_quantizer.get_parameter(name)), name
    ((quantizer.weight(model, "joiner.output_linear.weight") - 1) ** 2).sum().backward()
    optimizer.step()
    steps = "level_steps__joiner__output_linear__weight"
    assert not torch.equal(quantizer.get_parameter(steps), trained_quantizer.get_parameter(steps))


def test_learned_codebooks_need_the_snapped_forward_pass():
    for flag in ("learn_scale", "learn_levels"):
        with pytest.raises(ValueError, match="ste_forward"):
            quantize_(build_transducer(SMALL_MODEL), QuantConfig(quantizer="s8bqat", weight_bits=2, **{flag: True}))


def test_mracos_gradient_is_finite_with_an_all_zero_channel():
    """The stateless predictor's blank embedding row is all zeros (floor scale): it gets no pull,
    and the other weights keep a finite gradient (an infinite one would zero the clipped step)."""
    torch.manual_seed(0)
    model = build_transducer(SMALL_MODEL)
    quantizer = quantize_(model, QuantConfig(quantizer="s8bqat", weight_bits=2, ste_forward=True))
    embedding = quantizer.latent(model, "predictor.embedding.weight")
    assert float(embedding[0].abs().max()) == 0  # padding_idx = blank
    assert quantizer.penalty_backward(model, 10_000) > 0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert float(embedding.grad[0].abs().max()) == 0 and float(embedding.grad[1:].abs().max()) > 0


def test_a_constant_tensor_gets_one_level_and_no_pull():
    torch.manual_seed(0)
    model = build_transducer(SMALL_MODEL)
    with torch.no_grad():
        model.joiner.output_linear.weight.zero_()
    quantizer = quantize_(model, QuantConfig(quantizer="s8bqat", weight_bits=2, ste_forward=True))
    assert quantizer.codebook("joiner.output_linear.weight")[0].numel() == 1
    (model(*batch()).pruned.sum()).backward()
    assert quantizer.penalty_backward(model, 1) > 0  # the other tensors are still pulled
    quantizer.finalize(model)
    quantizer.check_on_codebook(model)
    assert float(model.joiner.output_linear.weight.abs().max()) == 0


def test_weights_off_the_codebook_are_caught():
    model = build_transducer(SMALL_MODEL)
    quantizer = quantize_(model, QuantConfig(quantizer="s8bqat", weight_bits=2))
    quantizer.finalize(model)
    with torch.no_grad():
        model.joiner.output_linear.weight[0, 0] += 1e-3
    with pytest.raises(AssertionError, match="joiner.output_linear.weight: 1 of"):
        quantizer.check_on_codebook(model)


def test_s8bqat_schedule_and_periodic_compression():
    torch.manual_seed(0)
    model = build_transducer(SMALL_MODEL)
    config = QuantConfig(quantizer="s8bqat", weight_bits=2, mracos_weight=2.0, mracos_ramp_batches=10, compress_every=5)
    quantizer = quantize_(model, config)
    assert quantizer.penalty_backward(model, 0) is None
    assert quantizer.mracos_weight(5) == pytest.approx(1.0) and quantizer.mracos_weight(50) == pytest.approx(2.0)
    assert quantizer.penalty_backward(model, 10) > 0
    quantizer.after_step(model, 4)
    with pytest.raises(AssertionError):
        quantizer.check_on_codebook(model)
    quantizer.after_step(model, 5)
    quantizer.check_on_codebook(model)
    assert quantizer.penalty_backward(model, 10) == pytest.approx(0.0, abs=1e-6)


def packed_weight_size(model_yaml: str, tmp_path: Path, **quant) -> WeightSize:
    """Weight count and side-car bytes of an FSDD model config (29 tokens, as the recipe's) quantized so."""
    model = build_transducer({"vocab_size": 29, **yaml.safe_load((FSDD_CONF / model_yaml).read_text())})
    quantize_(model, QuantConfig(quantizer="ptq", **quant)).finalize(model)
    return save_packed(model, tmp_path / f"{model_yaml}.pack").weight_size


def test_equal_bytes_config_stores_the_default_model_in_the_small_int8_models_bytes(tmp_path):
    small = packed_weight_size("model-small.yaml", tmp_path, weight_bits=8)
    large = packed_weight_size("model.yaml", tmp_path, bit_config=str(FSDD_CONF / "bits-equal-bytes.yaml"))
    assert 280_000 <= small.count <= 330_000  # the "small 8-bit model (~300 k parameters)"
    assert large.count > 4 * small.count and large.stored_bytes <= small.stored_bytes
    assert 1 < large.index_bits < 2
