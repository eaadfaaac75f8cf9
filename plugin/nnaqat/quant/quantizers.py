"""Registered weight quantizers: none, ptq, uniform, lsq, s8bqat.

A quantizer is an ``nn.Module`` attached to the model by :func:`nnaqat.quant.quantize_`; its
state (centroids, learned step sizes, final scales) is part of the model's state dict, so it
travels with checkpoints. The trainer calls :meth:`penalty_backward` and :meth:`after_step`; decoding and
export call :meth:`finalize`, after which every quantized weight is exactly
``levels[indices] * scale`` (:meth:`quantized` returns that form).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

from nnaqat import _kernels
from nnaqat.quant.codebook import INT8_MAX, int8_levels, int8_scale, nearest_index
from nnaqat.quant.config import QuantConfig
from nnaqat.quant.fake_quant import (
    LsqFakeQuant,
    UniformFakeQuant,
    channel_view,
    fake_quantize,
    grad_scale,
    max_level,
    round_ste,
    straight_through,
    uniform_int8_levels,
)
from nnaqat.quant.lloyd_max import lloyd_max
from nnaqat.registry import register


@dataclass
class QuantizedTensor:
    """A weight as an 8-bit NNA stores it: K-bit indices into a sorted int8 codebook, times a
    scale per tensor (``()``) or per output channel (``(C,)``)."""

    indices: torch.Tensor  # int64, the weight's shape
    levels: torch.Tensor  # int8 (L,), L <= 2**bits
    scale: torch.Tensor  # float32 () or (C,)
    bits: int

    def dequantize(self) -> torch.Tensor:
        """The float weight: ``levels[indices] * scale`` (float32)."""
        values = self.levels.float()[self.indices]
        return values * channel_view(self.scale, values)


def _split(name: str) -> Tuple[str, str]:
    module, _, attr = name.rpartition(".")
    return module, attr


def _key(name: str) -> str:
    return name.replace(".", "__")  # buffer names cannot contain dots


class WeightQuantizer(nn.Module):
    """Base class; ``none`` uses it as is (nothing quantized, nothing changed)."""

    trains = True  # False: post-training only (the recipe skips fine-tuning)

    def __init__(
        self, model: nn.Module, bits: Dict[str, int], config: QuantConfig, state_dict: Optional[dict] = None
    ) -> None:
        """``state_dict``: a checkpoint this quantizer's structure must match (it is loaded
        afterwards); None to initialise from the model's current (fp32) weights."""
        super().__init__()
        self.bits = dict(bits)
        self.config = config

    @staticmethod
    def weight(model: nn.Module, name: str) -> torch.Tensor:
        """The weight the forward pass uses (fake-quantized while a parametrization is attached)."""
        module, attr = _split(name)
        return getattr(model.get_submodule(module), attr)

    @staticmethod
    def latent(model: nn.Module, name: str) -> torch.Tensor:
        """The float weight being trained (behind a fake-quantization parametrization, if any)."""
        module, attr = _split(name)
        owner = model.get_submodule(module)
        return owner.parametrizations[attr].original if parametrize.is_parametrized(owner, attr) else getattr(owner, attr)

    def penalty_backward(self, model: nn.Module, step: int) -> Optional[float]:
        """Adds the gradient of the quantizer's regularization term (a term of the training
        loss) to the trained weights' ``.grad``, after the loss's backward pass and before
        clipping and the optimizer step. Returns the term's value, or None without one."""
        return None

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after optimizer step ``step`` (1-based)."""

    def finalize(self, model: nn.Module) -> None:
        """Makes every quantized weight an exact codebook value (idempotent)."""
        with torch.no_grad():
            for name, q in self.quantized(model).items():
                module, attr = _split(name)
                owner = model.get_submodule(module)
                if parametrize.is_parametrized(owner, attr):
                    parametrize.remove_parametrizations(owner, attr, leave_parametrized=False)
                getattr(owner, attr).copy_(q.dequantize())

    def quantized(self, model: nn.Module) -> Dict[str, QuantizedTensor]:
        """Each quantized weight's stored form (for the current weights)."""
        return {}

    def check_on_codebook(self, model: nn.Module) -> None:
        """Raises AssertionError naming the first weight not exactly on its codebook."""
        for name, q in self.quantized(model).items():
            weight = self.weight(model, name)
            if not torch.equal(weight.detach(), q.dequantize()):
                off = int((weight.detach() != q.dequantize()).sum())
                raise AssertionError(f"{name}: {off} of {weight.numel()} weights are not on the {q.bits}-bit codebook")


