"""`python -m reviewgan.demo`: reviews on screen in one command.

Uses the bundled pretrained model when this install has one; otherwise trains the `tiny`
preset on IMDB for a few seconds (a toy: it shows the pipeline, not the quality).
"""

from __future__ import annotations

from pathlib import Path

from .model import ReviewGAN, default_model_dir


def main() -> None:
    path = default_model_dir()
    if path is None:
        from .config import load_preset
        from .train import train
        path = Path("runs/quickstart")
        print(f"no bundled model in this install: training the tiny preset into {path} (a toy, ~1 minute)")
        model = train(load_preset("tiny"), path, force=True, progress=False, log=lambda m: None)
    else:
        model = ReviewGAN.from_pretrained(path)
    print(f"model: {path}\n")
    for k, sentiment in enumerate(("positive", "negative")):  # seeds as `generate --sentiment both --seed 0`
        for text in model.generate(sentiment, n=3, seed=k):
            print(f"[{sentiment}] {text}")
    print(f"\nthe same reviews: reviewgan generate --model {path} --sentiment both -n 3 --seed 0")


if __name__ == "__main__":
    main()
