"""Model variants, registry and shapes through subsampling."""

from __future__ import annotations

import types

import pytest
import torch

from nnaqat import registry
from nnaqat.data.features import LOG_ENERGY_FLOOR, mel_bin_centers_hz
from nnaqat.models import LstmEncoder, Transducer, TransducerConfig

SMALL_ENCODER = {"hidden_size": 32, "num_layers": 2, "dropout": 0.0}


def small_model(predictor: str = "stateless", proj_size: int = 0, ctc_head: bool = False) -> Transducer:
    predictor_kwargs = {
        "stateless": {"embedding_dim": 24},
        "lstm": {"embedding_dim": 24, "hidden_size": 20},
        "windowed_lstm": {"embedding_dim": 24, "hidden_size": 20, "context_size": 3},
    }[predictor]
    config = TransducerConfig(
        vocab_size=12,
        predictor=predictor,
        joiner_dim=16,
        encoder_kwargs={**SMALL_ENCODER, "proj_size": proj_size},
        predictor_kwargs=predictor_kwargs,
        ctc_head=ctc_head,
    )
    return Transducer(config).eval()


def test_registry_lists_builtin_variants():
    assert "lstm" in registry.names("encoder")
    assert {"lstm", "stateless", "windowed_lstm"} <= set(registry.names("predictor"))
    assert "additive" in registry.names("joiner")
    with pytest.raises(KeyError, match="no encoder variant named 'nope'.*lstm"):
        registry.get("encoder", "nope")
    for call in (lambda: registry.register("widget", "x"), lambda: registry.get("widget", "x")):
        with pytest.raises(ValueError, match="unknown variant kind 'widget'"):
            call()


