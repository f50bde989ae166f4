"""Continuous batching against the batch-by-batch reference, in one process, alternating.

    python scripts/batching_ab.py [N] [ROUNDS] [MODEL_DIR]

Generates N positive reviews (default 1,000; seed = the round) by continuous batching
(stream.py: finished reviews' slots refilled at the next step, the screen's next
draws joining as slots free) and by the reference (ReviewGAN._decode_noise and _screen: chunks of
DECODE_ROWS, then the screen's redraws round by round), ROUNDS times each (default 2), and prints the
seconds of each and how many of the first round's reviews are the same. They use the same random
numbers; in bf16 a batch of other rows can round a token otherwise (float32: the same reviews, tested).
"""

import sys
import time

from reviewgan import ReviewGAN

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
model = ReviewGAN.from_pretrained(sys.argv[3] if len(sys.argv) > 3 else None)
model.generate("positive", n=4, seed=0)  # warm-up
seconds, first = {"continuous": [], "reference": []}, {}
for r in range(rounds):
    for way in seconds:
        model.continuous_batching = way == "continuous"
        t = time.perf_counter()
        reviews = model.generate("positive", n=n, seed=r)
        seconds[way].append(time.perf_counter() - t)
        first.setdefault(way, reviews)
for way, s in seconds.items():
    print(f"{way:10s} {n} reviews: " + ", ".join(f"{x:.1f}" for x in s) + " s")
same = sum(a == b for a, b in zip(first["continuous"], first["reference"]))
print(f"the same review in both: {same} of {n}")
