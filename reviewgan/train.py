"""Training: stage 1 (autoencoder, or the LM baseline) and stage 2 (conditional WGAN), resumable.

    reviewgan train --preset default --out runs/default

Each stage is one readable loop: step, log, validate, print fixed-noise samples, checkpoint.
A checkpoint holds the weights, the optimiser state, the RNG states and the loop position, so
`--resume` continues exactly where the last checkpoint left off and ends with the same weights
an uninterrupted run would have reached.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import dist
from .autoencoder import Autoencoder, evaluate_autoencoder
from .base import load_base
from .checkpoint import (READER_FILE, Run, claim_folder, load_weights, read_model_config, read_weights, recover,
                         refuse_nonfinite, stage1_file)
from .config import Config, apply_overrides
from .data import SENTIMENTS
from . import gan_fast
from .gan import ReferenceSteps, clip_weights_, fit_reader
from .lm import ConditionalLM, PretrainedLM
from .model import ReviewGAN, build_models
from .records import resolve_device
from .precision import compute_dtype
from .tokenizer import Tokenizer
from .units import Data, iterate_batches, prepare_data


class TrainingError(RuntimeError):
    """Training cannot go on: a non-finite loss, a diverging critic, an unusable run directory."""


def autocast(cfg: Config, device: torch.device):
    """bf16 autocast where the run computes in bf16 (train.dtype, precision.compute_dtype): matmuls in
    bfloat16, losses and reductions in float32; weights are float32 either way."""
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=compute_dtype(cfg.train.dtype, device) == torch.bfloat16)


def check_finite(value: float, what: str, step: int) -> None:
    if not math.isfinite(value):
        raise TrainingError(f"{what} became {value} at step {step}; stopped, the last good checkpoint is kept")


# --------------------------------------------------------------------------- stage 1


def stage1_optimizer(ae, cfg: Config) -> torch.optim.Optimizer:
    # fused: one kernel for all parameters. The pretrained family trains LoRA at its own learning rate.
    groups = ae.param_groups() if hasattr(ae, "param_groups") else [{"params": list(ae.parameters())}]
    return torch.optim.Adam(groups, lr=cfg.ae.lr, fused=True)


def train_autoencoder(run: Run, data: Data, ae, progress: bool = True) -> dict:
    """Stage 1 for either family (and the LM baseline): the model's batch -> loss -> step, epoch by epoch."""
    cfg, device, st = run.cfg, run.device, run.state["ae"]
    opt = stage1_optimizer(ae, cfg)
    run.load_optimizer("ae_optim", opt)
    params = [p for p in ae.parameters() if p.requires_grad]  # a pretrained base stays frozen
    base_lr = [g["lr"] for g in opt.param_groups]
    units = data.units["train"]
    if getattr(ae, "frozen_encoder", False) and units.codes is None:  # codes are inputs: computed once, cached
        run.log(f"encoding {len(units)} training and {len(data.units['val'])} validation units with the frozen "
                "sentence embedder (once; cached)")
        ae.encode_units(units, device)
        ae.encode_units(data.units["val"], device)
    lengths = units.lengths()
    n_batches = math.ceil(len(units) / cfg.ae.batch_size)
    stop = cfg.ae.max_steps or cfg.ae.epochs * n_batches  # a step budget may end stage 1 mid-epoch
    total = min(cfg.ae.epochs * n_batches, stop)
    name = "language model" if cfg.model == "lm" else "autoencoder"
    bar = tqdm(total=total, initial=st["step"], desc=name, disable=not progress, dynamic_ncols=True)
    ae.train()
    metrics: dict = {}
    t0, tokens = time.perf_counter(), 0
    for epoch in range(st["epoch"], cfg.ae.epochs):
        # The epoch's batch order depends only on (seed, epoch): a resumed run replays it exactly.
        batches = iterate_batches(lengths, cfg.ae.batch_size, np.random.default_rng([cfg.train.seed, epoch]))
        noise_std = cfg.ae.code_noise * cfg.ae.code_noise_decay ** epoch
        for b in range(st["batch"], len(batches)):
            if st["step"] >= stop:
                break
            local = dist.shard(batches[b])  # this process's slice of the global batch (all of it alone)
            with autocast(cfg, device):
                ce, kl, correct, n = ae.loss(*ae.batch(units, local, device), noise_std=noise_std)
            kl_w = cfg.ae.kl_weight * min(1.0, (st["step"] + 1) / max(cfg.ae.kl_anneal_steps, 1))
            # Weight each slice by its share of the global batch's tokens (rows for KL): the gradients
            # summed over processes are then exactly the global batch's (share = 1 in one process).
            loss = ce * (int(n) / dist.sum_scalar(int(n)))
            if cfg.ae.variational:
                loss = loss + kl_w * kl * (len(local) / len(batches[b]))
            check_finite(loss.item(), f"{name} loss", st["step"] + 1)  # before the update: weights stay good
            opt.zero_grad(set_to_none=True)
            loss.backward()
            dist.sum_gradients(params)
            if cfg.ae.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.ae.grad_clip)
            warm = min(1.0, (st["step"] + 1) / cfg.ae.warmup_steps) if cfg.ae.warmup_steps else 1.0
            for g, lr in zip(opt.param_groups, base_lr):
                g["lr"] = lr * warm
            opt.step()
            st["step"] += 1; st["batch"] = b + 1
            tokens += int(n)
            bar.update(1)
            if st["step"] % cfg.train.log_every == 0 or b == len(batches) - 1:
                rate = tokens / (time.perf_counter() - t0)
                bar.set_postfix(epoch=epoch + 1, loss=f"{ce.item():.3f}", acc=f"{int(correct) / int(n):.2f}",
                                kl=f"{kl.item():.1f}", tok_s=f"{rate:,.0f}")
            if st["step"] % cfg.train.ckpt_every == 0 and b < len(batches) - 1 and st["step"] < stop:
                run.save(data.tokenizer, ae, optims={"ae_optim": opt})
        val = evaluate_autoencoder(ae, data.units["val"], device, limit=getattr(ae, "val_limit", None))
        metrics = {"stage": "ae", "epoch": epoch + 1, "step": st["step"], **{f"val_{k}": v for k, v in val.items()}}
        run.metric(metrics)
        run.log(f"{name} epoch {epoch + 1}/{cfg.ae.epochs}: val recon loss {metrics['val_recon_loss']:.3f}, "
                f"token acc {metrics['val_token_acc']:.3f}")
        show_reconstructions(ae, data, device, run.log, cfg.train.n_samples)
        st["epoch"], st["batch"] = epoch + 1, 0
        st["done"] = st["epoch"] >= cfg.ae.epochs or st["step"] >= stop
        run.save(data.tokenizer, ae, optims={"ae_optim": opt}, metrics=metrics)
        if st["done"]:
            break
    bar.close()
    if not st["done"]:  # zero epochs requested
        st["done"] = True
        run.save(data.tokenizer, ae, optims={"ae_optim": opt})
    return metrics


