"""How well a model reads a source's sentiment (what `rewrite --to flip` uses when none is given):
on held-out validation chunks, and on a few degenerate texts.

    python scripts/reading_check.py [--model DIR] [--n 1000] [--seed 0]

Takes n of the validation split's units at random (the same text units the model was trained on,
unfiltered, as `evaluate --real` sees them) and prints, in Markdown: the reading's accuracy against
the real labels, its calibration, how many it flags as unclear and why, the accuracy on the rest,
and a table of degenerate texts. The last column is a distance check: the share of the real chunks
whose code lies further from the generator's codes (mean cosine to the 10 nearest of 16,384 generated
codes) than the text's does. ~1 min on 2 cores for the bundled model (the data's chunking ~25 s).
"""

import argparse
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from reviewgan import ReviewGAN
from reviewgan.config import apply_overrides
from reviewgan.rewrite import read_sentiment, why_unclear
from reviewgan.units import prepare_data

DEGENERATE = ["great great great great great great", "I loved it. I loved it. I loved it.", "awful awful awful awful",
              "This movie was great. This movie was great. This movie was great.", "great", "Awful.", "10/10",
              "film actor plot scene director", "good bad good bad", "asdf qwerty zxcv",
              "One of the best films of the year: the cast is wonderful.",
              "A dull, overlong mess with a script that makes no sense."]


def near_generated(model: ReviewGAN, codes: torch.Tensor, k: int = 10, draws: int = 8192) -> np.ndarray:
    """Mean cosine of each code (N, C) to its k nearest generated codes, `draws` per sentiment."""
    z = torch.randn(draws, model.generator.noise_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fake = torch.cat([model.generator(z, torch.full((draws,), y)) for y in (0, 1)])
    return (F.normalize(codes, dim=1) @ F.normalize(fake, dim=1).T).topk(k, dim=1).values.mean(1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: the bundled model)")
    ap.add_argument("--n", type=int, default=1000, help="validation chunks to read")
    ap.add_argument("--seed", type=int, default=0, help="which chunks")
    args = ap.parse_args()
    model = ReviewGAN.from_pretrained(args.model)
    val = prepare_data(apply_overrides(model.cfg, ["data.opinion_filter=0"]), model.tokenizer, log=lambda m: None).units["val"]
    pick = np.random.default_rng(args.seed).permutation(len(val))[:args.n]
    texts, labels = [val.texts[i] for i in pick], np.array([val.labels[i] for i in pick])
    codes = model._codes(texts)
    readings = model._read(texts, codes)
    p = np.array([r.p_positive for r in readings], dtype=float)
    right = (p > 0.5) == (labels == 1)
    flagged = np.array([r.unclear is not None for r in readings])
    rc = model.cfg.rewrite
    print(f"{len(texts)} of {len(val)} validation chunks, {labels.mean():.3f} positive\n")
    means = (read_sentiment(codes, model.class_means()).numpy() == labels).mean()
    print(f"- reading right: {right.mean():.3f} (the side of the generator's class means, a model without a reader's "
          f"reading: {means:.3f})")
    print(f"- flagged as unclear: {flagged.sum()} ({flagged.mean():.1%}): "
          + ", ".join(f"{n} {why}" for why, n in Counter(
              "p_positive in the band" if r.unclear.startswith("within") else
              "repeated phrase" if r.unclear.startswith("a repeated") else "too few words"
              for r in readings if r.unclear).most_common()))
    print(f"- reading right on the {(~flagged).sum()} unflagged: {right[~flagged].mean():.3f}")
    print(f"  (band {0.5 - rc.unclear_band:g}-{0.5 + rc.unclear_band:g}, min_words {rc.min_words}, "
          f"min_distinct {rc.min_distinct:g})")
    counted = [why for t in val.texts if (why := why_unclear(t, None, 0.0, rc.min_words, rc.min_distinct))]
    print(f"- flagged by the word counts alone, of all {len(val)} validation chunks: {len(counted)} "
          f"({sum(w.startswith('a repeated') for w in counted)} repeated phrases)")
    print("\n| p_positive | chunks | positive | mean p_positive |\n|---|---|---|---|")
    ece = 0.0
    for lo in np.arange(0, 1, 0.1):
        b = (p >= lo) & (p < lo + 0.1)
        if b.any():
            print(f"| {lo:.1f}-{lo + 0.1:.1f} | {b.sum()} | {labels[b].mean():.2f} | {p[b].mean():.2f} |")
            ece += b.sum() / len(p) * abs(labels[b].mean() - p[b].mean())
    print(f"\nexpected calibration error (10 bins): {ece:.3f}\n")
    real_near = near_generated(model, codes)
    deg = model.read(DEGENERATE)
    deg_near = near_generated(model, model._codes(DEGENERATE))
    print("| text | p_positive | read as | flagged | real chunks further from the generator's codes |")
    print("|---|---|---|---|---|")
    for t, r, s in zip(DEGENERATE, deg, deg_near):
        print(f"| {t} | {r.p_positive:.2f} | {r.sentiment} | {r.unclear or 'no'} | {(real_near < s).mean():.1%} |")


if __name__ == "__main__":
    main()