register("quantizer", "none")(WeightQuantizer)


@register("quantizer", "uniform")
class UniformQuantizer(WeightQuantizer):
    """Symmetric per-channel K-bit fake quantization with max-abs scales and clipped STE."""

    def __init__(
        self, model: nn.Module, bits: Dict[str, int], config: QuantConfig, state_dict: Optional[dict] = None
    ) -> None:
        super().__init__(model, bits, config, state_dict)
        # A finalized checkpoint holds plain quantized weights: no fake quantization to attach.
        fake_quant = state_dict is None or any(".parametrizations." in k for k in state_dict)
        for name, b in self.bits.items():
            module, attr = _split(name)
            owner = model.get_submodule(module)
            self.register_buffer(f"scale__{_key(name)}", torch.ones(getattr(owner, attr).size(0)))
            if fake_quant:
                parametrize.register_parametrization(owner, attr, self.make_parametrization(getattr(owner, attr), b))

    def make_parametrization(self, weight: torch.Tensor, bits: int) -> nn.Module:
        return UniformFakeQuant(bits)

    def current_scale(self, model: nn.Module, name: str) -> torch.Tensor:
        module, attr = _split(name)
        owner = model.get_submodule(module)
        if parametrize.is_parametrized(owner, attr):
            fq = owner.parametrizations[attr][0]
            latent = owner.parametrizations[attr].original
            return (fq.scale(latent) if isinstance(fq, UniformFakeQuant) else fq.scale).detach().float()
        return getattr(self, f"scale__{_key(name)}")

    def quantized(self, model: nn.Module) -> Dict[str, QuantizedTensor]:
        out = {}
        for name, b in self.bits.items():
            scale = self.current_scale(model, name)
            getattr(self, f"scale__{_key(name)}").copy_(scale)
            latent = self.latent(model, name)
            with torch.no_grad():
                values = fake_quantize(latent, scale, b) / channel_view(scale, latent)
            levels = uniform_int8_levels(b)
            out[name] = QuantizedTensor(nearest_index(values, levels.float()), levels, scale.clone(), b)
        return out


@register("quantizer", "ptq")
class PostTrainingQuantizer(UniformQuantizer):
    """Round-to-nearest onto the per-channel K-bit int8 grid of a trained model; no training."""

    trains = False


@register("quantizer", "lsq")
class LsqQuantizer(UniformQuantizer):
    """Per-channel K-bit fake quantization with learned step sizes (LSQ)."""

    def make_parametrization(self, weight: torch.Tensor, bits: int) -> nn.Module:
        return LsqFakeQuant(weight, bits)


