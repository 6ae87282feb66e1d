"""DVC plot data (CSV) and figures (PNG) of the evaluate stage.

CSV files are what `dvc plots show/diff` renders across experiments; the PNGs are for people
reading a run on its own (and for the Prefect artifacts).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

# Agg: stages run headless (DVC, Prefect workers, CI); no display is ever needed.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(path)
    return path


def write_recall_csv(
    path: Path, metrics: Mapping[str, Mapping[str, float]], ks: Sequence[int]
) -> Path:
    """Rows (model, direction, k, recall): one line per model, direction and k."""
    rows = []
    for model, values in metrics.items():
        for direction, prefix in (("text_to_image", "image"), ("image_to_text", "text")):
            for k in ks:
                key = f"{prefix}_retrieval_recall@{k}"
                if key in values:
                    rows.append((model, direction, k, round(float(values[key]), 6)))
    return _write_csv(path, ("model", "direction", "k", "recall"), rows)


def write_per_class_csv(
    path: Path, per_class: Mapping[str, tuple[Sequence[str], Sequence[float]]]
) -> Path:
    """Rows (model, task, class, recall) from {"model:task": (classnames, recalls)}."""
    rows = []
    for key, (classnames, recalls) in per_class.items():
        model, task = key.split(":", 1)
        for name, recall in zip(classnames, recalls, strict=True):
            rows.append((model, task, name, "" if np.isnan(recall) else round(float(recall), 6)))
    return _write_csv(path, ("model", "task", "class", "recall"), rows)


def plot_summary(
    path: Path, metrics: Mapping[str, Mapping[str, float]], keys: Sequence[str]
) -> Path:
    """Grouped bar chart: one group per metric key, one bar per model."""
    models = list(metrics)
    shown = [k for k in keys if any(k in metrics[m] for m in models)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(shown) + 2), 4.0))
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(shown))
    for i, model in enumerate(models):
        values = [metrics[model].get(k, np.nan) for k in shown]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=model)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, [k.replace("_retrieval_recall", " R") for k in shown], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title("zero-shot accuracy and retrieval recall per model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(
    path: Path, confusion: np.ndarray, classnames: Sequence[str], title: str
) -> Path:
    """Heatmap of a confusion matrix, rows normalised to recall (true class -> predicted)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    support = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, support, out=np.zeros_like(confusion), where=support > 0)
    size = 1.0 + 0.55 * len(classnames)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(len(classnames))
    ax.set_xticks(ticks, classnames, rotation=45, ha="right")
    ax.set_yticks(ticks, classnames)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for t in ticks:
        for p in ticks:
            count = int(confusion[t, p])
            if count:
                colour = "white" if normalised[t, p] > 0.5 else "black"
                ax.text(p, t, count, ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, label="share of true class")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
