#!/usr/bin/env python3
"""Prints a results table (WER per method and test set) for experiment folders, and plots the
training/dev loss curve of each into ``{exp}/loss-curve.png``."""

import argparse
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nnaqat.checkpoint import load_checkpoint  # noqa: E402

SUMMARY = re.compile(r"wer-summary-(?P<set>.+?)-(?P<suffix>(epoch|checkpoint).*)\.txt$")


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
    args = parser.parse_args()
    wers: dict = {}
    print("| experiment | params | s/epoch | method | set | WER % |")
    print("|---|---|---|---|---|---|")
    for exp_dir in args.exp_dir:
        checkpoint = last_epoch_checkpoint(exp_dir)
        params, seconds = "?", "?"
        if checkpoint is not None:
            state = load_checkpoint(checkpoint)
            params = f"{sum(v.numel() for k, v in state['model'].items() if not k.startswith('encoder.feature_norm')):,}"
            times = [h["seconds"] for h in state["history"] if "seconds" in h]
            seconds = f"{sum(times) / len(times):.0f}" if times else "?"
            if state["history"]:
                plot_history(state["history"], exp_dir / "loss-curve.png")
        for summary in sorted(exp_dir.glob("*/wer-summary-*.txt")):
            match = SUMMARY.match(summary.name)
            if not match:
                continue
            method, wer = summary.read_text().splitlines()[1].split("\t")
            print(f"| {exp_dir.name} | {params} | {seconds} | {method} ({match['suffix']}) | {match['set']} | {wer} |")
            wers.setdefault((method, match["set"]), []).append(float(wer))
    if args.mean:
        for (method, test_set), values in sorted(wers.items()):
            mean = sum(values) / len(values)
            print(f"| mean of {len(values)} | | | {method} | {test_set} | {mean:.2f} |")


if __name__ == "__main__":
    main()
