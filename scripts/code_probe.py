"""Measure how fast a stage-1 code that carries the review learns to reconstruct it, on a CPU.

Extra memory slots are added to the bundled decoder (its pooled slot and LoRA merged and kept unless
--no-pooled, a fresh LoRA on top, the new slots' key/value projection starting at zero), fed from
all-MiniLM-L6-v2's token states (frozen):

    --design tokens     one slot per MiniLM token (up to K), projected to D dims and normalised: no
                        compression, informative from the first step
    --design perceiver  K latents from one cross-attention of learnt queries over the token states

It logs greedy reconstruction BLEU-4 of 64 validation chunks (and 3 examples) against training
tokens seen, as JSON lines in --out: the slope of that curve ranks designs. With --save DIR it keeps
the trained parts and Adam's state there at every log, and --resume continues from them (same data
order). The measurements in docs/RESULTS.md ("A code that carries the review"):

    python scripts/code_probe.py --design perceiver --k 8 --d 64 --eval-every 150 --minutes 45 --out perceiver.jsonl
    python scripts/code_probe.py --design tokens --k 48 --d 64 --word-dropout 0.3 --lr 2e-3 --minutes 14 --out tokens.jsonl
    python scripts/code_probe.py --design tokens --k 48 --d 64 --word-dropout 0.5 --lr 3e-3 --no-pooled --eval-every 100 --minutes 50 --out nopool.jsonl

The last design, trained with the decoder from the base model up, is the `tokens` preset (reviewgan/slots.py).
"""
import argparse
import json
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from reviewgan import metrics as M
from reviewgan.embedder import MiniLM
from reviewgan.model import ReviewGAN
from reviewgan.units import prepare_data

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--design", choices=("tokens", "perceiver"), default="tokens")
ap.add_argument("--k", type=int, default=48, help="slots (tokens: at most this many tokens)")
ap.add_argument("--d", type=int, default=64, help="dims per slot")
ap.add_argument("--minutes", type=float, default=12)
ap.add_argument("--word-dropout", type=float, default=0.0, help="share of the decoder's input tokens replaced")
ap.add_argument("--lr", type=float, default=5e-4, help="learning rate of the new slots' parts")
ap.add_argument("--eval-every", type=int, default=40, help="steps (of 32 chunks) between reconstructions")
ap.add_argument("--no-pooled", action="store_true", help="drop the bundled pooled slot: the new slots alone")
ap.add_argument("--out", required=True)
ap.add_argument("--save", help="folder for the trained parts and the optimiser's state (safetensors), at every log")
ap.add_argument("--resume", action="store_true", help="continue from --save (the log is appended to)")
args = ap.parse_args()
K, D, MINUTES, OUT = args.k, args.d, args.minutes, args.out
NOPOOL, WDROP, LR_NEW, EVERY = args.no_pooled, args.word_dropout, args.lr, args.eval_every
torch.manual_seed(0)
random.seed(0)
model = ReviewGAN.from_pretrained(dtype="bf16")
ae = model.autoencoder
cfg = model.cfg
ae.lm.add_lora(cfg.ae.lora_rank, cfg.ae.lora_alpha, tuple(cfg.ae.lora_targets.split(",")))
shape = ae.lm.shape
data = prepare_data(cfg, ae.tokenizer, log=lambda m: None)
train, val = data.units["train"], data.units["val"]
print("units", len(train), len(val), flush=True)
enc = MiniLM(bf16=True)


