"""Where a decoding step's time goes: torch.profiler over 256 reviews of the bundled model (or MODEL_DIR).

    python scripts/profile_decoding.py [MODEL_DIR]

Prints the time of 256 reviews unprofiled and profiled, then the operators by their own CPU time.
"""

import sys
import time

from torch.profiler import ProfilerActivity, profile

from reviewgan import ReviewGAN

model = ReviewGAN.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else None)
model.generate("positive", n=4, seed=0)  # warm-up
t = time.perf_counter()
model.generate("positive", n=256, seed=0)
print(f"256 reviews: {time.perf_counter() - t:.2f} s")
with profile(activities=[ProfilerActivity.CPU]) as prof:
    t = time.perf_counter()
    model.generate("positive", n=256, seed=0)
    print(f"256 reviews, profiled: {time.perf_counter() - t:.2f} s")
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
