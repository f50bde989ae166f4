"""`reviewgan bench`: speed and memory of the hot paths on this machine, each against the
straightforward implementation, measured in the same run (ratios are what to compare: absolute
timings on shared machines are noisy).

- autoencoder training: real (non-padding) tokens/s; optimised = length-bucketed batches + the
  machine's compute precision (bf16 autocast where bf16 is native, precision.py) + fused Adam +
  `Autoencoder.loss` (encoder runs between distinct lengths instead of
  packing, loss without gathering real positions); baseline = fp32, every batch padded to max_len,
  random batches, plain Adam, the straightforward loss (packed encoder, logits selected by mask)
- GAN training: iterations/s (n_critic critic steps + 1 generator step, gradient penalty, 40 x 100 blocks);
  baseline = the straightforward loop: one module per residual block, a fake batch per critic step,
  a critic pass per kind of input, critic weight gradients computed in the generator step too,
  per-parameter Adam; optimised = train.py's loop: stacked block weights, the n_critic fake batches
  in one generator pass, one critic pass over real, fake and interpolates, no critic weight gradients
  in the generator step, fused Adam over 8 tensors per network, with the hand-derived gradients of
  gan_fast.py; reference = the same loop with gan.py's autograd steps
- generation: 1000 reviews per sentiment, batched vs one at a time
- peak resident memory of a training step and of generation (each in a fresh process)
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import resource
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .autoencoder import Autoencoder, decoder_io
from .config import Config, apply_overrides, load_preset
from .tokenizer import END
from .units import Units, iterate_batches, pad_batch
from .gan import Critic, Generator, ResidualMLP, critic_loss, generator_loss
from .precision import compute_dtype, dtype_name, prefer
from .pretrained import KERNEL_CACHE_VARS, kernel_cache_capped_here

# --------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings measure it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 1.0, device=torch.device("cpu")) -> float:
    """Dense matmul throughput of this machine at this precision: the ceiling for MFU."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10 if device.type == "cuda" else 1):  # GPU: queue several, then wait
            a @ b
            reps += 1
        sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def ae_flops_per_position(cfg: Config, vocab: int) -> float:
    """Forward+backward FLOPs per computed decoder position (x3 of forward: one forward, two backward matmuls).

    Decoder LSTM (4 gates over input+hidden) and the output layer dominate; the encoder reads the same
    positions with a smaller LSTM, once per direction.
    """
    a = cfg.ae
    dec_in = a.emb_dim + (a.code_dim if a.code_to_input else 0)
    fwd = 2 * 4 * a.code_dim * (dec_in + a.code_dim) + 2 * a.code_dim * vocab
    fwd += 2 * 4 * a.enc_hidden * (a.emb_dim + a.enc_hidden) * (2 if a.enc_bidirectional else 1)
    return 3.0 * fwd


