"""``NnaLstm``: one LSTM layer that computes what the NNA's integer LSTM computes.

The integer step is the one defined in ``reference_lstm`` (TFLite-style: int8 input and
hidden, per-channel int8 weights, gate pre-activations in the spec's gate format, sigmoid/tanh
tables, a power-of-two int16 cell state, rounding-shift products), written here with the
training-time operators of ``ops`` so that gradients pass straight through. Float in, float
out, with ``nn.LSTM``'s parameter names and call signature (batch first, one layer), so it drops
into a float model and loads its weights.

Calibration (training mode, until frozen): the input range by EMA like ``NnaLinear``; the hidden
range and the cell's largest magnitude by EMA over the whole sequence, applied from the next
batch on (a recurrent layer needs one scale for all its steps). Before the first observation
the hidden range is ``[-1, 1]`` (what ``o * tanh(c)`` spans) and the cell range the tanh table's
input range.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, Optional, Tuple

import torch
from torch import nn

from nnaqat import _kernels
from nnaqat.nna import ops
from nnaqat.nna import reference as ref
from nnaqat.nna.linear import (
    RangeObserver,
    asymmetric_scale_and_zero_point,
    fixed_point_multipliers,
    quantize_bias,
    quantize_weight,
    symmetric_weight_scale,
)
from nnaqat.nna.reference_lstm import LstmParams, cell_frac_bits, gate_luts, provisional_cell_max_abs
from nnaqat.nna.spec import ROUNDINGS, NnaSpec

if TYPE_CHECKING:
    from nnaqat.nna.placement import CpuFallback

FloatState = Tuple[torch.Tensor, torch.Tensor]  # (h, c), each (1, N, H), as nn.LSTM's


class _Integers(NamedTuple):
    """The integer constants of one forward pass (integer-valued tensors, weights with STE)."""

    w_x: torch.Tensor  # (4H, K)
    bias: torch.Tensor  # (4H,) accumulator units
    x_zero_point: int
    m_x: torch.Tensor  # (4H,) M0 to the gate format
    shift_x: torch.Tensor
    w_h: torch.Tensor  # (4H, H)
    h_zero_point: int
    m_h: torch.Tensor
    shift_h: torch.Tensor
    cell_frac_bits: int
    m_out: int  # o * tanh(c) to the hidden scale
    shift_out: int


class _Records(NamedTuple):
    """What the integer recurrence leaves for the backward pass, stacked ``(T, N, ...)`` over
    steps (``N`` sequences, ``H`` hidden units); in ``csrc/lstm.cpp``'s order. The flags (uint8)
    mark where each saturation did not clip; the tables' outputs are looked up again."""

    h_prev: torch.Tensor  # (T, N, H) hidden codes each step read
    c_prev: torch.Tensor  # (T, N, H) cell codes each step read
    gates: torch.Tensor  # (T, N, 4H) saturated gate codes, the tables' inputs
    gate_flags: torch.Tensor  # (T, N, 4H) recurrent accumulator, gate, input accumulator, input gate codes
    cell_gate: torch.Tensor  # (T, N, H) the new cell in the gate format, tanh's input
    unit_flags: torch.Tensor  # (T, N, H) f * c, i * g, their sum, the cell in the gate format, h