def test_entry_point_plugins_can_add_variants(monkeypatch):
    def plugin(reg):
        @reg.register("encoder", "plugin-test")
        class PluginEncoder(LstmEncoder):
            pass

    entry = types.SimpleNamespace(load=lambda: plugin)
    monkeypatch.setattr(registry, "entry_points", lambda group: [entry] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setitem(registry._variants, "encoder", dict(registry._variants["encoder"]))
    assert "plugin-test" in registry.names("encoder")
    assert isinstance(registry.build("encoder", "plugin-test", **SMALL_ENCODER), LstmEncoder)


@pytest.mark.parametrize("frames", [17, 18, 24, 25, 26, 50, 101])
@pytest.mark.parametrize("proj_size", [0, 24])
@pytest.mark.parametrize("factor", [4, 8])
def test_encoder_shapes_and_lengths(frames, proj_size, factor):
    encoder = LstmEncoder(**SMALL_ENCODER, proj_size=proj_size, subsampling_factor=factor).eval()
    assert encoder.min_input_frames == 2 * factor + 1 and encoder.output_length(2 * factor + 1) == 1
    x = torch.randn(3, frames, 80)
    lens = torch.tensor([frames, max(17, frames - 1), 17])
    out, out_lens, (h, c) = encoder(x, lens)
    expected = [(int(n) - 2 * factor - 1) // factor + 1 for n in lens]
    assert out.shape == (3, expected[0], encoder.d_model)
    assert out_lens.tolist() == expected
    assert h.shape == (2, 3, encoder.d_model) and c.shape == (2, 3, 32)


def test_too_short_input_is_rejected_clearly():
    encoder = LstmEncoder(**SMALL_ENCODER, subsampling_factor=8)
    x = torch.randn(2, 20, 80)
    with pytest.raises(ValueError, match=r"batch index \[1\].*at least 17"):
        encoder(x, torch.tensor([20, 16]))


@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize("cmn_prior_frames", [0, 20])
def test_encoder_is_causal_and_streams_in_chunks(factor, cmn_prior_frames):
    encoder = LstmEncoder(**{**SMALL_ENCODER, "hidden_size": 96}, subsampling_factor=factor,
                          cmn_prior_frames=cmn_prior_frames).eval()
    if encoder.cmn is not None:
        encoder.cmn.speech_mean.normal_()
    x = torch.randn(1, 131, 80)
    x[:, 30:45] = LOG_ENERGY_FLOOR  # digital silence between words
    full, _, _ = encoder(x, torch.tensor([131]))
    # Output frame j sees input frames f*j .. f*j+2f: n outputs take f*n+f+1 inputs, overlapping by f+1.
    state, pieces = None, []
    for start in range(0, full.size(1), 4):
        stop = min(start + 4, full.size(1))
        chunk = x[:, factor * start : factor * stop + factor + 1]
        out, _, state = encoder(chunk, torch.tensor([chunk.size(1)]), state)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("predictor", ["stateless", "lstm", "windowed_lstm"])
def test_predictor_steps_equal_full_sequence(predictor):
    model = small_model(predictor)
    y = torch.tensor([[3, 5, 5, 7, 1]])
    full = model.predict(torch.nn.functional.pad(y, (1, 0), value=0))
    state = model.predictor.initial_state(1, torch.device("cpu"))
    steps = []
    for token in [0] + y[0].tolist():
        out, state = model.predictor.step(torch.tensor([token]), state)
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-6, rtol=1e-6)


def test_windowed_lstm_predictor_counts_runs_up_to_its_context_and_forgets_beyond():
    model = small_model("windowed_lstm")  # context 3
    out = model.predict(torch.tensor([[0, 9, 5, 5, 5, 5, 5]]))[0]
    # After one, two and three 5s the outputs differ: the predictor can count that far...
    assert (out[2] - out[3]).abs().max() > 1e-4 and (out[3] - out[4]).abs().max() > 1e-4
    # ...and no further: the window (5, 5, 5) looks the same however long the run. The windows
    # are rows of one batched LSTM call, and oneDNN may round a row differently by its position
    # (seen on AVX2 machines: 3e-8): equal to float32 rounding, far below the 1e-4 of a count.
    same = dict(atol=1e-6, rtol=0)
    torch.testing.assert_close(out[4], out[5], **same)
    torch.testing.assert_close(out[5], out[6], **same)
    # Tokens older than the window do not matter.
    other = model.predict(torch.tensor([[0, 2, 7, 5, 5, 5]]))[0]
    torch.testing.assert_close(other[5], out[4], **same)


@pytest.mark.parametrize("predictor", ["stateless", "lstm", "windowed_lstm"])
def test_transducer_losses_are_finite_and_differentiable(predictor):
    model = small_model(predictor).train()
    x = torch.randn(2, 60, 80)
    x_lens = torch.tensor([60, 45])
    y = torch.tensor([[3, 4, 5], [6, 7, 0]])
    y_lens = torch.tensor([3, 2])
    simple, pruned, ctc, distill = model(x, x_lens, y, y_lens, prune_range=3)
    assert simple.shape == pruned.shape == (2,)
    assert torch.isfinite(simple).all() and torch.isfinite(pruned).all()
    assert ctc is None and distill is None  # no CTC head or teacher unless asked for
    (simple.sum() + pruned.sum()).backward()
    for name, p in model.named_parameters():  # the gradient reaches every part of the model
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_distillation_is_zero_against_itself_and_pulls_toward_the_teacher():
    """``distill``: KL to a teacher on the pruned lattice, zero when the teacher is the model,
    padding ignored, gradient into the student only."""
    torch.manual_seed(0)
    student, teacher = small_model().eval(), small_model().eval()
    x = torch.randn(2, 60, 80)
    x_lens, y, y_lens = torch.tensor([60, 45]), torch.tensor([[3, 4, 5], [6, 7, 0]]), torch.tensor([3, 2])
    itself = student(x, x_lens, y, y_lens, prune_range=3, teacher=student).distill
    torch.testing.assert_close(itself, torch.zeros(2), atol=1e-5, rtol=0)
    losses = student(x, x_lens, y, y_lens, prune_range=3, teacher=teacher)
    assert (losses.distill > 0.01).all()
    alone = student(x[1:, :45], x_lens[1:], y[1:, :2], y_lens[1:], prune_range=3, teacher=teacher).distill
    torch.testing.assert_close(losses.distill[1:], alone, rtol=1e-4, atol=1e-4)
    losses.distill.sum().backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.joiner.output_linear.weight.grad.abs().sum() > 0
    # A few steps on the KL alone bring the student's distributions toward the teacher's.
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05)
    for _ in range(5):
        optimizer.zero_grad()
        student(x, x_lens, y, y_lens, prune_range=3, teacher=teacher).distill.sum().backward()
        optimizer.step()
    assert student(x, x_lens, y, y_lens, prune_range=3, teacher=teacher).distill.sum() < losses.distill.sum()


def test_ctc_head_respects_lengths_and_trains_only_the_encoder_side():
    torch.manual_seed(0)
    model = small_model(ctc_head=True)
    x = torch.randn(2, 60, 80)
    x_lens = torch.tensor([60, 45])
    y = torch.tensor([[3, 4, 5], [6, 7, 0]])
    y_lens = torch.tensor([3, 2])
    losses = model(x, x_lens, y, y_lens, prune_range=3)
    assert losses.ctc.shape == (2,) and torch.isfinite(losses.ctc).all()
    # Padding frames and padding labels play no part: the second utterance scores the same alone.
    alone = model(x[1:, :45], x_lens[1:], y[1:, :2], y_lens[1:], prune_range=3).ctc
    torch.testing.assert_close(losses.ctc[1:], alone, rtol=1e-5, atol=1e-5)
    losses.ctc.sum().backward()
    assert model.ctc_proj.weight.grad is not None and model.encoder.layers[0].weight_ih_l0.grad is not None
    assert all(p.grad is None for p in model.joiner.parameters()) and all(p.grad is None for p in model.predictor.parameters())


