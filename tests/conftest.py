"""Shared fixtures: a small synthetic review corpus (made here, no download) and one tiny trained model."""

from __future__ import annotations

import csv
import random

import pytest

from reviewgan.config import apply_overrides, load_preset

POS = ["great", "wonderful", "brilliant", "moving", "superb", "delightful"]
NEG = ["awful", "boring", "terrible", "dull", "horrible", "painful"]
NOUNS = ["movie", "film", "story", "cast", "ending", "script"]


def synthetic_reviews(n: int = 400, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = POS if label else NEG
        sents = [f"the {rng.choice(NOUNS)} was {rng.choice(words)}.",
                 f"i found the {rng.choice(NOUNS)} {rng.choice(words)} and {rng.choice(words)}!",
                 f"review number {i} says it was {rng.choice(words)}."]
        rng.shuffle(sents)
        rows.append((" ".join(sents[: rng.randint(1, 3)]) + f" <br /><br />({i})", label))
    return rows


def write_csv(path, rows, header=("text", "label")) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture(scope="session")
def corpus_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    write_csv(path, synthetic_reviews())
    return path


def tiny_config(corpus, *overrides):
    return apply_overrides(load_preset("tiny"), [f"data.dataset={corpus}", *overrides])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, corpus_csv):
    """A model trained once for the whole session (both stages, seconds)."""
    from reviewgan.train import train
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(corpus_csv), out, progress=False, log=lambda m: None)
    return out
