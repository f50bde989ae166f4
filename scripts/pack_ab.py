"""Pre-packed decoder weights (llama.Linear.pack) against F.linear, in one process, alternating.

    python scripts/pack_ab.py [N] [ROUNDS] [MODEL_DIR]

Loads the model twice (packed, as from_pretrained loads it where it can, and pack=False), then per
round: one decoding step (the decoder's hidden states, the output layer and the sampling of
stream.stream) at 16, 80 and 256 rows, 20 times each, and N reviews of each sentiment (default 500;
seed 0), each model in turn. Prints the milliseconds per step, the seconds per call and how many of the
reviews are the same (packing changes the layout, not the arithmetic: on the AMD EPYC the products
agree bit for bit).
"""

import sys
import time

import torch

from reviewgan import ReviewGAN
from reviewgan.pretrained import next_tokens
from reviewgan.stream import SAMPLE_ROWS

n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
path = sys.argv[3] if len(sys.argv) > 3 else None
models = {"packed": ReviewGAN.from_pretrained(path), "F.linear": ReviewGAN.from_pretrained(path, pack=False)}
assert models["packed"].autoencoder.lm.packed, "this PyTorch cannot pack the weights here"


@torch.no_grad()
def step_ms(model, rows: int, repeat: int = 20) -> float:
    """Milliseconds of one decoding step of `rows` reviews, 12 tokens in, as stream.stream runs it."""
    ae, lm = model.autoencoder, model.autoencoder.lm
    g = torch.Generator().manual_seed(0)
    codes = model._codes_of_noise(torch.randn(rows, model.cfg.gan.noise_dim, generator=g),
                                  torch.zeros(rows, dtype=torch.long))
    memory, offset = ae.memory(codes)
    cache = lm.new_slot_cache(rows, ae.memory_slots + 40)
    cache.start(torch.arange(rows), memory)
    cache.used = rows
    cache.lengths[:rows] += 12
    tokens, at = torch.full((rows,), ae.tokenizer.start_id), torch.full((rows,), 12)
    low = torch.empty(rows, lm.shape.vocab_size, dtype=lm.dtype)
    full = torch.empty(SAMPLE_ROWS, lm.shape.vocab_size)
    greedy, temp, top_p = torch.zeros(rows, dtype=torch.bool), torch.full((rows, 1), 0.7), torch.ones(rows, 1)
    u = torch.rand(rows, 1, generator=g)

    def step():
        cache.prepare()
        h = lm.hidden(lm.embed(tokens[:, None]) + offset, start=at, cache=cache)
        lm.logits(h[:, 0], out=low)
        for a in range(0, rows, SAMPLE_ROWS):
            r = slice(a, min(rows, a + SAMPLE_ROWS))
            next_tokens(full[:r.stop - a].copy_(low[r]), greedy[r], temp[r], top_p[r], u[r])

    step()
    t = time.perf_counter()
    for _ in range(repeat):
        step()
    return (time.perf_counter() - t) / repeat * 1000


for model in models.values():
    model.generate("positive", n=4, seed=0)  # warm-up
steps = {name: {r: [] for r in (16, 80, 256)} for name in models}
calls, first = {name: [] for name in models}, {}
for _ in range(rounds):
    for name, model in models.items():
        for r in steps[name]:
            steps[name][r].append(step_ms(model, r))
        t = time.perf_counter()
        reviews = model.generate("positive", n=n, seed=0) + model.generate("negative", n=n, seed=0)
        calls[name].append(time.perf_counter() - t)
        first.setdefault(name, reviews)
for name in models:
    per_step = ", ".join(f"{r} rows {' / '.join(f'{x:.1f}' for x in ms)} ms" for r, ms in steps[name].items())
    print(f"{name:9s} step: {per_step}; {2 * n} reviews: {' / '.join(f'{s:.1f}' for s in calls[name])} s")
same = sum(a == b for a, b in zip(first["packed"], first["F.linear"]))
print(f"the same reviews: {same} of {2 * n}")
