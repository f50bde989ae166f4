"""How far the generator's codes are from real ones, against the code noise stage 1 trains with.

    python scripts/code_distance.py [--model DIR] [--n 1000] [--noise-scales 0.5,1.0,1.2] [--code-noise 0.01,0.04,0.08]

For a pooled-code model: the cosine of each code to its nearest training chunk's code, for n held-out
validation chunks (how far a real code the decoder never saw is from the ones it trained on) and for n
generated codes (half per sentiment, seed 0) at each noise scale; then, for each per-dimension code
noise sd, the mean cosine of a noised, renormalised validation code to its clean one (what
`ae.code_noise` shows the decoder while it trains). A decoder trained with a noise whose cosine is
far above the generated codes' nearest-neighbour cosine has never read codes as far from the data as
the ones it is asked to decode.
"""

import argparse

import torch
import torch.nn.functional as F

from reviewgan import ReviewGAN
from reviewgan.units import prepare_data

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--model", help="model folder (default: the bundled model)")
ap.add_argument("--n", type=int, default=1000)
ap.add_argument("--noise-scales", default="0.5,1.0,1.2")
ap.add_argument("--code-noise", default="0.01,0.04,0.08")
args = ap.parse_args()

model = ReviewGAN.from_pretrained(args.model)
data = prepare_data(model.cfg, model.tokenizer, log=lambda m: None)
train = F.normalize(model.autoencoder.codes_of(data.units["train"].texts).float(), dim=-1)
val = F.normalize(model.autoencoder.codes_of(data.units["val"].texts).float(), dim=-1)[:args.n]


def nearest(codes: torch.Tensor) -> torch.Tensor:
    return torch.cat([(c @ train.T).max(1).values for c in codes.split(256)])


print(f"held-out validation codes: nearest training code, mean cosine {nearest(val).mean():.3f}")
g = torch.Generator().manual_seed(0)
labels = torch.arange(args.n) % 2
for scale in (float(s) for s in args.noise_scales.split(",")):
    z = torch.randn(args.n, model.cfg.gan.noise_dim, generator=g) * scale
    with torch.no_grad():
        codes = F.normalize(model._codes_of_noise(z, labels).float(), dim=-1)
    print(f"generated codes, noise scale {scale}: nearest training code, mean cosine {nearest(codes).mean():.3f}")
for sd in (float(s) for s in args.code_noise.split(",")):
    noised = F.normalize(val + sd * torch.randn(val.shape, generator=g), dim=-1)
    print(f"code noise {sd} per dimension: mean cosine to the clean code {(noised * val).sum(1).mean():.3f}")