def synthetic_units(cfg: Config, n: int, seed: int = 0, mean: float = 29, sd: float = 8, vocab: int | None = None,
                    end: int = END) -> Units:
    """Units with the length distribution of IMDB short reviews (WordPiece chunks: mean ~29, sd ~8, max 40)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.normal(mean, sd, n).round(), 3, cfg.data.max_len).astype(int)
    units = Units()
    for L in lengths:
        units.add(rng.integers(20, vocab or cfg.data.vocab_size, L - 1).tolist() + [end], int(rng.integers(0, 2)), "")
    return units


def real_units(cfg: Config, n: int) -> Units | None:
    try:
        from .units import prepare_data
        cfg = apply_overrides(cfg, [f"data.limit={n}"])
        return prepare_data(cfg, log=lambda m: None).units["train"]
    except Exception:  # no dataset installed: fall back to synthetic units of the same shape
        return None


# --------------------------------------------------------------------------- autoencoder


def straightforward_ae_loss(ae: Autoencoder, ids, lengths, labels):
    """Stage 1's loss written the obvious way, for the baseline: a packed encoder, logits at every (B, T) position then the real ones
    selected, argmax accuracy. -> (cross-entropy, correct tokens, real tokens). Tests check it
    equals `ae.loss`.
    """
    code, _ = ae.encode(ids, lengths, sample=ae.training, pack=True)
    inputs, targets, mask = decoder_io(ids, lengths)
    logits = ae.decoder(inputs, code, labels)  # (B, T, V)
    ce = F.cross_entropy(logits[mask], targets[mask])
    correct = (logits.argmax(-1)[mask] == targets[mask]).sum()
    return ce, correct, mask.sum()


def bench_autoencoder(cfg: Config, units: Units, optimised: bool, steps: int, device=torch.device("cpu")) -> dict:
    torch.manual_seed(0)
    ae = Autoencoder(cfg.data.vocab_size, cfg.ae).to(device).train()
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3, fused=optimised)
    lengths = units.lengths()
    B, T = cfg.ae.batch_size, cfg.data.max_len
    if optimised:
        batches = iterate_batches(lengths, B, np.random.default_rng(0))
    else:
        perm = np.random.default_rng(0).permutation(len(units))
        batches = [perm[i:i + B] for i in range(0, len(perm), B)]
    batches = batches[:steps + 2]  # two warm-up steps, then the timed ones
    if len(batches) < 3:
        raise ValueError(f"{len(units)} units make {len(batches)} batches of {B}: too few to time a step")
    real = computed = 0
    for step, idx in enumerate(batches):
        ids, lens, labels = pad_batch(units, idx, device)
        if not optimised:  # the straightforward way: every batch padded to max_len
            ids = torch.cat([ids, ids.new_zeros(ids.size(0), T - ids.size(1))], dim=1)
        if step == 2:
            sync(device)
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=optimised and compute_dtype("auto", device) == torch.bfloat16):
            if optimised:
                ce, _, _, n = ae.loss(ids, lens, labels)
            else:
                ce, _, n = straightforward_ae_loss(ae, ids, lens, labels)
        opt.zero_grad(set_to_none=True)
        ce.backward()
        opt.step()
        if step >= 2:
            real += int(n)
            computed += ids.numel()
    sync(device)
    dt = time.perf_counter() - t0
    return {"tokens_per_s": real / dt, "padding_frac": 1 - real / computed,
            "positions_per_s": computed / dt}


# --------------------------------------------------------------------------- GAN


class StraightforwardMLP(nn.Module):
    """gan.ResidualMLP as one writes it first, one nn.Module per block, with the same weights."""

    def __init__(self, net: ResidualMLP):
        super().__init__()
        self.inp, self.out = net.inp, net.out
        self.blocks = nn.ModuleList()
        for l in range(net.n_blocks):
            fc1, fc2 = nn.Linear(*net.w1.shape[1:]), nn.Linear(*net.w2.shape[1:])
            with torch.no_grad():
                fc1.weight.copy_(net.w1[l]); fc1.bias.copy_(net.b1[l]); fc2.weight.copy_(net.w2[l]); fc2.bias.copy_(net.b2[l])
            self.blocks.append(nn.ModuleList([fc1, fc2]))

    def features(self, x):
        h = self.inp(x)
        for fc1, fc2 in self.blocks:
            h = h + fc2(F.relu(fc1(h)))
        return h

    def forward(self, x):
        return self.out(self.features(x))


def bench_gan(cfg: Config, mode: str, iters: int, device=torch.device("cpu")) -> dict:
    """Iterations/s of stage 2. mode: baseline | reference | optimised (see the module docstring)."""
    from .gan import ReferenceSteps
    from .gan_fast import FastSteps
    from .train import make_optimizer
    torch.manual_seed(0)
    g = Generator(cfg.gan, cfg.ae.code_dim, "l2")
    c = Critic(cfg.gan, cfg.ae.code_dim)
    if mode == "baseline":
        g.net, c.net = StraightforwardMLP(g.net), StraightforwardMLP(c.net)
    g, c = g.to(device), c.to(device)
    if mode == "baseline":  # torch's default Adam on a CPU: a loop over the parameters
        og, oc = (torch.optim.Adam(m.parameters(), lr=cfg.gan.lr, betas=tuple(cfg.gan.betas), foreach=False)
                  for m in (g, c))
    else:  # train.py's own
        og, oc = (make_optimizer(m, cfg) for m in (g, c))
        steps = (FastSteps if mode == "optimised" else ReferenceSteps)(g, c, cfg.gan)
    codes = torch.nn.functional.normalize(torch.randn(4096, cfg.ae.code_dim, device=device), dim=-1)
    labels = torch.randint(0, 2, (4096,), device=device)
    B, K = cfg.gan.batch_size, cfg.gan.n_critic

    def baseline_iteration():  # a fake batch per step, three critic passes, critic gradients in G's step
        for _ in range(K):
            idx = torch.randint(0, len(codes), (B,), device=device)
            y = labels[idx]
            with torch.no_grad():
                fake = g(torch.randn(B, cfg.gan.noise_dim, device=device), y)
            loss, _ = critic_loss(c, codes[idx], y, fake, y, cfg.gan, fused=False)
            oc.zero_grad(set_to_none=True); loss.backward(); oc.step()
        y = torch.randint(0, 2, (B,), device=device)
        loss, _ = generator_loss(c, g(torch.randn(B, cfg.gan.noise_dim, device=device), y), y, cfg.gan)
        og.zero_grad(set_to_none=True); loss.backward(); og.step()

    def iteration():  # train.py's loop
        idx = torch.randint(0, len(codes), (K, B), device=device)
        y = labels[idx]
        fakes = steps.fake(torch.randn(K * B, cfg.gan.noise_dim, device=device), y.flatten()).view(K, B, -1)
        eps = torch.rand(K, B, 1, device=device)
        for k in range(K):
            steps.critic_step(codes[idx[k]], y[k], fakes[k], y[k], eps[k])
            oc.step()
        steps.generator_step(torch.randn(B, cfg.gan.noise_dim, device=device), torch.randint(0, 2, (B,), device=device))
        og.step()

    step = baseline_iteration if mode == "baseline" else iteration
    for _ in range(2):  # warm-up
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return {"iters_per_s": iters / (time.perf_counter() - t0)}


# --------------------------------------------------------------------------- the pretrained family's stage 1


def pretrained_flops_per_token(shape) -> float:
    """Training FLOPs per token of the pretrained decoder: forward (2 per weight of every matmul, the
    tied output layer included) and the backward pass to the activations (as many again); the frozen
    weights get no gradient, and LoRA's and the memory's own are negligible."""
    s = shape
    per_layer = s.dim * (2 * s.n_heads * s.head_dim + 2 * s.n_kv_heads * s.head_dim) + 3 * s.dim * s.hidden_dim
    return 2 * 2.0 * (s.n_layers * per_layer + s.dim * s.vocab_size)


def straightforward_pretrained_loss(ae, ids, lengths, labels, codes):
    """The pretrained decoder's loss written the obvious way, for the baseline: float32 logits at every
    position, then F.cross_entropy on the real ones."""
    inputs = torch.cat([torch.full_like(ids[:, :1], ae.tokenizer.start_id), ids[:, :-1]], dim=1)
    mask = torch.arange(ids.size(1), device=ids.device)[None, :] < lengths[:, None]
    memory, offset = ae.memory(codes)
    logits = ae.lm.logits(ae.lm.hidden(ae.lm.embed(inputs) + offset, memory=memory)).float()
    return F.cross_entropy(logits[mask], ids[mask]), mask.sum()


def bench_pretrained(cfg: Config, optimised: bool, steps: int, device=torch.device("cpu")) -> dict:
    """Stage-1 training of the pretrained decoder: real tokens/s. optimised = frozen base weights in the
    machine's compute precision (bf16 where it is native, else float32), length-bucketed batches, the
    blockwise loss (`PretrainedAutoencoder.loss`); baseline = float32
    weights, random batches padded to max_len, float32 logits and F.cross_entropy. Synthetic token ids
    of IMDB chunks' lengths and random unit codes: speed does not depend on what the ids say."""
    from .base import load_base
    from .pretrained import PretrainedAutoencoder
    torch.manual_seed(0)
    base = load_base(cfg.ae.base)
    dtype = compute_dtype("auto", device) if optimised else torch.float32  # the base is cast to it (set_dtype)
    ae = PretrainedAutoencoder(cfg.ae, base, dtype=dtype).to(device).train()
    opt = torch.optim.Adam(ae.param_groups(), lr=1e-4, fused=True)
    units = synthetic_units(cfg, 16 * cfg.ae.batch_size, mean=24, sd=6, vocab=base.shape.vocab_size,
                            end=base.tokenizer.end_id)
    units.codes = F.normalize(torch.randn(len(units), cfg.ae.code_dim), dim=-1)
    B, T, lengths = cfg.ae.batch_size, cfg.data.max_len, units.lengths()
    if optimised:
        batches = iterate_batches(lengths, B, np.random.default_rng(0))
    else:
        perm = np.random.default_rng(0).permutation(len(units))
        batches = [perm[i:i + B] for i in range(0, len(perm), B)]
    batches = batches[:steps + 1]  # one warm-up step, then the timed ones
    real = 0
    for step, idx in enumerate(batches):
        ids, lens, labels, codes = ae.batch(units, idx, device)
        if not optimised:  # the straightforward way: every batch padded to max_len
            ids = torch.cat([ids, ids.new_full((ids.size(0), T - ids.size(1)), base.tokenizer.pad_id)], dim=1)
        if step == 1:
            sync(device)
            t0 = time.perf_counter()
        if optimised:
            ce, _, _, n = ae.loss(ids, lens, labels, codes)
        else:
            ce, n = straightforward_pretrained_loss(ae, ids, lens, labels, codes)
        opt.zero_grad(set_to_none=True)
        ce.backward()
        opt.step()
        if step >= 1:
            real += int(n)
    sync(device)
    dt = time.perf_counter() - t0
    return {"tokens_per_s": real / dt, "flops_per_token": pretrained_flops_per_token(base.shape)}


