"""Does a review say what its code says? The cosine of a generated review's own code (the review read
back) to the code it was decoded from, and what `sample.screen_cos` costs.

    python scripts/code_agreement.py pool [--n 400] [--out mix/]   # unscreened draws: the cosine's spread, a blind mix
    python scripts/code_agreement.py cost [--values 0,0.4,0.45,0.5] [--n 250]

`pool` decodes n codes of the bundled model's generator (half per sentiment, noise at sample.noise_scale,
the model's temperature, no screen; seed 0), prints the cosine's mean, sd and deciles, and writes a
blind mix (scripts/blind_mix.py's format, scored by its `score`): 10 texts per sentiment from the top
and the bottom quarter by cosine (`agree_high`, `agree_low`, drawn at random), 20 real held-out test
chunks and 20 of the bundled model's own reviews (seed 2). `cost` generates n reviews of each
sentiment at each screen_cos (the screen at the model's sample.screen) and prints the seconds and the
decodes per review.
"""

import argparse
import random
import time

import torch
from blind_mix import write_mix  # scripts/blind_mix.py, beside this one

from reviewgan import ReviewGAN
from reviewgan.data import SENTIMENTS
from reviewgan.units import prepare_data


@torch.no_grad()
def pool(model, args):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(args.n) % 2
    z = torch.randn(args.n, model.cfg.gan.noise_dim, generator=g) * model.cfg.sample.noise_scale
    codes = model._codes_of_noise(z, labels)
    texts = model.decode(codes, greedy=False, temperature=model.cfg.sample.temperature, seed=0)
    agree = torch.nn.functional.cosine_similarity(codes.float(), model.autoencoder.encode_texts(texts).float(), dim=-1)
    deciles = [round(float(q), 3) for q in agree.quantile(torch.linspace(0.1, 0.9, 9))]
    print(f"cosine of {args.n} reviews' own codes to their codes: mean {agree.mean():.3f}, sd {agree.std():.3f}, "
          f"deciles {deciles}")
    order = agree.argsort().tolist()
    quarter = args.n // 4
    rng = random.Random(7)
    items = []
    for name, idx in (("agree_low", order[:quarter]), ("agree_high", order[-quarter:])):
        for y in (0, 1):
            items += [(name, SENTIMENTS[y], texts[i]) for i in rng.sample([i for i in idx if labels[i] == y], 10)]
    test = prepare_data(model.cfg, model.tokenizer, log=lambda m: None).units["test"]
    for y in (0, 1):
        idx = [i for i, label in enumerate(test.labels) if label == y]
        items += [("real", SENTIMENTS[y], test.texts[i]) for i in rng.sample(idx, 10)]
    for s in SENTIMENTS:
        items += [("model", s, t) for t in model.generate(s, n=10, seed=2)]
    rng.shuffle(items)
    write_mix(items, args.out)


def cost(model, args):
    decodes = [0]
    model.autoencoder.memory.register_forward_hook(lambda m, a, o: decodes.__setitem__(0, decodes[0] + len(a[0])))
    model.generate("positive", n=4, seed=0)  # warm-up
    for v in (float(x) for x in args.values.split(",")):
        model.cfg.sample.screen_cos, decodes[0] = v, 0
        t = time.perf_counter()
        for s in SENTIMENTS:
            model.generate(s, n=args.n, seed=0)
        print(f"screen_cos {v}: {2 * args.n} reviews in {time.perf_counter() - t:.1f} s, "
              f"{decodes[0] / (2 * args.n):.2f} decodes per review")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["pool", "cost"])
    p.add_argument("--model", help="model directory (default: the bundled model)")
    p.add_argument("--n", type=int, default=0, help="pool: codes (400); cost: reviews per sentiment (250)")
    p.add_argument("--values", default="0,0.4,0.45,0.5", help="cost: screen_cos values")
    p.add_argument("--out", default="agreement_mix", help="pool: the mix's folder")
    args = p.parse_args()
    args.n = args.n or (400 if args.what == "pool" else 250)
    model = ReviewGAN.from_pretrained(args.model)
    (pool if args.what == "pool" else cost)(model, args)


if __name__ == "__main__":
    main()
