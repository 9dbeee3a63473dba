"""`plot_evaluation`: PNG plots of `evaluate_pairs` results, one model or several side by side."""

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

PANEL_SIZE = (6.0, 4.5)
"""Inches of one model's panel; at `DPI` a panel is 600 x 450 pixels."""
DPI = 100
BINS = 30


def _title(name: str, result: dict) -> str:
    low, high = result["accuracy_ci"]
    accuracy = f"accuracy {result['accuracy']:.3f} [{low:.3f}, {high:.3f}] ({result['confidence']:.0%} CI), n={result['n_pairs']}"
    return f"{name}\n{accuracy}" if name else accuracy


def _figure(n_panels: int) -> tuple[Figure, list]:
    figure = Figure(figsize=(PANEL_SIZE[0] * n_panels, PANEL_SIZE[1]), dpi=DPI, layout="constrained")
    return figure, list(figure.subplots(1, n_panels, squeeze=False)[0])


def _bins(values: list[np.ndarray]) -> np.ndarray:
    """Common histogram bins over every panel, so the panels compare."""
    every = np.concatenate(values)
    return np.histogram_bin_edges(every, bins=BINS)


def plot_rewards(named: Mapping[str, dict], path: Path) -> Path:
    """Overlaid histograms of chosen and rejected rewards, one panel per model."""
    figure, axes = _figure(len(named))
    bins = _bins([np.array(r["pairs"][side]) for r in named.values() for side in ("chosen_rewards", "rejected_rewards")])
    for ax, (name, result) in zip(axes, named.items()):
        ax.hist(result["pairs"]["chosen_rewards"], bins=bins, alpha=0.6, color="tab:green", label="chosen")
        ax.hist(result["pairs"]["rejected_rewards"], bins=bins, alpha=0.6, color="tab:red", label="rejected")
        ax.set(title=_title(name, result), xlabel="reward", ylabel="pairs")
        ax.legend()
    figure.savefig(path)
    return path


def plot_margins(named: Mapping[str, dict], path: Path) -> Path:
    """Histogram of margins (chosen - rejected reward), one panel per model; right of 0 is correct."""
    figure, axes = _figure(len(named))
    margins = {name: np.subtract(r["pairs"]["chosen_rewards"], r["pairs"]["rejected_rewards"]) for name, r in named.items()}
    bins = _bins(list(margins.values()))
    for ax, (name, result) in zip(axes, named.items()):
        ax.hist(margins[name], bins=bins, color="tab:blue", alpha=0.8, label="pairs")
        ax.axvline(0, color="black", linewidth=1, label="0 (tie)")
        ax.axvline(result["margin_mean"], color="tab:orange", linestyle="--", label=f"mean {result['margin_mean']:.2f}")
        ax.axvline(result["margin_median"], color="tab:purple", linestyle=":", label=f"median {result['margin_median']:.2f}")
        ax.set(title=_title(name, result), xlabel="margin: chosen - rejected reward", ylabel="pairs")
        ax.legend()
    figure.savefig(path)
    return path


def plot_accuracy_by_length(named: Mapping[str, dict], path: Path) -> Path:
    """Accuracy per pair-length bucket (bars; pair counts under them), overall accuracy and chance as lines, one panel per
    model."""
    figure, axes = _figure(len(named))
    for ax, (name, result) in zip(axes, named.items()):
        buckets = result["length_buckets"]
        positions = np.arange(len(buckets))
        bars = ax.bar(positions, [b["accuracy"] or 0.0 for b in buckets], color="tab:blue", label="bucket accuracy")
        ax.bar_label(bars, labels=[f"{b['accuracy']:.2f}" if b["count"] else "" for b in buckets], label_type="center", color="white")
        overall = f"overall {result['accuracy']:.3f}"
        ax.axhline(result["accuracy"], color="tab:orange", linestyle="--", zorder=0, label=overall)  # behind the bars
        ax.axhline(0.5, color="grey", linewidth=1, zorder=0, label="chance")
        ax.set_xticks(positions, [f"{b['label']}\n(n={b['count']})" for b in buckets])
        ax.set(title=_title(name, result), xlabel="pair length (tokens, longer side)", ylabel="accuracy", ylim=(0, 1.25))
        ax.legend(loc="upper center", ncols=3)
    figure.savefig(path)
    return path


PLOTS = {"rewards.png": plot_rewards, "margins.png": plot_margins, "accuracy_by_length.png": plot_accuracy_by_length}


def plot_evaluation(results: dict | Mapping[str, dict], output_dir: str | os.PathLike) -> list[Path]:
    """Write the evaluation plots as PNGs (matplotlib's Agg renderer, no display needed).

    Args:
        results: one `evaluate_pairs` / `pair_metrics` result, or a mapping of names to results (e.g.
            `{"before": r0, "after": r1}`), drawn side by side in that order with shared bins.
        output_dir (`str`): created if missing.

    Returns:
        `list[Path]`: `rewards.png` (chosen vs rejected reward histograms), `margins.png` (margin histogram with
        0, mean and median) and `accuracy_by_length.png` (accuracy per length bucket); each panel is titled with
        its accuracy and confidence interval; a panel is 600 x 450 pixels.
    """
    named = {"": results} if "pairs" in results else dict(results)
    if not named or not all(isinstance(r, dict) and "pairs" in r for r in named.values()):
        raise ValueError("plot_evaluation expects an evaluate_pairs result or a mapping of names to such results")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return [plot(named, output_dir / filename) for filename, plot in PLOTS.items()]