# --------------------------------------------------------------------------- generation


def bench_model(cfg: Config, device, model_dir=None):
    """The model generation is timed on: `model_dir` when given; else an untrained model of the
    preset (its reviews never end, so every row takes the whole budget: the slowest case)."""
    from .model import ReviewGAN
    from .tokenizer import Tokenizer
    if model_dir is not None:
        return ReviewGAN.from_pretrained(model_dir, device=str(device)), str(model_dir)
    torch.manual_seed(0)
    if cfg.ae.family == "pretrained":
        from .base import load_base
        from .pretrained import PretrainedAutoencoder
        base = load_base(cfg.ae.base)
        ae, tok = PretrainedAutoencoder(cfg.ae, base, compute_dtype("auto", device)), base.tokenizer
        ae.merge_lora()
    else:
        texts = [f"word{i} piece{i % 50} the film was {'good' if i % 2 else 'bad'}." for i in range(2000)]
        tok = Tokenizer.train(texts, cfg.data.vocab_size, 1)
        ae = Autoencoder(tok.vocab_size, cfg.ae)
    cfg = apply_overrides(cfg, ["sample.screen=0"])  # an untrained model has no sentiment reader: no screen
    return ReviewGAN(cfg, tok, ae, Generator(cfg.gan, cfg.ae.code_dim, ae.code_kind), None, device), "untrained"


