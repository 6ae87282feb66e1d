"""The loss curve of a training run as a PNG (DVC shows it next to the CSV plot)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path


def write_loss_png(rows: Sequence[dict[str, float]], path: str | Path, title: str) -> None:
    """Plot loss per step (and its moving average over ~1/20 of the run) to `path`, atomically.

    matplotlib runs headless (Agg) and is imported here only: the trainer must not pay for
    it at import time.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    window = max(1, len(loss) // 20)
    cumsum = list(itertools.accumulate(loss, initial=0.0))
    smooth = [
        (cumsum[i + 1] - cumsum[max(0, i + 1 - window)]) / (i + 1 - max(0, i + 1 - window))
        for i in range(len(loss))
    ]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, loss, color="tab:blue", alpha=0.35, linewidth=1, label="loss")
    if window > 1:
        ax.plot(steps, smooth, color="tab:blue", linewidth=2, label=f"mean of {window} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    os.replace(tmp, path)