class NnaLstm(nn.Module):
    """Emulated integer LSTM layer; see the module docstring."""

    def __init__(self, input_size: int, hidden_size: int, spec: NnaSpec = NnaSpec()) -> None:
        super().__init__()
        self.spec = spec
        self.input_size = input_size
        self.hidden_size = hidden_size
        gates = 4 * hidden_size
        self.weight_ih_l0 = nn.Parameter(torch.empty(gates, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(gates, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(gates))
        self.bias_hh_l0 = nn.Parameter(torch.empty(gates))
        bound = 1.0 / math.sqrt(hidden_size)  # nn.LSTM's initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        self.input_observer = RangeObserver(spec.activations.bits)
        self.hidden_observer = RangeObserver(spec.lstm.hidden_bits)
        self.cell_observer = RangeObserver(spec.lstm.cell_bits)  # its largest magnitude sets the exponent
        self.luts = gate_luts(spec)
        self.cpu_fallback: Optional[CpuFallback] = None  # set by placement.place_

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, spec: NnaSpec = NnaSpec()) -> NnaLstm:
        """A copy of a one-layer, batch-first, unidirectional ``nn.LSTM`` with biases and no
        projection (uncalibrated)."""
        if lstm.num_layers != 1 or not lstm.batch_first or lstm.bidirectional or lstm.proj_size or not lstm.bias:
            raise ValueError(f"only one-layer batch-first unidirectional LSTMs with bias and no projection: {lstm}")
        layer = cls(lstm.input_size, lstm.hidden_size, spec)
        with torch.no_grad():
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                getattr(layer, name).copy_(getattr(lstm, name))
        return layer

    def freeze_calibration(self) -> None:
        for observer in (self.input_observer, self.hidden_observer, self.cell_observer):
            observer.freeze()

    # ---- quantization parameters ----
    def hidden_scale_and_zero_point(self) -> Tuple[torch.Tensor, int]:
        """Scale and zero point of ``h`` (``hidden_bits``)."""
        if self.hidden_observer.calibrated or not self.training:
            return self.hidden_observer.scale_and_zero_point()
        return asymmetric_scale_and_zero_point(torch.tensor(-1.0), torch.tensor(1.0), self.spec.lstm.hidden_bits)

    def cell_frac_bits(self) -> int:
        """The cell state's scale is ``2**-cell_frac_bits``."""
        observer = self.cell_observer
        if observer.calibrated:
            return cell_frac_bits(float(observer.min_max.abs().max()), self.spec)
        if not self.training:
            raise RuntimeError("cell range has seen no data: run training-mode batches first")
        return cell_frac_bits(provisional_cell_max_abs(self.spec), self.spec)

    def _integers(self) -> _Integers:
        spec = self.spec
        x_scale, x_zero_point = self.input_observer.scale_and_zero_point()
        h_scale, h_zero_point = self.hidden_scale_and_zero_point()
        wx_scale = symmetric_weight_scale(self.weight_ih_l0, spec.weights)
        wh_scale = symmetric_weight_scale(self.weight_hh_l0, spec.weights)
        gate_unit = 2.0**spec.lstm.gate.frac_bits
        m_x, shift_x = fixed_point_multipliers(x_scale.double() * wx_scale.double() * gate_unit)
        m_h, shift_h = fixed_point_multipliers(h_scale.double() * wh_scale.double() * gate_unit)
        product_unit = 2.0 ** (-2 * spec.lstm.nonlinearity.frac_bits)  # of o * tanh(c)
        w_h = quantize_weight(self.weight_hh_l0, wh_scale, spec.weights.bits)
        m_out, shift_out = ref.quantize_multiplier(product_unit / float(h_scale))
        return _Integers(
            w_x=quantize_weight(self.weight_ih_l0, wx_scale, spec.weights.bits),
            bias=quantize_bias(self.bias_ih_l0 + self.bias_hh_l0, x_scale, wx_scale, spec.accumulator.bits),
            x_zero_point=x_zero_point, m_x=m_x, shift_x=shift_x,
            w_h=w_h,
            h_zero_point=h_zero_point, m_h=m_h, shift_h=shift_h,
            cell_frac_bits=self.cell_frac_bits(), m_out=m_out, shift_out=shift_out,
        )  # fmt: skip

    @torch.no_grad()
    def integer_params(self) -> LstmParams:
        """The integers :meth:`forward_integers` uses, for ``reference_lstm``."""
        k = self._integers()
        zero_bias = torch.zeros(k.w_h.size(0), dtype=torch.long).numpy()
        return LstmParams(
            input=ref.LinearParams(
                k.w_x.long().numpy(), k.bias.long().numpy(), k.x_zero_point, k.m_x.numpy(), k.shift_x.numpy(), 0
            ),
            recurrent=ref.LinearParams(
                k.w_h.long().numpy(), zero_bias, k.h_zero_point, k.m_h.numpy(), k.shift_h.numpy(), 0
            ),
            cell_frac_bits=k.cell_frac_bits,
            hidden_multiplier=k.m_out,
            hidden_shift=k.shift_out,
        )

    # ---- integer computation ----
    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x (N, T, K)`` float -> integer-valued float32 codes, observing its range in training."""
        self.input_observer.observe(x)
        scale, zero_point = self.input_observer.scale_and_zero_point()
        return ops.quantize(x, scale, zero_point, self.spec.activations.bits)

    def _cell_to_gate_format(self, c_frac: int) -> Tuple[float, int]:
        """``reference_lstm.cell_to_gate_format`` as a ``mul`` by ``(factor, shift)``."""
        gate_frac = self.spec.lstm.gate.frac_bits
        return (1.0, c_frac - gate_frac) if c_frac >= gate_frac else (2.0 ** (gate_frac - c_frac), 0)

    def recurrence(
        self, k: _Integers, x_q: torch.Tensor, h: torch.Tensor, c: torch.Tensor, keep: bool = False
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[_Records]]:
        """The integer layer (compiled, ``csrc/lstm.cpp``), no gradient: ``x_q (N, T, K)`` input
        codes, state codes ``(N, H)`` -> ``(y (N, T, H), h_T, c_T, records)``, the records for
        the backward pass if ``keep``. The input's matmul runs for all steps at once (it does not
        depend on the state); its requantization to gate codes runs inside each step. Observes
        the hidden and cell ranges in training (used from the next call on)."""
        spec, lstm = self.spec, self.spec.lstm
        rounding, order = spec.requantization.rounding, spec.requantization.zero_point
        n_frac, c_frac = lstm.nonlinearity.frac_bits, k.cell_frac_bits
        factor, shift = self._cell_to_gate_format(c_frac)
        ints = [
            k.h_zero_point, spec.accumulator.bits, lstm.gate.bits, lstm.cell_bits, lstm.hidden_bits, k.m_out,
            k.shift_out, ROUNDINGS.index(rounding), spec.accumulator.overflow == "saturate",
            order == "before_rounding",
        ]  # fmt: skip
        reals = [2.0**-n_frac, 2.0 ** -(2 * n_frac - c_frac), factor * 2.0**-shift]
        gates = k.w_x.size(0)
        x_max_abs = 2.0 ** (spec.activations.bits - 1)  # activation codes
        with torch.no_grad():
            product, offset = ops.product_and_offset(x_q, k.w_x, k.x_zero_point, k.bias, x_max_abs)
            y, h, c, ranges, *records = _kernels.lstm_forward(
                product, offset, torch.broadcast_to(k.m_x, (gates,)), torch.broadcast_to(k.shift_x, (gates,)), k.w_h,
                h, c, k.m_h, k.shift_h, ops.expanded_codes(self.luts.sigmoid), ops.expanded_codes(self.luts.tanh), ints,
                reals, keep,
            )  # fmt: skip
            if self.training and x_q.size(1):
                self.hidden_observer.observe(ranges[:2] * 2.0 ** (-2 * n_frac))
                self.cell_observer.observe(ranges[2:] * 2.0**-c_frac)
        return y, h, c, _Records(*records) if keep and x_q.size(1) else None

    def forward_integers(
        self, x_q: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor]
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """The NNA's integers: ``x_q (N, T, K)`` input codes (activation bits) and state codes ``(h, c)``, each
        ``(N, H)`` -> ``(y (N, T, H), (h_T, c_T))`` codes, integer-valued float32, with
        straight-through gradients (:class:`_Recurrence`). Observes the hidden and cell ranges
        in training (used from the next call on)."""
        k = self._integers()
        h, c = state
        if ops.needs_grad(x_q, k.w_x, k.bias, k.w_h, h, c):
            y, h, c = _Recurrence.apply(self, k, x_q, k.w_x, k.bias, k.w_h, h, c)
        else:
            y, h, c, _ = self.recurrence(k, x_q, h, c)
        return y, (h, c)

    # ---- float interface ----
    def initial_state_codes(self, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Zero state as codes: ``h = z_h``, ``c = 0``, each ``(N, H)`` float32."""
        _, h_zero_point = self.hidden_scale_and_zero_point()
        h = torch.full((batch_size, self.hidden_size), float(h_zero_point))
        return h, torch.zeros(batch_size, self.hidden_size)

    def quantize_state(self, state: FloatState) -> Tuple[torch.Tensor, torch.Tensor]:
        """nn.LSTM's float state ``((1, N, H), (1, N, H))`` as codes ``(N, H)`` each (exact for a
        state this layer returned)."""
        h_scale, h_zero_point = self.hidden_scale_and_zero_point()
        c_scale = torch.tensor(2.0**-self.cell_frac_bits())
        h = ops.quantize(state[0][0], h_scale, h_zero_point, self.spec.lstm.hidden_bits)
        return h, ops.quantize(state[1][0], c_scale, 0, self.spec.lstm.cell_bits)

    def forward(self, x: torch.Tensor, state: Optional[FloatState] = None) -> Tuple[torch.Tensor, FloatState]:
        """``x (N, T, K)`` float, ``state ((1, N, H), (1, N, H))`` or None ->
        ``(y (N, T, H), (h, c))`` floats: the dequantized NNA outputs, as ``nn.LSTM``. Placed on
        the CPU, ``nn.LSTM`` itself (float state; ``y`` handed on by the fallback)."""
        if self.cpu_fallback is not None:
            if state is None:
                zeros = x.new_zeros(1, x.size(0), self.hidden_size)
                state = (zeros, zeros)
            weights = [self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0]
            y, h, c = torch.lstm(x, state, weights, True, 1, 0.0, self.training, False, True)
            return self.cpu_fallback.output(y, self.hidden_observer, self.spec.lstm.hidden_bits), (h, c)
        x_q = self.quantize_input(x)
        # Read the state with the scales the step uses (before this batch's observation).
        h_scale, h_zero_point = self.hidden_scale_and_zero_point()
        c_scale = 2.0**-self.cell_frac_bits()
        codes = self.initial_state_codes(x.size(0)) if state is None else self.quantize_state(state)
        y_q, (h, c) = self.forward_integers(x_q, codes)
        y = ops.dequantize(y_q, h_scale, h_zero_point)
        return y, (ops.dequantize(h, h_scale, h_zero_point)[None], (c * c_scale)[None])

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class _Recurrence(torch.autograd.Function):
    """The integer layer (input gates and recurrence) with the straight-through gradients of
    ``ops`` written out by hand.

    Autograd through the step's dozen operators costs several times the integer step itself;
    here the forward pass keeps what each step saturated and the backward pass runs the chain
    rule once per step (compiled, ``csrc/lstm.cpp``): rounding is the identity, a
    saturation passes gradients where it did not clip, a requantization multiplies by its real
    multiplier, a table by the true function's derivative. ``tests/test_nna_lstm.py`` checks it
    against autograd through ``ops``.
    """

    @staticmethod
    def forward(ctx, layer: NnaLstm, k: _Integers, x_q, w_x, bias, w_h, h0, c0):  # type: ignore[override]
        y, h, c, records = layer.recurrence(k, x_q.detach(), h0.detach(), c0.detach(), keep=True)
        ctx.layer, ctx.k = layer, k
        ctx.records = records
        ctx.save_for_backward(x_q, w_x, w_h)
        return y, h, c

    @staticmethod
    def backward(ctx, grad_y, grad_h, grad_c):  # type: ignore[override]
        x_q, w_x, w_h = ctx.saved_tensors
        layer, k, r = ctx.layer, ctx.k, ctx.records
        if r is None:  # an empty sequence
            zeros = (torch.zeros_like(v) for v in (x_q, w_x, k.bias, w_h))
            return None, None, *zeros, grad_h, grad_c
        spec = layer.spec
        n_frac, c_frac = spec.lstm.nonlinearity.frac_bits, k.cell_frac_bits
        factor, shift = layer._cell_to_gate_format(c_frac)
        sigmoid_lut, tanh_lut = layer.luts
        state_shape = r.c_prev[0].shape
        gates = w_h.size(0)
        grad_product, grad_acc, dh, dc = _kernels.lstm_backward(
            torch.empty(0) if grad_y is None else grad_y,
            torch.zeros(state_shape) if grad_h is None else grad_h,
            torch.zeros(state_shape) if grad_c is None else grad_c,
            list(r), ops.expanded_codes(sigmoid_lut), ops.expanded_codes(tanh_lut),
            ops.expanded_derivative(sigmoid_lut), ops.expanded_derivative(tanh_lut), w_h.detach(),
            torch.broadcast_to(ops.real_multiplier(k.m_x, k.shift_x), (gates,)),
            ops.real_multiplier(k.m_h, k.shift_h).float(),
            [spec.lstm.gate.bits],
            [float(ops.real_multiplier(k.m_out, k.shift_out)), 2.0**-n_frac, 2.0 ** -(2 * n_frac - c_frac),
             factor * 2.0**-shift],
        )  # fmt: skip
        grad_x, grad_w_x, grad_bias = ops.matmul_grads(
            grad_product, x_q, w_x, k.x_zero_point, ctx.needs_input_grad[2:5]
        )  # fmt: skip
        # The recurrent weight's gradient, all steps in one matmul: sum_t d_acc_t^T (h_{t-1} - z_h).
        grad_w_h = grad_acc.flatten(0, 1).T @ (r.h_prev - k.h_zero_point).flatten(0, 1)
        return None, None, grad_x, grad_w_x, grad_bias, grad_w_h, dh, dc
