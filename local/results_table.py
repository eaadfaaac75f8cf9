#!/usr/bin/env python3
"""Prints a results table (WER per method and test set, weight bits and bytes) for experiment
folders, plots the training/dev loss curve of each into ``{exp}/loss-curve.png`` and, with
``--plot-wer-bytes``, test WER against weight bytes."""

import argparse
import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nnaqat.checkpoint import load_checkpoint  # noqa: E402
from nnaqat.quant import quantizable_parameters  # noqa: E402
from nnaqat.sizes import read_weight_size  # noqa: E402

# Buffers in the state dict that are statistics or codebooks, not trained parameters.
NOT_PARAMETERS = ("encoder.feature_norm.", "encoder.cmn.", "quantizer.")
SIZE_SUMMARIES = ("model.size.json", "model.nna.size.json")  # local/export_packed.py, local/export_nna.py
SUMMARY = re.compile(r"wer-summary-(?P<set>[^-]+)-(?P<suffix>.+)\.txt$")


def weight_size(exp_dir: Path, checkpoint: Path | None) -> tuple[str, int | None]:
    """``(bits per weight, bytes)`` of the quantizable weights: from the packed model's or the NNA
    side-car's size report when there is one, else fp32."""
    for report in SIZE_SUMMARIES:
        if (exp_dir / report).is_file():
            try:
                size = read_weight_size(exp_dir / report)
            except ValueError as error:  # the table goes on without the sizes it cannot read
                print(f"warning: {error}", file=sys.stderr)
                return "?", None
            return f"{size.index_bits:.2f}", size.stored_bytes
    if checkpoint is None:
        return "?", None
    state = load_checkpoint(checkpoint)["model"]
    return "32", 4 * sum(state[n].numel() for n in quantizable_parameters(state.items()))


def plot_wer_bytes(points: list, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, size, wer in points:
        ax.scatter(size / 1024, wer)
        ax.annotate(name, (size / 1024, wer), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("weight bytes (KiB, log scale)")
    ax.set_ylabel("test WER % (greedy)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def last_epoch_checkpoint(exp_dir: Path) -> Path | None:
    epochs = sorted(exp_dir.glob("epoch-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    return epochs[-1] if epochs else None


def plot_history(history: list, path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(epochs, [h["train_loss_per_frame"] for h in history], marker="o", label="train (pruned, per frame)")
    ax.plot(epochs, [h["dev_pruned_loss"] for h in history], marker="s", label="dev (pruned, per utterance)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (nats)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    if all("dev_greedy_wer" in h for h in history):
        wer_ax = ax.twinx()
        wer_ax.plot(epochs, [h["dev_greedy_wer"] for h in history], color="tab:red", marker="^", label="dev WER %")
        wer_ax.set_ylabel("dev greedy WER (%)")
        wer_ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exp-dir", type=Path, nargs="+", required=True)
    parser.add_argument("--mean", action="store_true", help="also print the mean WER over the experiments")
    parser.add_argument("--plot-wer-bytes", type=Path, help="PNG of test greedy WER against weight bytes")
    args = parser.parse_args()
    wers: dict = {}
    points = []
    print("| experiment | params | s/epoch | weight bits | weight bytes | method | set | WER % |")
    print("|---|---|---|---|---|---|---|---|")
    for exp_dir in args.exp_dir:
        checkpoint = last_epoch_checkpoint(exp_dir)
        bits, size = weight_size(exp_dir, checkpoint or (exp_dir / "pretrained.pt" if (exp_dir / "pretrained.pt").is_file() else None))
        params, seconds = "?", "?"
        if checkpoint is not None:
            state = load_checkpoint(checkpoint)
            params = f"{sum(v.numel() for k, v in state['model'].items() if not k.startswith(NOT_PARAMETERS)):,}"
            times = [h["seconds"] for h in state["history"] if "seconds" in h]
            seconds = f"{sum(times) / len(times):.0f}" if times else "?"
            if state["history"]:
                plot_history(state["history"], exp_dir / "loss-curve.png")
        for summary in sorted(exp_dir.glob("*/wer-summary-*.txt")) + sorted(exp_dir.glob("*/*/wer-summary-*.txt")):
            match = SUMMARY.match(summary.name)
            if not match:
                continue
            method, wer = summary.read_text().splitlines()[1].split("\t")
            runtime = summary.parent.parent.relative_to(exp_dir)  # e.g. sherpa-onnx/ for exp/sherpa-onnx/METHOD/
            size_text = f"{size:,}" if size is not None else "?"
            if runtime.parts:
                method = f"{runtime} {method}"
                stats = summary.with_name(summary.name.replace("wer-summary-", "stats-")).with_suffix(".json")
                model_bytes = json.loads(stats.read_text()).get("model_bytes") if stats.is_file() else None
                if model_bytes is not None:  # a runtime's own model files (e.g. ONNX): their size on disk
                    size_text = f"{model_bytes:,} (model files)"
            print(f"| {exp_dir.name} | {params} | {seconds} | {bits} | {size_text} | {method} ({match['suffix']}) "
                  f"| {match['set']} | {wer} |")
            wers.setdefault((method, match["suffix"], match["set"]), []).append(float(wer))
            emulated_or_torch = "-integer" not in match["suffix"]  # the integer engine repeats the emulation
            if method == "greedy_search" and match["set"] == "test" and size is not None and emulated_or_torch:
                points.append((exp_dir.name, size, float(wer)))
    if args.mean:
        for (method, suffix, test_set), values in sorted(wers.items()):
            mean = sum(values) / len(values)
            print(f"| mean of {len(values)} | | | | | {method} ({suffix}) | {test_set} | {mean:.2f} |")
    if args.plot_wer_bytes and points:
        plot_wer_bytes(points, args.plot_wer_bytes)


if __name__ == "__main__":
    main()