def gen_flops_per_token(model) -> float | None:
    """Forward FLOPs of one decoding step of one review: 2 per weight of every matmul, the output
    layer included (attention over the cache and the memory adds ~1 % at these lengths and is left
    out). None for the LM baseline."""
    if model.is_lm:
        return None
    a = model.cfg.ae
    if a.family == "pretrained":
        return pretrained_flops_per_token(model.autoencoder.lm.shape) / 2  # forward only
    dec_in = a.emb_dim + (a.code_dim if a.code_to_input else 0)  # the LSTM decoder (hidden = code_dim)
    return 2 * 4 * a.code_dim * (dec_in + a.code_dim) + 2 * a.code_dim * model.tokenizer.vocab_size


def bench_generation(cfg: Config, n: int, single: int, device=torch.device("cpu"), model_dir=None) -> dict:
    model, which = bench_model(cfg, device, model_dir)
    model.generate("positive", n=2, seed=0)  # warm-up (GPU: kernel selection, allocator)
    sync(device)
    t0 = time.perf_counter()
    for s in ("positive", "negative"):
        model.generate(s, n=n, seed=0)
    sync(device)
    batched = (time.perf_counter() - t0) / 2  # seconds per 1000 reviews of one sentiment
    t0 = time.perf_counter()
    for i in range(single):
        model.generate("positive", n=1, seed=i)
    sync(device)
    one = (time.perf_counter() - t0) / single * n
    lengths = [r.tokens for r in model.generate("positive", n=min(n, 200), seed=1, records=True)]
    return {"gen_1000_s": batched * 1000 / n, "gen_one_at_a_time_1000_s": one * 1000 / n, "gen_model": which,
            "gen_mean_tokens": float(np.mean(lengths)), "gen_flops_per_token": gen_flops_per_token(model)}


# --------------------------------------------------------------------------- memory (fresh processes)