@torch.no_grad()
def show_reconstructions(ae, data: Data, device, log, n: int) -> None:
    units = data.units["val"]
    if n <= 0 or len(units) == 0:
        return
    ae.eval()
    max_len = int(units.lengths().max())
    if isinstance(ae, (ConditionalLM, PretrainedLM)):  # an LM has nothing to reconstruct: show samples instead
        labels = torch.arange(2 * n, device=device) % 2
        rows, _ = ae.generate(labels, max_len, generator=torch.Generator(device=device).manual_seed(0))
        for y, r in zip(labels.tolist(), rows):
            log(f"  [{SENTIMENTS[y]}] {data.tokenizer.decode(r)}")
    else:
        batch = ae.batch(units, list(range(min(n, len(units)))), device)
        rows, _ = ae.generate(ae.codes(batch), max_len, labels=batch[2])
        for i, r in enumerate(rows):
            log(f"  real: {data.tokenizer.decode(units.ids[i])}\n  recon: {data.tokenizer.decode(r)}")
    ae.train()


# --------------------------------------------------------------------------- stage 2


def make_optimizer(module: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    if cfg.gan.optimizer == "rmsprop":
        return torch.optim.RMSprop(module.parameters(), lr=cfg.gan.lr, foreach=True)
    # fused: one kernel for all of a network's tensors (8 per network: the blocks' weights are stacked)
    return torch.optim.Adam(module.parameters(), lr=cfg.gan.lr, betas=tuple(cfg.gan.betas), fused=True)


@torch.no_grad()
def evaluate_gan(gen, critic, codes, labels, cfg, device, seed: int) -> dict:
    """Critic sentiment accuracy on held-out real codes, and on generated codes of each requested label."""
    gen.eval(); critic.eval()
    g = torch.Generator(device=device).manual_seed(seed)
    _, logit = critic(codes, labels)
    real_acc = float(((logit > 0).long() == labels).float().mean())
    fake_labels = torch.arange(len(codes), device=device) % 2
    fake = gen(torch.randn(len(codes), cfg.gan.noise_dim, generator=g, device=device), fake_labels)
    s_fake, logit_f = critic(fake, fake_labels)
    s_real, _ = critic(codes, labels)
    gen.train(); critic.train()
    return {"critic_acc_real": real_acc, "critic_acc_fake": float(((logit_f > 0).long() == fake_labels).float().mean()),
            "val_wdist": float(s_real.mean() - s_fake.mean())}


def train_gan(run: Run, data: Data, ae: Autoencoder, gen, critic, progress: bool = True) -> dict:
    cfg, device, st = run.cfg, run.device, run.state["gan"]
    gcfg = cfg.gan
    codes = ae.encode_units(data.units["train"], device)  # (N, C), fixed: stage 1 is frozen in stage 2
    labels = torch.tensor(data.units["train"].labels, device=device)
    val_codes = ae.encode_units(data.units["val"], device)
    val_labels = torch.tensor(data.units["val"].labels, device=device)
    opt_g = make_optimizer(gen, cfg)
    opt_c = make_optimizer(critic, cfg)
    run.load_optimizer("gen_optim", opt_g)
    run.load_optimizer("critic_optim", opt_c)
    # All of stage 2's sampling (batches, noise, labels) comes from this generator; its state is checkpointed.
    g = torch.Generator(device=device).manual_seed(cfg.train.seed + 1)
    saved = run.rng()
    if "gan" in saved and st["step"] > 0:
        g.set_state(saved["gan"])
    # Fixed noise, decoded at each validation so progress can be watched on the same inputs.
    fixed_z = torch.randn(2 * cfg.train.n_samples, gcfg.noise_dim,
                          generator=torch.Generator().manual_seed(cfg.train.seed + 2)).to(device)
    fixed_y = torch.arange(2 * cfg.train.n_samples, device=device) % 2
    B, N, world = gcfg.batch_size, len(codes), dist.world_size()
    if B % world:
        raise TrainingError(f"gan.batch_size {B} must be divisible by the number of processes ({world})")

    def sample_fake(batch):
        z = torch.randn(batch, gcfg.noise_dim, generator=g, device=device)  # fresh Gaussian noise every step
        y = torch.randint(0, 2, (batch,), generator=g, device=device)
        return z, y

    def save(metrics=None):
        run.save(data.tokenizer, ae, gen, critic, {"gen_optim": opt_g, "critic_optim": opt_c},
                 {"torch": torch.get_rng_state(), "gan": g.get_state()}, metrics)

    # The hand-derived steps where they apply (blocks without dropout): the same gradients as autograd's, ~2x faster.
    steps = gan_fast.FastSteps(gen, critic, gcfg) if gan_fast.supported(gcfg) else ReferenceSteps(gen, critic, gcfg)
    # The slot transformers' steps cost their matmuls (bf16 halves them where it is native); the MLPs'
    # steps cost their kernel launches and stay in float32.
    amp = autocast(cfg, device) if gcfg.arch == "slots" else contextlib.nullcontext()
    gen.train(); critic.train()
    bar = tqdm(total=gcfg.steps, initial=st["step"], desc="gan", disable=not progress, dynamic_ncols=True)
    metrics, t0, done0 = {}, time.perf_counter(), st["step"]
    while st["step"] < gcfg.steps:
        # (1) update the critic n_critic times on real codes vs generated codes.
        # Every process draws the same global batches and keeps its slice (see dist.py); each slice's
        # loss is scaled by 1/world, so the gradients summed over processes are the global batch's.
        draws = []
        for _ in range(gcfg.n_critic):
            idx = torch.randint(0, N, (B,), generator=g, device=device)
            z = torch.randn(B, gcfg.noise_dim, generator=g, device=device)  # fresh Gaussian noise every step
            eps = torch.rand(B, 1, generator=g, device=device)  # gradient-penalty interpolation weights
            draws.append(tuple(dist.shard(t) for t in (idx, z, eps)))
        # The generator does not change during the critic steps, so their fakes come from one pass.
        # Fakes get the real batch's sentiments: label effects cancel in the W estimate.
        with amp:
            fakes = steps.fake(torch.cat([z for _, z, _ in draws]), torch.cat([labels[idx] for idx, _, _ in draws]))
        for (idx, _, eps), fake in zip(draws, fakes.split(len(draws[0][0]))):  # this process's slices
            y = labels[idx]
            with amp:
                c_parts = steps.critic_step(codes[idx], y, fake, y, eps, scale=1 / world)
            check_finite(c_parts["c_loss"].item(), "GAN critic loss", st["step"] + 1)
            dist.sum_gradients(critic.parameters())
            opt_c.step()
            if gcfg.lipschitz == "clip":
                clip_weights_(critic, gcfg.clip_value)
        # (2) update the generator once, through the critic (whose weights this step leaves alone)
        z, y = (dist.shard(t) for t in sample_fake(B))
        with amp:
            g_parts = steps.generator_step(z, y, scale=1 / world)
        check_finite(g_parts["g_loss"].item(), "GAN generator loss", st["step"] + 1)
        dist.sum_gradients(gen.parameters())
        opt_g.step()
        st["step"] += 1
        bar.update(1)
        if st["step"] % cfg.train.log_every == 0:
            parts = {k: float(v) for k, v in {**c_parts, **g_parts}.items()}
            if abs(parts["wdist"]) > 1e4:
                raise TrainingError(f"the critic diverged at GAN step {st['step']} (Wasserstein estimate "
                                    f"{parts['wdist']:.3g}); lower gan.lr or use gan.lipschitz=gp")
            bar.set_postfix(c=f"{parts['c_loss']:.3f}", g=f"{parts['g_loss']:.3f}", w=f"{parts['wdist']:.3f}",
                            acc=f"{parts['c_acc']:.2f}", it_s=f"{(st['step'] - done0) / (time.perf_counter() - t0):.1f}")
        if st["step"] % cfg.train.eval_every == 0 or st["step"] == gcfg.steps:
            metrics = {"stage": "gan", "step": st["step"],
                       **evaluate_gan(gen, critic, val_codes, val_labels, cfg, device, cfg.train.seed + 3)}
            run.metric(metrics)
            run.log(f"gan step {st['step']}: critic sentiment acc real {metrics['critic_acc_real']:.3f}, "
                    f"fake {metrics['critic_acc_fake']:.3f}, val W-distance {metrics['val_wdist']:.3f}")
            gen.eval()
            with torch.no_grad():
                rows, _ = ae.generate(gen(fixed_z, fixed_y), cfg.data.max_len, labels=fixed_y)
            gen.train()
            for y_, r in zip(fixed_y.tolist(), rows):
                run.log(f"  [{SENTIMENTS[y_]}] {data.tokenizer.decode(r)}")
        if st["step"] % cfg.train.ckpt_every == 0 or st["step"] == gcfg.steps:
            st["done"] = st["step"] >= gcfg.steps
            save(metrics)
    bar.close()
    if not st["done"]:  # zero steps requested
        st["done"] = True
        save(metrics)
    return metrics


def train_reader(run: Run, data: Data, ae: Autoencoder) -> dict:
    """Stage 2's last step: the sentiment Reader of real training codes (gan.fit_reader), which
    generation's sample.screen reads decoded reviews with.

    Fit on every training unit, not only the opinion-filtered ones the GAN learns from: a reader that
    never saw a neutral unit reads nearly every code with confidence, and the screen is there to find
    the reviews that could go either way (on the bundled model's reviews, keeping the 80 % it reads
    most clearly, the judge reads the negative ones right 0.92 of the time against 0.89).
    """
    if run.cfg.data.opinion_filter:
        data = prepare_data(apply_overrides(run.cfg, ["data.opinion_filter=0"]), data.tokenizer, log=lambda m: None)
    with torch.no_grad():
        read = getattr(ae, "reading_codes", ae.encode_units)  # what the screen reads a review as
        codes = read(data.units["train"], run.device).cpu()
        val_codes = read(data.units["val"], run.device).cpu()
    reader = fit_reader(codes, torch.tensor(data.units["train"].labels))
    with torch.no_grad():
        acc = float(((reader(val_codes) > 0.5).long() == torch.tensor(data.units["val"].labels)).float().mean())
    run.save_reader(reader)
    metrics = {"stage": "reader", "reader_acc_val": acc, "reader_units": len(codes)}
    run.metric(metrics)
    run.log(f"sentiment reader of codes: held-out accuracy {acc:.3f}")
    return metrics


# --------------------------------------------------------------------------- entry point


MACHINE_SETTINGS = ("device", "threads", "dtype")  # train.* keys that change speed (and rounding), not the recipe


def open_run(cfg: Config, out: Path, resume: bool, force: bool, log) -> tuple[Config, bool]:
    """Decide what to do with `out`. Returns the config to use and whether earlier work is reused."""
    out = Path(out)
    if resume and force:
        raise TrainingError("--resume continues the run in --out and --force replaces it: give one of them")
    if not claim_folder(out, force):  # a new or empty folder, or a replaced run
        if resume:
            log(f"nothing to resume in {out}; starting a new run")
        return cfg, False
    recover(out)
    saved = Config.from_dict(read_model_config(out)["config"])
    # How a run trains (device, threads, compilation) is not part of its recipe: stage 1 may run on
    # a GPU and stage 2, or a resumed run, on a CPU. The current machine's settings win.
    for key in MACHINE_SETTINGS:
        setattr(saved.train, key, getattr(cfg.train, key))
    if resume:
        if saved.to_dict() != cfg.to_dict():
            log("resuming with the run's saved config (the given preset/overrides are ignored)")
        return saved, True
    if saved.to_dict() == cfg.to_dict():
        return saved, True  # same run, e.g. `--stage gan` after `--stage ae`, here or on another machine
    raise TrainingError(f"--out {out} already holds a different run; use --resume to continue it or --force to overwrite")


def autoencoder_source(cfg: Config, src: str | Path) -> tuple[Tokenizer, Path]:
    """Check that run `src` holds a finished autoencoder trained with this config's data and ae sections."""
    from .model import load_spec
    src = Path(src)
    src_cfg, tok, meta = load_spec(src)
    if cfg.model != "gan" or src_cfg.model != "gan" or "ae" not in meta.get("stages", []):
        raise TrainingError(f"--ae-from {src}: needs a GAN config and a run with a trained autoencoder")
    for section in ("data", "ae"):
        if src_cfg.to_dict()[section] != cfg.to_dict()[section]:
            raise TrainingError(f"--ae-from {src}: its [{section}] config differs from this run's; the autoencoder "
                                "is only reused for the same data and autoencoder settings")
    return tok, src / stage1_file(src_cfg)


def warm_start(ae, cfg: Config, src: str | Path, log) -> None:
    """Start stage 1 from the decoder of model folder `src` (ae.init; "pretrained": the bundled model):
    its code memory and LoRA, on the same base with the same LoRA and memory shapes. What this run adds
    (a tuned encoder) starts fresh. From an LM run (`--preset pretrained-lm`) only its LoRA is taken:
    its memory reads a sentiment, not a code, so the code memory starts fresh (its offset at zero)."""
    from .model import default_model_dir, load_spec
    src = default_model_dir() if str(src) == "pretrained" else Path(src)
    if src is None or not (src / "config.json").exists():
        raise TrainingError(f"ae.init={cfg.ae.init}: no model folder there")
    src_cfg, _, _ = load_spec(src)
    lm = src_cfg.model == "lm"
    same = ("base", "memory_slots", "lora_rank", "lora_alpha", "lora_targets") + (() if lm else ("code_dim",))
    if src_cfg.ae.family != "pretrained" or any(getattr(src_cfg.ae, k) != getattr(cfg.ae, k) for k in same):
        raise TrainingError(f"ae.init={cfg.ae.init}: its decoder differs from this run's (ae.{', ae.'.join(same)} "
                            "must be the same)")
    path = src / stage1_file(src_cfg)
    state = read_weights(path)
    refuse_nonfinite(state, path)
    own = ae.state_dict()
    taken = {k: v for k, v in state.items() if k in own and (".lora_" in k or not lm)}
    if not taken or any(own[k].shape != v.shape for k, v in taken.items()):
        raise TrainingError(f"ae.init={cfg.ae.init}: its decoder weights do not fit this run's")
    ae.load_state_dict({**own, **taken})
    log(f"stage 1 starts from the decoder of {src} ({len(taken)} of {len(own)} weights)")


def train(cfg: Config, out: str | Path, stage: str = "all", resume: bool = False, force: bool = False,
          progress: bool = True, log=None, ae_from: str | Path | None = None) -> ReviewGAN:
    """Train the stages asked for into the run directory `out`; returns the trained model.

    ae_from: start a new run from the finished autoencoder of another run (same data and ae config)
    and train only the GAN: the way to compare GAN variants on one autoencoder.
    """
    log = log or (lambda msg: tqdm.write(msg))
    out = Path(out)
    device = resolve_device(cfg.train.device)
    _, world = dist.setup(device)
    if not dist.is_main():  # under torchrun only rank 0 talks, writes and decides what to do with `out`
        log, progress = (lambda msg: None), False
        dist.barrier()
        cfg, reuse = open_run(cfg, out, resume, False, log)
    else:
        cfg, reuse = open_run(cfg, out, resume, force, log)
        dist.barrier()
    # Decided once, while every process sees the same folder: rank 0 writes the reader later.
    has_reader = (out / READER_FILE).exists()
    if world > 1:
        log(f"data-parallel training on {world} processes")
    torch.manual_seed(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    run = Run(out, cfg, device, log)
    tokenizer = None
    if ae_from is not None:
        if reuse:
            raise TrainingError(f"--ae-from starts a new run, but {out} already holds one: use another --out or --force")
        tokenizer, ae_file = autoencoder_source(cfg, ae_from)
    if reuse:
        run.load_state()
        if not resume:
            for s in (["ae"] if stage in ("ae", "all") else []) + (["gan"] if stage in ("gan", "all") else []):
                if 0 < run.state[s].get("step", 0) and not run.state[s]["done"]:
                    raise TrainingError(f"{out}: the {s} stage was interrupted; continue it with --resume")
        if cfg.ae.family == "lstm":
            tokenizer = Tokenizer.from_file(out / "tokenizer.json")
    base = None
    if cfg.ae.family == "pretrained":  # the base LM brings its own tokenizer; a resumed run keeps its base
        sha = read_model_config(out).get("base", {}).get("sha256") if reuse else None
        base = load_base(cfg.ae.base, sha, log=log, respace=not cfg.data.spaced_sentences)
        tokenizer = base.tokenizer
    data = prepare_data(cfg, tokenizer, log)
    ae, gen, critic = build_models(cfg, data.tokenizer.vocab_size, base, compute_dtype(cfg.train.dtype, device))
    for m in (ae, gen, critic):
        if m is not None:
            m.to(device)
    if reuse and (out / stage1_file(cfg)).exists():
        load_weights(ae, out / stage1_file(cfg), device)
        if gen is not None and (out / "generator.safetensors").exists():
            load_weights(gen, out / "generator.safetensors", device)
            load_weights(critic, out / "critic.safetensors", device)
        saved_rng = run.rng()
        if "torch" in saved_rng:
            torch.set_rng_state(saved_rng["torch"])
    if not reuse and dist.is_main():
        (out / "metrics.jsonl").unlink(missing_ok=True)
    if not reuse and ae_from is None and cfg.ae.init:
        warm_start(ae, cfg, cfg.ae.init, log)
    if ae_from is not None:
        load_weights(ae, ae_file, device)
        run.state["ae"].update(epoch=cfg.ae.epochs, done=True, source=str(ae_from))
        if dist.is_main() and (Path(ae_from) / "metrics.jsonl").exists():  # its curves, for the plots
            lines = (Path(ae_from) / "metrics.jsonl").read_text().splitlines()
            (out / "metrics.jsonl").write_text("".join(x + "\n" for x in lines if '"stage": "ae"' in x))
        run.save(data.tokenizer, ae)
        log(f"autoencoder taken from {ae_from}")
    if stage in ("ae", "all") and not run.state["ae"]["done"]:
        train_autoencoder(run, data, ae, progress)
    if stage in ("gan", "all") and not run.state["gan"]["done"] and cfg.model == "gan":
        if not run.state["ae"]["done"]:
            raise TrainingError(f"{out}: train the autoencoder first (--stage ae or all)")
        train_gan(run, data, ae, gen, critic, progress)
    if stage in ("gan", "all") and cfg.model == "gan" and run.state["gan"]["done"] and not has_reader:
        train_reader(run, data, ae)  # also fits one for a run whose stage 2 ended without it
    return ReviewGAN.from_pretrained(out, device=str(device))
