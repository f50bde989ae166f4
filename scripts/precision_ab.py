"""Side by side in one process: the bundled model's generation and the pretrained decoder's stage-1
training in bf16 and in float32, with each precision's matmul ceiling.

    python scripts/precision_ab.py                                # this CPU as it is
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python scripts/precision_ab.py  # as a CPU without native bf16

Prints one JSON line; `auto` says which precision reviewgan picks here, `ae_speedup_auto` what
`bench` reports as ae_speedup there (the optimised path against the float32 padded baseline).
"""

import json
import time

import torch

from reviewgan.bench import bench_pretrained, matmul_gflops
from reviewgan.config import load_preset
from reviewgan.model import ReviewGAN
from reviewgan.precision import compute_dtype, dtype_name

N, SEEDS = 100, (1, 2)
out = {"auto": dtype_name(compute_dtype("auto")), "threads": torch.get_num_threads()}
cfg = load_preset("pretrained")
for name in ("bf16", "fp32"):
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[name]
    out[f"matmul_gflops_{name}"] = round(matmul_gflops(dtype, 2048, 1.5))
    model = ReviewGAN.from_pretrained("pretrained", dtype=name)
    model.generate("positive", n=4, seed=0)  # warm-up
    t0 = time.perf_counter()
    for s in SEEDS:
        model.generate("positive", n=N, seed=s)
    out[f"gen_{len(SEEDS) * N}_s_{name}"] = round(time.perf_counter() - t0, 1)
    del model
    from reviewgan import precision
    precision.prefer(name)  # bench_pretrained's optimised path runs in the preferred precision
    out[f"ae_tokens_per_s_{name}"] = round(bench_pretrained(cfg, True, 6)["tokens_per_s"], 1)
    precision.prefer("auto")
# bench's ae_speedup at the precision auto picks: the optimised path against the fp32 padded baseline
out["ae_baseline_tokens_per_s"] = round(bench_pretrained(cfg, False, 4)["tokens_per_s"], 1)
out["ae_speedup_auto"] = round(out[f"ae_tokens_per_s_{out['auto']}"] / out["ae_baseline_tokens_per_s"], 2)
print(json.dumps(out))