def test_ctc_loss_of_an_utterance_too_short_for_ctc_is_zero_not_infinite():
    model = small_model(ctc_head=True)
    x_lens = torch.tensor([21])  # 4 encoder frames: enough for the transducer, not for CTC's "3 _ 3 _ 3"
    assert model.encoder.output_length(x_lens).item() == 4
    losses = model(torch.randn(1, 21, 80), x_lens, torch.tensor([[3, 3, 3]]), torch.tensor([3]), prune_range=3)
    assert losses.ctc.item() == 0.0 and torch.isfinite(losses.pruned).all()


def test_delay_penalty_changes_both_transducer_losses():
    model = small_model().eval()
    x, x_lens = torch.randn(2, 60, 80), torch.tensor([60, 45])
    y, y_lens = torch.tensor([[3, 4, 5], [6, 7, 0]]), torch.tensor([3, 2])
    plain = model(x, x_lens, y, y_lens, prune_range=3)
    delayed = model(x, x_lens, y, y_lens, prune_range=3, delay_penalty=0.5)
    assert torch.isfinite(delayed.pruned).all()
    assert not torch.allclose(plain.pruned, delayed.pruned) and not torch.allclose(plain.simple, delayed.simple)


def test_context_dropout_hides_tokens_from_the_predictor_in_training_only():
    model = small_model()
    seen = []
    predict = model.predict
    model.predict = lambda history: seen.append(history) or predict(history)
    x, x_lens = torch.randn(2, 60, 80), torch.tensor([60, 45])
    y, y_lens = torch.randint(3, 10, (2, 3)), torch.tensor([3, 3])
    model.eval()
    model(x, x_lens, y, y_lens, prune_range=3, context_dropout=1.0)
    assert torch.equal(seen[-1][:, 1:], y)  # eval: the predictor sees every token
    model.train()
    losses = model(x, x_lens, y, y_lens, prune_range=3, context_dropout=1.0)
    assert (seen[-1] == model.blank_id).all() and torch.isfinite(losses.pruned).all()
    model(x, x_lens, torch.randint(3, 10, (2, 4000)), torch.tensor([4000, 4000]), prune_range=3, context_dropout=0.3)
    assert abs(float((seen[-1][:, 1:] == model.blank_id).float().mean()) - 0.3) < 0.02


def test_band_limit_zeroes_bins_above_max_freq_and_stays_out_of_state_dict():
    encoder = LstmEncoder(num_features=80, hidden_size=16, num_layers=1, subsampling_factor=4, max_freq_hz=3800)
    norm = encoder.feature_norm
    norm.set_statistics(torch.randn(80), torch.rand(80) + 0.5)
    centers = mel_bin_centers_hz(80)
    out = norm(torch.randn(2, 30, 80) * 5)
    assert (out[..., centers > 3800] == 0).all()
    assert (out[..., centers <= 3800] != 0).all()
    assert int((centers <= 3800).sum()) == 60  # 8 kHz audio: bins up to ~3.8 kHz carry speech
    assert set(encoder.state_dict()) == set(LstmEncoder(80, 16, 1, subsampling_factor=4).state_dict())


def test_causal_mean_norm_follows_its_formula_and_skips_digital_silence():
    encoder = LstmEncoder(80, hidden_size=96, num_layers=1, subsampling_factor=4, cmn_prior_frames=10)
    cmn = encoder.cmn
    cmn.speech_mean.normal_()
    x = torch.randn(2, 40, 80) * 3
    x[:, 5:9] = LOG_ENERGY_FLOOR
    x_lens = torch.tensor([40, 30])
    state = cmn.initial_state(2)
    out, _ = cmn(x, x_lens, state, consumed=x_lens)
    # Digital silence and frames past the length are untouched.
    assert torch.equal(out[:, 5:9], x[:, 5:9]) and torch.equal(out[1, 30:], x[1, 30:])
    # A constant gain on speech frames survives only with the prior's weight: 10 / (10 + n_t).
    gained = torch.where(cmn.is_speech(x)[..., None], x + 6.0, x)
    out_gained, _ = cmn(gained, x_lens, state, consumed=x_lens)
    speech_frames = torch.tensor([t for t in range(40) if not 5 <= t < 9])
    counts = torch.arange(1, len(speech_frames) + 1, dtype=torch.float32)
    expected = 6.0 * 10 / (10 + counts)
    diff = (out_gained - out)[0, speech_frames]
    torch.testing.assert_close(diff, expected[:, None].expand_as(diff), atol=1e-4, rtol=1e-4)


def test_cmn_state_rides_in_an_extra_state_row():
    encoder = LstmEncoder(80, hidden_size=96, num_layers=2, subsampling_factor=8, cmn_prior_frames=50)
    h, c = encoder.initial_state(3)
    assert h.shape == (3, 3, 96) and c.shape == (3, 3, 96) and encoder.num_state_rows == 3
    with pytest.raises(ValueError, match="hidden_size >= 81"):
        LstmEncoder(80, hidden_size=64, cmn_prior_frames=50)