def states(texts):
    """MiniLM's last-layer token states (B, T, 384) float, mask (B, T), pooled codes (B, 384)."""
    x, mask = enc.states(texts)
    m = mask[..., None].float()
    return x, mask, F.normalize((x * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


class TokenSlots(nn.Module):
    """Token states (B, T, 384) -> K slots (B, K, D): slot i is token i's state, projected down and
    normalised (no compression: informative from the first step); slots past the text are zero."""

    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(384)
        self.down = nn.Linear(384, D)

    def forward(self, x, mask):
        x, mask = x[:, :K], mask[:, :K]
        h = F.layer_norm(self.down(self.ln(x)), (D,)) * mask[..., None]
        return F.pad(h, (0, 0, 0, K - h.size(1)))


class Perceiver(nn.Module):
    """Token states (B, T, 384) -> K latents (B, K, D): one cross-attention from learnt queries, an MLP,
    a down-projection and a LayerNorm without affine (a code of fixed scale for a GAN)."""

    def __init__(self):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(K, 384) * 0.02)
        self.ln = nn.LayerNorm(384)
        self.attn = nn.MultiheadAttention(384, 6, batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(384), nn.Linear(384, 768), nn.GELU(), nn.Linear(768, 384))
        self.down = nn.Linear(384, D)

    def forward(self, x, mask):
        kv = self.ln(x)
        q = self.queries.expand(x.size(0), -1, -1)
        h, _ = self.attn(q, kv, kv, key_padding_mask=~mask)
        h = h + self.mlp(h)
        return F.layer_norm(self.down(h), (D,))


class SlotMemory(nn.Module):
    """code (B, 384 + K*D) -> the bundled pooled slot's memory and K new slots per layer, and its offset."""

    def __init__(self, pooled):
        super().__init__()
        self.pooled = pooled
        self.slot = nn.Parameter(torch.zeros(K, D))  # which slot: added before the projection
        self.kv = nn.Linear(D, shape.n_layers * 2 * shape.n_kv_heads * shape.head_dim)
        nn.init.zeros_(self.kv.weight)
        nn.init.zeros_(self.kv.bias)

    def forward(self, code):
        code = code.float()
        B = code.size(0)
        memory, offset = self.pooled(code[:, :384])
        if NOPOOL:  # the new slots alone: the decoder has nothing else to read the review from
            memory = [(k[:, :, :0], v[:, :, :0]) for k, v in memory]
            offset = torch.zeros_like(offset)
        slots = code[:, 384:].view(B, K, D) + self.slot
        kv = self.kv(slots).view(B, K, shape.n_layers, 2, shape.n_kv_heads, shape.head_dim)
        kv = kv.permute(2, 3, 0, 4, 1, 5)  # (L, 2, B, kvh, K, hd)
        out = [(torch.cat([k, kv[l, 0]], 2), torch.cat([v, kv[l, 1]], 2)) for l, (k, v) in enumerate(memory)]
        return out, offset


comp = TokenSlots() if args.design == "tokens" else Perceiver()
ae.memory = SlotMemory(ae.memory)
ae.cfg.memory_slots = (0 if NOPOOL else ae.cfg.memory_slots) + K  # the decoding cache's room for memory slots
lora = [p for n, p in ae.named_parameters() if ".lora_" in n]
new = list(comp.parameters()) + [ae.memory.slot] + list(ae.memory.kv.parameters())
for p in ae.memory.pooled.parameters():
    p.requires_grad_(False)
opt = torch.optim.AdamW([{"params": new, "lr": LR_NEW}, {"params": lora, "lr": cfg.ae.lora_lr}], weight_decay=0.0)


def codes_of(texts, grad):
    x, mask, pooled = states(texts)
    with torch.set_grad_enabled(grad):
        return torch.cat([pooled, comp(x, mask).flatten(1)], 1)


def batch(units, idx):
    seqs = [units.ids[i] for i in idx]
    lengths = torch.tensor([len(s) for s in seqs])
    ids = torch.full((len(seqs), int(lengths.max())), ae.tokenizer.pad_id, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s)
    return ids, lengths, torch.tensor([units.labels[i] for i in idx]), [units.texts[i] for i in idx]


vidx = list(range(0, len(val), len(val) // 64))[:64]
vtexts = [val.texts[i] for i in vidx]


def evaluate():
    ae.eval()
    with torch.no_grad():
        rows, _ = ae.generate(codes_of(vtexts, False), 40, greedy=True)
    ae.train()
    recon = [ae.tokenizer.decode(r) for r in rows]
    bleu = float(np.mean([M.bleu([h], [r], 4) for h, r in zip(recon, vtexts)]))
    return bleu, recon


from reviewgan.autoencoder import output_loss
from reviewgan.pretrained import _TiedHead


def loss_wd(ids, ids_in, lengths, codes):
    inputs = torch.cat([torch.full_like(ids[:, :1], ae.tokenizer.start_id), ids_in[:, :-1]], dim=1)
    mask = torch.arange(ids.size(1))[None, :] < lengths[:, None]
    memory, offset = ae.memory(codes)
    h = ae.lm.hidden(ae.lm.embed(inputs) + offset, memory=memory)
    ce, correct = output_loss(h.to(ae.lm.dtype), _TiedHead(ae.lm), ids, mask)
    return ce, None, correct, mask.sum()


from pathlib import Path  # noqa: E402

from safetensors.torch import load_file, save_file  # noqa: E402

trained = {f"comp.{k}": v for k, v in comp.named_parameters()}
trained.update({f"memory.{k}": v for k, v in ae.memory.named_parameters() if not k.startswith("pooled.")})
trained.update({n: p for n, p in ae.named_parameters() if ".lora_" in n})


def save(step, seen):
    """The trained tensors, Adam's moments and the position, written whole or not at all."""
    out = {f"param/{k}": v.detach().contiguous() for k, v in trained.items()}
    for k, v in trained.items():
        st = opt.state.get(v, {})
        for m in ("exp_avg", "exp_avg_sq"):
            if m in st:
                out[f"{m}/{k}"] = st[m].contiguous()
    out["position"] = torch.tensor([step, seen, int(opt.state[trained[next(iter(trained))]]["step"])
                                    if opt.state else 0])
    folder = Path(args.save)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(out, str(folder / "probe.tmp"))
    (folder / "probe.tmp").replace(folder / "probe.safetensors")


seen, step = 0, 0
if args.resume:
    state = load_file(str(Path(args.save) / "probe.safetensors"))
    with torch.no_grad():
        for k, v in trained.items():
            v.copy_(state[f"param/{k}"])
    step, seen, adam_step = (int(x) for x in state["position"])
    for k, v in trained.items():
        if f"exp_avg/{k}" in state:
            opt.state[v] = {"step": torch.tensor(float(adam_step)), "exp_avg": state[f"exp_avg/{k}"].clone(),
                            "exp_avg_sq": state[f"exp_avg_sq/{k}"].clone()}
log = open(OUT, "a" if args.resume else "w")
bleu, recon = evaluate()
t0 = time.time()
rec = {"step": step, "tokens": seen, "bleu4": bleu, "distinct_recons": len(set(recon)), "examples": list(zip(vtexts[:3], recon[:3]))}
print(json.dumps(rec), flush=True)
log.write(json.dumps(rec) + "\n")
order = list(range(len(train)))
random.shuffle(order)
B = 32
while time.time() - t0 < MINUTES * 60:
    idx = order[(step * B) % len(order):(step * B) % len(order) + B]
    ids, lengths, labels, texts = batch(train, idx)
    code = codes_of(texts, True)
    if WDROP > 0:  # word dropout: the decoder's inputs (not its targets) lose words, so the code is needed
        keep = torch.rand(ids.shape) >= WDROP
        ids_in = torch.where(keep, ids, torch.full_like(ids, ae.tokenizer.pad_id))
        ce, _, right, n = loss_wd(ids, ids_in, lengths, code)
    else:
        ce, _, right, n = ae.loss(ids, lengths, labels, code)
    opt.zero_grad(set_to_none=True)
    ce.backward()
    opt.step()
    seen += int(n)
    step += 1
    if step % 25 == 0:
        print(f"step {step} tokens {seen} ce {float(ce):.3f} {time.time() - t0:.0f}s", flush=True)
    if step % EVERY == 0:
        bleu, recon = evaluate()
        rec = {"step": step, "tokens": seen, "ce": float(ce), "bleu4": bleu, "distinct_recons": len(set(recon)),
               "minutes": round((time.time() - t0) / 60, 1), "examples": list(zip(vtexts[:3], recon[:3]))}
        print(json.dumps(rec), flush=True)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if args.save:
            save(step, seen)
if args.save:
    save(step, seen)
bleu, recon = evaluate()
rec = {"step": step, "tokens": seen, "bleu4": bleu, "distinct_recons": len(set(recon)),
       "minutes": round((time.time() - t0) / 60, 1), "examples": list(zip(vtexts[:6], recon[:6]))}
print(json.dumps(rec), flush=True)
log.write(json.dumps(rec) + "\n")