@register("quantizer", "s8bqat")
class S8bqatQuantizer(WeightQuantizer):
    """S8BQAT: Lloyd-Max codebooks on the int8 grid, the MRACos regularizer and a periodic hard
    compressor. The forward pass uses the float weights themselves.

    Codebooks live in int8 units: a tensor's weights divided by its int8 scale (one per tensor,
    as in the paper, or one per output channel with ``codebook="channel"``: a shared K-bit set
    of int8 values, each channel with its own scale) are pulled towards and snapped onto the
    ``2**K`` int8 levels. With ``ste_forward`` the forward pass sees the snapped weights and the
    float weights get straight-through gradients (our addition; the paper regularizes only);
    with ``learn_scale`` too, each codebook's scale is learned (in the log domain, as LSQ's step);
    with ``learn_levels``, its levels are (GQ-style learnable centroids, starting from Lloyd-Max):
    each level gets the summed gradient of the weights snapped onto it and is rounded to an int8
    integer in every forward pass, so training always sees a deployable codebook. The
    ``levels__`` buffers always hold the current int8 codebooks.
    """

    def __init__(
        self, model: nn.Module, bits: Dict[str, int], config: QuantConfig, state_dict: Optional[dict] = None
    ) -> None:
        super().__init__(model, bits, config, state_dict)
        if (config.learn_scale or config.learn_levels) and not config.ste_forward:
            raise ValueError("learn_scale and learn_levels need ste_forward: only the snapped forward pass trains them")
        given = torch.load(config.centroids, weights_only=True) if state_dict is None and config.centroids else None
        self.sizes = {name: self.weight(model, name).numel() for name in self.bits}  # weights per tensor
        for name, b in self.bits.items():
            if state_dict is not None:  # shapes come from the checkpoint being loaded
                levels, scale = torch.zeros(0, dtype=torch.int8), torch.ones(())
            elif given is not None:
                if name not in given:
                    raise KeyError(f"{config.centroids} has no codebook for {name}")
                levels, scale = given[name]["levels"], given[name]["scale"]
                if levels.numel() > 2**b:
                    raise ValueError(f"{config.centroids}: {name} has {levels.numel()} centroids, more than {b} bits hold")
            else:
                levels, scale = derive_codebook(self.weight(model, name), b, config.codebook)
            self.register_buffer(f"levels__{_key(name)}", levels.to(torch.int8))
            self.register_buffer(f"scale__{_key(name)}", scale.float())
            if config.learn_scale:
                self.register_parameter(f"log_gain__{_key(name)}", nn.Parameter(torch.zeros_like(scale.float())))
            if config.learn_levels:
                start = levels.float() / level_step(b)
                self.register_parameter(f"level_steps__{_key(name)}", nn.Parameter(start))
        # A finalized checkpoint holds plain snapped weights: nothing to attach.
        if config.ste_forward and (state_dict is None or any(".parametrizations." in k for k in state_dict)):
            for name in self.bits:
                module, attr = _split(name)
                snap = CodebookSnap(lambda name=name: self.codebook(name))
                # unsafe: skips the trial forward, which a codebook still to be loaded cannot run
                parametrize.register_parametrization(model.get_submodule(module), attr, snap, unsafe=True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Codebook sizes differ per tensor: adopt the stored ones where they differ. Same-shaped
        # tensors load in place, so an optimizer built before a resume keeps training them.
        for key, value in state_dict.items():
            name = key[len(prefix):]
            if not name.startswith(("log_gain__", "level_steps__", "levels__", "scale__")) or not key.startswith(prefix):
                continue
            current = getattr(self, name, None)
            if current is not None and current.shape == value.shape:
                continue
            if name.startswith(("log_gain__", "level_steps__")):
                setattr(self, name, nn.Parameter(torch.empty_like(value)))
            else:
                setattr(self, name, torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def codebook(self, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(levels (L,), scale () or (C,))`` of a tensor: int8 levels, or with ``learn_levels``
        sorted float32 integers in the int8 range; learned levels and scales carry their gradients."""
        key = _key(name)
        levels, scale = getattr(self, f"levels__{key}"), getattr(self, f"scale__{key}")
        if self.config.learn_levels:
            levels = self._learned_levels(name)
        if self.config.learn_scale:
            scale = scale * torch.exp(getattr(self, f"log_gain__{key}"))
        return levels, scale

    def _learned_levels(self, name: str) -> torch.Tensor:
        """The learned levels, rounded to int8 integers with a straight-through gradient, sorted.

        Stored in units of a uniform K-bit step (``level_step``): Adam moves a parameter about
        ``lr`` per step, which in int8 units would leave a 2-bit level where it started. The
        gradient is divided by the square root of the levels' weight count (LSQ's scaling;
        Adam does not see it) so that a level's summed gradient does not dominate clipping."""
        steps = getattr(self, f"level_steps__{_key(name)}")
        steps = grad_scale(steps, self.sizes[name] ** -0.5)
        levels = round_ste((steps * level_step(self.bits[name])).clamp(-INT8_MAX, INT8_MAX))
        return torch.sort(levels).values

    def normalized(
        self, model: nn.Module, name: str, codebook: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(float weight / scale, centroids)``, both in int8 units (no gradient to the scale);
        ``codebook``: the tensor's ``self.codebook(name)`` if the caller has it already."""
        levels, scale = codebook if codebook is not None else self.codebook(name)
        weight = self.latent(model, name)
        return weight / channel_view(scale.detach(), weight), levels.float()

    def mracos_weight(self, step: int) -> float:
        """λ at training step ``step``: ramped linearly over ``mracos_ramp_batches``, then held."""
        ramp = self.config.mracos_ramp_batches
        return self.config.mracos_weight * (min(1.0, step / ramp) if ramp > 0 else 1.0)

    def penalty_backward(self, model: nn.Module, step: int) -> Optional[float]:
        """``lambda * mean MRACos`` over every quantized weight (in int8 units), its gradient in
        closed form: autograd through the penalty cost more than half an fp32 training step."""
        weight = self.mracos_weight(step)
        if weight == 0:
            return None
        count = sum(self.sizes.values())
        total = 0.0
        for name in self.bits:
            latent = self.latent(model, name)
            levels, scale = self.codebook(name)
            if levels.numel() < 2:  # a constant tensor (one level): nothing to pull towards or between
                continue
            # mracos_and_grad of latent / scale and its chain rule in one compiled pass. An
            # all-zero channel (the blank's embedding row) has the floor scale: no pull, or its
            # gradient in float units would overflow and the clipped step would zero every other.
            grad, value = _kernels.mracos_pull(
                latent.detach(), scale.detach(), levels.detach().float(), weight / count, torch.finfo(torch.float32).tiny
            )
            total += float(value)
            if latent.grad is None:
                latent.grad = grad
            else:
                latent.grad.add_(grad)
        return weight * total / count

    def after_step(self, model: nn.Module, step: int) -> None:
        """The hard compressor: every ``compress_every`` steps the float weights are snapped.
        Learned levels are copied into the ``levels__`` buffers."""
        if self.config.learn_levels:
            with torch.no_grad():
                for name in self.bits:
                    getattr(self, f"levels__{_key(name)}").copy_(self._learned_levels(name))
        if self.config.compress_every and step % self.config.compress_every == 0:
            with torch.no_grad():
                for name, q in self.quantized(model).items():
                    self.latent(model, name).copy_(q.dequantize())

    def quantized(self, model: nn.Module) -> Dict[str, QuantizedTensor]:
        out = {}
        for name, b in self.bits.items():
            levels, scale = codebook = self.codebook(name)
            indices = nearest_index(*self.normalized(model, name, codebook))
            out[name] = QuantizedTensor(indices, levels.detach().to(torch.int8), scale.detach().clone(), b)
        return out


class CodebookSnap(nn.Module):
    """Parametrization: each weight replaced by its nearest codebook value in the forward pass,
    straight-through gradient to the float weight; a learned scale gets LSQ's gradient
    ``level - w / scale``, a learned level the gradients of the weights snapped onto it times
    their scale."""

    def __init__(self, codebook: Callable[[], Tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.codebook = codebook  # () -> (levels int8 (L,), scale () or (C,)), read at every call

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        levels, scale = self.codebook()
        if not (scale.requires_grad or levels.requires_grad):  # one compiled pass (nearest levels, scaled)
            return straight_through(_kernels.codebook_snap(weights.detach(), scale, levels.float()), weights)
        s = channel_view(scale, weights)
        level = torch.take(levels.float(), nearest_index(weights / s.detach(), levels.float()))
        return straight_through(level * s.detach(), weights + (level - weights.detach() / s.detach()) * s)


def level_step(bits: int) -> float:
    """One step of the uniform ``bits``-bit grid in int8 units: the unit learned levels are stored in."""
    return INT8_MAX / max_level(bits)


def derive_codebook(weight: torch.Tensor, bits: int, codebook: str = "tensor") -> Tuple[torch.Tensor, torch.Tensor]:
    """Lloyd-Max codebook of one tensor in int8 units: ``(levels int8 (L,), scale)`` with one
    scale (``()``, ``codebook="tensor"``) or one per output channel (``(C,)``, ``"channel"``)."""
    if codebook not in ("tensor", "channel"):
        raise ValueError(f"codebook must be 'tensor' or 'channel', got {codebook!r}")
    scale = int8_scale(weight, dim=0 if codebook == "channel" else None).float()
    normalized = weight.detach() / (scale if codebook == "tensor" else channel_view(scale, weight))
    centroids = lloyd_max(normalized, bits, int8_scale=1.0)
    return int8_levels(centroids, 1.0), scale