def _peak_rss_child(kind: str, cfg_dict: dict, q, model_dir=None, uncap: bool = False, dtype: str = "auto") -> None:
    prefer(dtype)  # a spawned process starts afresh: the parent's --dtype is passed along
    if uncap:  # the parent capped oneDNN's kernel cache for generation; training runs with the default
        os.environ.pop(KERNEL_CACHE_VARS[0], None)
    cfg = Config.from_dict(cfg_dict)
    if kind not in ("train", "generate"):
        raise ValueError(f"unknown memory measurement {kind!r}")
    if kind == "train" and cfg.ae.family == "pretrained":
        bench_pretrained(cfg, True, 2)
        bench_gan(cfg, "optimised", 1)
    elif kind == "train":  # two warm-up steps and two measured ones, at the recipe's batch size
        bench_autoencoder(cfg, synthetic_units(cfg, 4 * cfg.ae.batch_size), True, 2)
        bench_gan(cfg, "optimised", 1)
    else:
        bench_generation(cfg, 1000, 1, model_dir=model_dir)
    q.put(_peak_rss_mib())


def _peak_rss_mib() -> float:
    # VmHWM belongs to this process's own address space; ru_maxrss would carry over the parent's
    # peak through fork+exec and report the benchmark process instead of the measured work.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux; macOS: bytes)


def peak_rss_mb(kind: str, cfg: Config, model_dir=None) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    uncap = kind == "train" and kernel_cache_capped_here()
    p = ctx.Process(target=_peak_rss_child,
                    args=(kind, cfg.to_dict(), q, None if model_dir is None else str(model_dir), uncap,
                          dtype_name(compute_dtype("auto"))))
    p.start()
    p.join(timeout=600)  # the child sends one number, so it can exit before the queue is read
    if p.is_alive():
        p.kill()
        raise RuntimeError(f"the {kind} memory measurement took over 10 minutes")
    if p.exitcode != 0:
        raise RuntimeError(f"the {kind} memory measurement failed (exit code {p.exitcode})")
    return float(q.get(timeout=10))


# --------------------------------------------------------------------------- entry point


