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


def codes_scatter(real: np.ndarray, real_y: np.ndarray, fake: np.ndarray, fake_y: np.ndarray, path: Path) -> None:
    """2-D PCA (fit on real codes) of real and generated codes, coloured by sentiment."""
    mean = real.mean(0)
    _, _, vt = np.linalg.svd(real - mean, full_matrices=False)
    proj = lambda x: (x - mean) @ vt[:2].T  # noqa: E731
    fig, ax = plt.subplots(figsize=(6, 5))
    for data, ys, marker, kind in ((real, real_y, "o", "real"), (fake, fake_y, "x", "generated")):
        p = proj(data)
        for y, color, name in ((0, "#cc3311", "negative"), (1, "#0077bb", "positive")):
            m = ys == y
            ax.scatter(p[m, 0], p[m, 1], s=10, marker=marker, c=color, alpha=0.5, label=f"{kind} {name}")
    ax.set_xlabel("PC 1"); ax.set_ylabel("PC 2"); ax.legend(fontsize=8)
    ax.set_title("autoencoder codes: real vs generated")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def quality_diversity(curves: dict[str, list[dict]], path: Path, quality: str = "forward_ppl") -> None:
    """Quality (lower is better) against Self-BLEU-4 (lower is more diverse), one curve per model,
    one point per sampling temperature (Caccia et al.: compare curves, not single points)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, points in curves.items():
        pts = [p for p in points if p.get(quality) is not None]
        ax.plot([p["self_bleu4"] for p in pts], [p[quality] for p in pts], "o-", label=name)
        for p in pts:
            ax.annotate(p["label"], (p["self_bleu4"], p[quality]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("Self-BLEU-4 (lower = more diverse)")
    ax.set_ylabel(f"{quality} (lower = better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def copy_label(row: dict) -> str:
    """How a rewrite row was decoded: with the source-copy bonus or without."""
    return f"copy {row['copy']:g}" if row.get("copy") else "no copy"


def rewrite_trade(result: dict, path: Path) -> None:
    """Transfer accuracy against content kept (BLEU-4 and MiniLM cosine to the source), one curve per
    rewrite method and source-copy setting, one point per strength, with the copy and fresh-review
    baselines; dashed: the targets (transfer 0.80, BLEU-4 0.20)."""
    keys = [("source_bleu4", "BLEU-4 to the source"), ("source_cosine", "MiniLM cosine to the source")]
    keys = [(k, label) for k, label in keys if all(r.get(k) is not None for r in result["rows"])]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys):
        for curve in dict.fromkeys(f"{r['method']}, {copy_label(r)}" for r in result["rows"]):
            pts = sorted((r for r in result["rows"] if f"{r['method']}, {copy_label(r)}" == curve),
                         key=lambda r: r["strength"])
            ax.plot([r[key] for r in pts], [r["transfer_acc"] for r in pts], "o-", label=curve)
            for r in pts:
                ax.annotate(f"{r['strength']:g}" + ("*" if r["default"] else ""), (r[key], r["transfer_acc"]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
        for (name, b), marker in zip(result["baselines"].items(), ("s", "^")):
            if b.get(key) is not None:
                ax.plot([b[key]], [b["transfer_acc"]], marker, color="gray", label=name)
        ax.axhline(0.8, color="gray", lw=0.8, ls="--")  # the transfer target
        if key == "source_bleu4":
            ax.axvline(0.2, color="gray", lw=0.8, ls="--")  # the content target: targets met up and right
        ax.set_xlabel(f"{label} (content kept)")
        ax.set_ylabel("transfer accuracy (judge reads the target)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("rewriting held-out reviews into the other sentiment (* = default strength)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
