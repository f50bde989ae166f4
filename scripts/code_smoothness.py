"""Do nearby codes decode alike? Greedy reconstructions of held-out chunks from their codes with
Gaussian noise added, and from the midpoint of two chunks' codes, scored against the sources.

    python scripts/code_smoothness.py --model DIR [--n 64] [--noise 0,0.1,0.2,0.4,0.8]

A generator's codes are never exactly real ones: a code space in which a little noise changes the
text a little is one a GAN can learn. Noise is per dimension, relative to the code's own per-dimension
spread (the pooled code's dimensions have sd ~0.05, a token slot's ~1), so the rows compare across
code designs. For a token-slot code, first the slots a real and a generated code fill, and the share
with a hole (an absent slot before a present one). Then one line per noise level: BLEU-4 to the source, and the share of decodings that
still end by themselves; then 3 examples at each level, and 4 midpoints with both sources.
"""

import argparse

import numpy as np
import torch

from reviewgan import ReviewGAN
from reviewgan import metrics as M
from reviewgan.units import prepare_data

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--model")
ap.add_argument("--n", type=int, default=64)
ap.add_argument("--noise", default="0,0.1,0.2,0.4,0.8")
args = ap.parse_args()
model = ReviewGAN.from_pretrained(args.model)
data = prepare_data(model.cfg, model.tokenizer, log=lambda m: None)
test = data.units["test"]
idx = list(range(0, len(test), len(test) // args.n))[:args.n]
texts = [test.texts[i] for i in idx]
codes = model.encode(texts)
present = codes != 0  # a token-slot code's empty slots stay empty: noise goes where the text is
spread = float(codes[present].std())
print(f"{len(texts)} held-out chunks; code sd per dimension {spread:.3f}")
if model.autoencoder.code_kind.startswith("slots"):  # how many slots a code fills, and whether it has a hole
    def occupancy(c):
        on = c.view(len(c), model.cfg.ae.code_slots, -1).pow(2).mean(-1).sqrt() > 0.5
        run = (~on).float().argmax(1).float()  # slots before the first absent one
        return float(on.sum(1).float().mean()), float((on.sum(1) > run).float().mean())
    with torch.no_grad():
        fake = model.generator(torch.randn(400, model.cfg.gan.noise_dim, generator=torch.Generator().manual_seed(0)),
                               torch.arange(400) % 2)
    print("slots present, codes with a hole: real %.1f, %.2f; generated (400) %.1f, %.2f"
          % (*occupancy(codes), *occupancy(fake)))
g = torch.Generator().manual_seed(0)
for level in [float(x) for x in args.noise.split(",")]:
    noisy = codes + level * spread * torch.randn(codes.shape, generator=g) * present
    if model.autoencoder.code_kind == "l2":
        noisy = torch.nn.functional.normalize(noisy, dim=-1)
    rows, ended = model.autoencoder.generate(noisy, model.cfg.data.max_len, greedy=True)
    out = [model.tokenizer.decode(r) for r in rows]
    bleu = float(np.mean([M.bleu([h], [r], 4) for h, r in zip(out, texts)]))
    print(f"noise {level:.2f} x sd: BLEU-4 {bleu:.3f}, ends {np.mean(ended):.2f}")
    for src, rec in list(zip(texts, out))[:3]:
        print(f"    {src}\n -> {rec}")
mid = (codes[:8:2] + codes[1:8:2]) / 2
if model.autoencoder.code_kind == "l2":
    mid = torch.nn.functional.normalize(mid, dim=-1)
rows, _ = model.autoencoder.generate(mid, model.cfg.data.max_len, greedy=True)
print("midpoints:")
for a, b, r in zip(texts[:8:2], texts[1:8:2], rows):
    print(f"    {a}\n    {b}\n -> {model.tokenizer.decode(r)}")