def run_bench(quick: bool = False, preset: str = "default", log=print, device: str = "cpu",
              overrides: Sequence[str] = (), model_dir=None) -> dict:
    """Every figure, in one run. overrides: `section.key=value` changes to the preset, to measure a
    variant of its recipe (e.g. `ae.batch_size=256`); recorded in the result. model_dir: time
    generation with this trained model (its reviews end when they end) instead of an untrained one."""
    from .records import resolve_device
    cfg = apply_overrides(load_preset(preset), list(overrides))
    dev = resolve_device(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    steps, iters, single = (4, 2, 5) if quick else (30, 10, 50)
    if dev.type == "cuda":
        name = f"cuda ({torch.cuda.get_device_name(dev)}; GPU figures)"
        steps, iters = steps * 4, iters * 4  # GPU steps are short: time more of them
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
    result = {"device": name, "preset": preset, "overrides": list(overrides), "quick": quick}
    n_mm = (1024 if quick else 2048) * (4 if dev.type == "cuda" else 1)  # a GPU needs big matrices to reach its peak
    log("measuring matmul throughput...")
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        result[f"matmul_gflops_{name}"] = matmul_gflops(dtype, n_mm, 0.3 if quick else 1.5, dev)
    # Floors and MFU are measured against the machine's best precision, whichever the run uses: a run
    # in emulated bf16 would otherwise look near a ceiling that is itself 5x too low.
    result["matmul_gflops"] = max(result["matmul_gflops_bf16"], result["matmul_gflops_fp32"])
    result["compute_dtype"] = dtype_name(compute_dtype("auto", dev))
    if cfg.ae.family == "pretrained":
        log("pretrained decoder training: optimised vs baseline...")
        opt = bench_pretrained(cfg, True, steps // 3 + 2, dev)
        base = bench_pretrained(cfg, False, steps // 6 + 2, dev)
        result.update(ae_tokens_per_s=opt["tokens_per_s"], ae_baseline_tokens_per_s=base["tokens_per_s"],
                      ae_speedup=opt["tokens_per_s"] / base["tokens_per_s"], ae_data="synthetic",
                      mfu=opt["tokens_per_s"] * opt["flops_per_token"] / (result["matmul_gflops"] * 1e9))
    else:
        units = None if quick else real_units(cfg, 4000)
        result["ae_data"] = "synthetic" if units is None else "imdb"
        units = units or synthetic_units(cfg, 4000)
        log("autoencoder training: optimised vs baseline...")
        opt = bench_autoencoder(cfg, units, True, steps, dev)
        base = bench_autoencoder(cfg, units, False, steps, dev)
        flops = ae_flops_per_position(cfg, cfg.data.vocab_size)
        result.update(ae_tokens_per_s=opt["tokens_per_s"], ae_baseline_tokens_per_s=base["tokens_per_s"],
                      ae_speedup=opt["tokens_per_s"] / base["tokens_per_s"], padding_frac=opt["padding_frac"],
                      baseline_padding_frac=base["padding_frac"],
                      mfu=opt["positions_per_s"] * flops / (result["matmul_gflops"] * 1e9))
    log("GAN training: optimised and reference vs straightforward...")
    base = bench_gan(cfg, "baseline", iters, dev)
    fast = bench_gan(cfg, "optimised", iters, dev)
    ref = bench_gan(cfg, "reference", iters, dev)
    result.update(gan_iters_per_s=fast["iters_per_s"], gan_baseline_iters_per_s=base["iters_per_s"],
                  gan_speedup=fast["iters_per_s"] / base["iters_per_s"], gan_reference_iters_per_s=ref["iters_per_s"],
                  gan_reference_speedup=ref["iters_per_s"] / base["iters_per_s"])
    log("generation: batched vs one at a time...")
    gen = bench_generation(cfg, 100 if quick else 1000, single // 5 if cfg.ae.family == "pretrained" else single, dev,
                           model_dir)
    result.update(gen, gen_speedup=gen["gen_one_at_a_time_1000_s"] / gen["gen_1000_s"])
    if gen["gen_flops_per_token"]:
        # The floor: 1,000 reviews of the measured mean length (+ the step that writes the end), one
        # decode each, at the machine's best matmul speed. Redraws and everything else count against it.
        result["gen_floor_s"] = 1000 * (gen["gen_mean_tokens"] + 1) * gen["gen_flops_per_token"] / (
            result["matmul_gflops"] * 1e9)
        result["gen_over_floor"] = result["gen_1000_s"] / result["gen_floor_s"]
    log("peak memory (fresh processes)...")
    result["train_peak_rss_mb"] = peak_rss_mb("train", cfg)
    result["gen_peak_rss_mb"] = peak_rss_mb("generate", cfg, model_dir)
    if dev.type == "cuda":  # device memory of this process's runs above (all stages)
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return {k: (float(f"{v:.6g}") if isinstance(v, float) and math.isfinite(v) else v) for k, v in result.items()}


def format_table(r: dict) -> str:
    rows = [
        ("autoencoder training", f"{r['ae_tokens_per_s']:,.0f} real tokens/s", f"{r['ae_baseline_tokens_per_s']:,.0f}",
         f"{r['ae_speedup']:.2f}x"),
        *([("  padding of computed positions", f"{r['padding_frac']:.1%}", f"{r['baseline_padding_frac']:.1%}", "")]
          if "padding_frac" in r else []),
        ("  model FLOP utilisation", f"{r['mfu']:.1%} of {r['matmul_gflops']:,.0f} GFLOP/s (the faster of bf16 "
         f"{r['matmul_gflops_bf16']:,.0f}, fp32 {r['matmul_gflops_fp32']:,.0f}); runs in {r['compute_dtype']}", "", ""),
        ("GAN training", f"{r['gan_iters_per_s']:.2f} it/s", f"{r['gan_baseline_iters_per_s']:.2f}", f"{r['gan_speedup']:.2f}x"),
        ("  with autograd's gradients (gan.py)", f"{r['gan_reference_iters_per_s']:.2f} it/s", "",
         f"{r['gan_reference_speedup']:.2f}x"),
    ]
    rows += [
        (f"generation, 1000 reviews ({r['gen_model']} model, {r['gen_mean_tokens']:.0f} tokens each)",
         f"{r['gen_1000_s']:.2f} s", f"{r['gen_one_at_a_time_1000_s']:.1f} s", f"{r['gen_speedup']:.1f}x"),
        *([("  over its FLOP floor", f"{r['gen_over_floor']:.1f}x of {r['gen_floor_s']:.1f} s", "", "")]
          if "gen_over_floor" in r else []),
        ("peak RSS: training / generation", f"{r['train_peak_rss_mb']:,.0f} / {r['gen_peak_rss_mb']:,.0f} MB", "", ""),
    ]
    w = [max(len(row[i]) for row in rows) for i in range(4)]
    head = f"{'':{w[0]}}  {'optimised':{w[1]}}  {'baseline':{w[2]}}  speedup"
    recipe = r.get("preset", "") + "".join(f" --set {o}" for o in r.get("overrides", []))
    title = f"device: {r['device']}" + (f"; preset {recipe}" if recipe else "")
    return "\n".join([title, head] + [f"{a:{w[0]}}  {b:{w[1]}}  {c:{w[2]}}  {d}" for a, b, c, d in rows])

