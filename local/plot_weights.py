#!/usr/bin/env python3
"""Histogram of one weight tensor with its S8BQAT codebook, before (the fp32 model) and after
quantization-aware training (the last checkpoint's float weights, before the final snap), in
int8 units (each weight over its codebook scale); stage 7 writes one per s8bqat run:

  local/plot_weights.py --before exp/fp32/pretrained.pt --after exp/fp32-s8bqat-2bit/epoch-2.pt \\
      --layer encoder.layers.0.weight_ih_l0 --out exp/fp32-s8bqat-2bit/weights.png
"""

import argparse
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nnaqat.checkpoint import load_checkpoint  # noqa: E402
from nnaqat.quant import mracos  # noqa: E402
from nnaqat.quant.fake_quant import channel_view  # noqa: E402


def weight(state: dict, name: str, path: Path) -> torch.Tensor:
    """The float weight ``name`` of a state dict, behind a snapped-forward parametrization or not."""
    module, _, attr = name.rpartition(".")
    for key in (name, f"{module}.parametrizations.{attr}.original"):
        if key in state:
            return state[key]
    raise SystemExit(f"{path}: no weight {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True, help="a checkpoint of an s8bqat run")
    parser.add_argument("--layer", default="encoder.layers.0.weight_ih_l0")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    after_state = load_checkpoint(args.after)["model"]
    key = args.layer.replace(".", "__")
    if f"quantizer.levels__{key}" not in after_state:
        raise SystemExit(f"{args.after}: no S8BQAT codebook for {args.layer} (an s8bqat run's checkpoint?)")
    levels, scale = after_state[f"quantizer.levels__{key}"].float(), after_state[f"quantizer.scale__{key}"].float()
    # In int8 units (each weight over its channel's scale, or the tensor's), where the codebook is
    # one set of levels for the whole tensor and MRACos is measured.
    tensors = {
        "fp32 baseline": weight(load_checkpoint(args.before)["model"], args.layer, args.before),
        "after S8BQAT (float weights)": weight(after_state, args.layer, args.after),
    }
    normalized = {title: (w.float() / channel_view(scale, w)).flatten() for title, w in tensors.items()}
    low = min(float(v.min()) for v in normalized.values())
    high = max(float(v.max()) for v in normalized.values())
    edges = torch.linspace(low, high, 301)
    fig, axes = plt.subplots(2, 1, figsize=(6, 4.2), sharex=True)
    for ax, (title, values) in zip(axes, normalized.items()):
        counts = torch.histogram(values, bins=edges).hist
        ax.stairs(counts.numpy(), edges.numpy(), fill=True, color="tab:blue", alpha=0.8)
        for level in levels.tolist():
            ax.axvline(level, color="tab:red", linewidth=0.8, linestyle="--")
        ax.set_title(f"{args.layer}: {title}; mean MRACos {float(mracos(values, levels).mean()):.3f}", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.8)
        ax.set_ylabel("count")
    levels_text = f"the {levels.numel()} int8 levels {levels.int().tolist()}" if levels.numel() <= 8 else "int8 levels"
    axes[1].set_xlabel(f"weight / scale, int8 units (red: {levels_text})", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
