"""CPU fallback in the emulation: ops a spec places on the CPU run in float, on a model trained on
real FSDD; what crosses back to the NNA is activation codes; the integer engine refuses them."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from lhotse import load_manifest

from nnaqat.checkpoint import load_model
from nnaqat.data.datamodule import batch_to_tensors, eval_dataloader
from nnaqat.data.tokenizer import Tokenizer
from nnaqat.nna import NnaSpec, ops
from nnaqat.nna.convert import calibrate, freeze_calibration, nna_
from nnaqat.nna.export import export_integer_model
from nnaqat.nna.placement import cpu_ops, place_
from nnaqat.nna.spec import NnaSpecError
from repo_paths import NNA_CONF, REPO

HARSH = NnaSpec.from_yaml(NNA_CONF / "harsh.yaml")


@pytest.fixture(scope="module")
def batches(tiny_data):
    tokenizer = Tokenizer(tiny_data.bpe_model)
    loader = eval_dataloader(load_manifest(tiny_data.train), max_duration=20.0)
    return [batch_to_tensors(batch, tokenizer)[:4] for _, batch in zip(range(3), loader)]


def converted(checkpoint, spec: NnaSpec, batches):
    model = load_model([checkpoint])
    nna_(model, spec)
    calibrate(model, batches)
    freeze_calibration(model)  # the CPU LSTMs' unused cell ranges are left alone
    return model.eval()


def test_rules_put_the_lstm_layers_on_the_cpu_and_place_again_moves_them_back(small_checkpoint, batches):
    model = converted(small_checkpoint, HARSH.placed("encoder.layers.*=cpu"), batches)
    layers = [f"encoder.layers.{i}" for i in range(len(model.encoder.layers))]
    assert cpu_ops(model) == layers
    assert all(model.get_submodule(name).cpu_fallback.to_nna for name in layers)  # the residual adds read them
    x, x_lens, _, _ = batches[0]
    with torch.no_grad():
        on_cpu = model.encoder(x, x_lens)[0]
    assert place_(model, HARSH) == [] and model.nna_spec == HARSH
    calibrate(model, batches)  # the LSTMs' cell ranges, unused on the CPU, see data now
    freeze_calibration(model)
    model.eval()
    with torch.no_grad():
        on_nna = model.encoder(x, x_lens)[0]
        rebuilt = nna_(load_model([small_checkpoint]), HARSH, state_dict=model.state_dict()).eval()
        reference = rebuilt.encoder(x, x_lens)[0]
    assert torch.equal(on_nna, reference)  # every op back on the NNA, nothing left in float
    assert not torch.equal(on_cpu, on_nna)


def test_placement_rules_are_checked():
    assert HARSH.placed("") == HARSH
    assert HARSH.placed(" joiner.* = cpu ,encoder.layers.0=nna").placement[:2] == (
        ("joiner.*", "cpu"), ("encoder.layers.0", "nna"))  # fmt: skip
    for bad in ("joiner.*", "joiner.*=gpu", "=cpu", "joiner.*=cpu,joiner.*=nna"):
        with pytest.raises(NnaSpecError, match="placement"):
            HARSH.placed(bad)


def test_an_lstm_on_the_cpu_is_the_float_lstm_handed_on_as_codes(small_checkpoint, batches):
    model = converted(small_checkpoint, HARSH.placed("encoder.layers.0=cpu"), batches)
    float_model = load_model([small_checkpoint]).eval()
    layer, float_layer = model.encoder.layers[0], float_model.encoder.layers[0]
    x = torch.randn(2, 7, layer.input_size)
    with torch.no_grad():
        y, (h, c) = layer(x)
        expected, (expected_h, expected_c) = float_layer(x)
    scale, zero_point = layer.hidden_observer.scale_and_zero_point()
    assert torch.equal(y, ops.fake_quantize(expected, scale, zero_point, HARSH.lstm.hidden_bits))
    assert not torch.equal(y, expected)  # the codes really are coarser
    torch.testing.assert_close(h, expected_h, rtol=0, atol=0)  # the recurrent state stays float
    torch.testing.assert_close(c, expected_c, rtol=0, atol=0)


def test_ops_read_only_by_cpu_ops_stay_float(small_checkpoint, batches):
    """With the whole encoder and joiner on the CPU (the predictor has no float fallback), the
    encoder is the float encoder exactly, and the output layer feeds the (CPU) search in float."""
    spec = HARSH.placed("predictor.*=nna,*=cpu")
    model = converted(small_checkpoint, spec, batches)
    float_model = load_model([small_checkpoint]).eval()
    x, x_lens, _, _ = batches[0]
    with torch.no_grad():
        out, out_lens, _ = model.encoder(x, x_lens)
        expected, expected_lens, _ = float_model.encoder(x, x_lens)
    assert torch.equal(out_lens, expected_lens)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not model.joiner.output_linear.cpu_fallback.to_nna
    assert model.encoder.residuals[-1].cpu_fallback.to_nna is False


def test_cpu_ops_train_through_the_float_path(small_checkpoint, batches):
    model = load_model([small_checkpoint])
    nna_(model, HARSH.placed("encoder.layers.1=cpu,joiner.activation=cpu"))
    calibrate(model, batches)
    model.train()
    x, x_lens, y, y_lens = batches[0]
    losses = model(x, x_lens, y, y_lens, prune_range=5)
    (losses.simple + losses.pruned).sum().backward()
    for name in ("encoder.layers.1.weight_ih_l0", "encoder.layers.0.weight_hh_l0", "joiner.output_linear.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_the_integer_engine_and_the_predictor_refuse_the_cpu(small_checkpoint, batches):
    model = converted(small_checkpoint, HARSH.placed("joiner.activation=cpu"), batches)
    with pytest.raises(ValueError, match=r"all-NNA models.*joiner\.activation"):
        export_integer_model(model)
    with pytest.raises(ValueError, match="predictor.embedding"):
        nna_(load_model([small_checkpoint]), HARSH.placed("predictor.*=cpu"))


def test_cost_script_prints_latency_and_wer_per_placement(small_checkpoint, tiny_data):
    done = subprocess.run(
        [sys.executable, str(REPO / "local/nna_cost.py"), "--checkpoint", str(small_checkpoint),
         "--bpe-model", str(tiny_data.bpe_model), "--nna-spec", str(NNA_CONF / "harsh.yaml"),
         "--calibration-cuts", str(tiny_data.train), "--calibration-batches", "2",
         "--placements", "", "encoder.layers.*=cpu", "--cuts", f"dev={tiny_data.dev}", "--label", "small"],
        capture_output=True, text=True, check=True,
    )
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| small |")]
    assert [row[2].strip() for row in rows] == ["none", "encoder.layers.0, encoder.layers.1"], done.stdout
    totals = [float(row[6]) for row in rows]
    assert totals[1] > totals[0] > 0  # float LSTMs on the slow CPU, and four transfers per frame
    assert all(float(row[7]) < 60.0 for row in rows), done.stdout  # real hypotheses (as the engine tests ask)
