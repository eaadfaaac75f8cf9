#!/usr/bin/env python3
"""Histogram of one weight tensor with its S8BQAT codebook, before (the fp32 model) and after
quantization-aware training (the last checkpoint's float weights, before the final snap):

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True, help="a checkpoint of an s8bqat run")
    parser.add_argument("--layer", default="encoder.layers.0.weight_ih_l0")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    before = load_checkpoint(args.before)["model"][args.layer].flatten()
    after_state = load_checkpoint(args.after)["model"]
    after = after_state[args.layer].flatten()
    key = args.layer.replace(".", "__")
    levels, scale = after_state[f"quantizer.levels__{key}"], after_state[f"quantizer.scale__{key}"]
    centroids = levels.float() * scale
    fig, axes = plt.subplots(2, 1, figsize=(6, 4.2), sharex=True)
    edges = torch.linspace(float(torch.minimum(before.min(), after.min())), float(torch.maximum(before.max(), after.max())), 301)
    for ax, weights, title in ((axes[0], before, "fp32 baseline"), (axes[1], after, "after S8BQAT (float weights)")):
        counts = torch.histogram(weights.float(), bins=edges).hist
        ax.stairs(counts.numpy(), edges.numpy(), fill=True, color="tab:blue", alpha=0.8)
        for c in centroids.tolist():
            ax.axvline(c, color="tab:red", linewidth=0.8, linestyle="--")
        mean_r = float(mracos(weights, centroids).mean())
        ax.set_title(f"{args.layer}: {title}; mean MRACos {mean_r:.3f}", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.8)
        ax.set_ylabel("count")
    axes[1].set_xlabel(f"weight (red: the {levels.numel()} int8-grid centroids, levels {levels.tolist()})"
                       if levels.numel() <= 8 else "weight (red: centroids)", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
