"""Figures as PNG files (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def length_histogram(series: dict[str, np.ndarray], path: Path, clip: int = 1000) -> None:
    """Token-length distributions (the paper's Figure 6), one panel per series."""
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.5))
    for ax, (name, lengths) in zip(np.atleast_1d(axes), series.items()):
        lengths = np.minimum(np.asarray(lengths), clip)
        ax.hist(lengths, bins=min(60, max(10, int(lengths.max()) // 2 or 1)), color="#4477aa")
        ax.set_title(f"{name}\nmean {lengths.mean():.1f}, sd {lengths.std():.1f}")
        ax.set_xlabel("tokens")
        ax.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_curves(run_dir: Path, path: Path) -> None:
    """Validation curves of both stages from a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    ae = [r for r in rows if r.get("stage") == "ae"]
    gan = [r for r in rows if r.get("stage") == "gan"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if ae:
        axes[0].plot([r["epoch"] for r in ae], [r["val_recon_loss"] for r in ae], "o-", label="val recon loss")
        axes[0].plot([r["epoch"] for r in ae], [r["val_token_acc"] for r in ae], "s-", label="val token acc")
        axes[0].set_xlabel("epoch"); axes[0].set_title("stage 1: autoencoder"); axes[0].legend()
    if gan:
        for key in ("critic_acc_real", "critic_acc_fake", "val_wdist"):
            axes[1].plot([r["step"] for r in gan], [r[key] for r in gan], label=key)
        axes[1].set_xlabel("generator step"); axes[1].set_title("stage 2: conditional WGAN"); axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
