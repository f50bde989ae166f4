"""Stage 1, pretrained-decoder family: a frozen sentence embedder maps a review to a code, and a
pretrained language model conditioned on that code writes the review back (Optimus, Li et al. 2020).

    encoder: text -> all-MiniLM-L6-v2 (frozen) -> code (384, unit length)
    decoder: code -> CodeMemory -> one key/value "memory" slot per layer, and an offset added to every
             input embedding -> SmolLM2-135M (frozen, LoRA on its attention) -> text, ending at its EOS

The decoder takes no sentiment input: whatever sentiment a review has, its code carries. Trained are
only CodeMemory and the LoRA matrices (~6 M parameters); `state_dict()` holds just those, so a model
folder stores them and names the base by its sha256 (base.py). It implements the stage-1 interface
the LSTM autoencoder implements (batch, loss, encode_units, encode_texts, generate), so training,
generation, serving and evaluation do not branch on the family.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .autoencoder import drop_rows, output_loss, rows_of, sample_nucleus
from .base import Base, cache_root
from .config import AEConfig
from .llama import Llama, LlamaShape
from .units import Units

CODE_DIM = 384  # all-MiniLM-L6-v2
# Rows decoded at once. The KV cache holds 30 layers x 2 x 192 values per token and row: 1,000 rows
# of 49 positions would take ~1.1 GB in bf16, 256 rows 276 MiB (128 MiB as the cache grows while rows
# finish: llama.KVCache), and 256 rows still fill the matmuls.
DECODE_ROWS = 256
# oneDNN keeps up to 1,024 compiled matmul kernels by default, one per shape. Decoding makes new
# shapes whenever rows finish, so that cache fills with kernels used a few times and holds ~300 MB
# of the generation peak (docs/PERFORMANCE.md). One decoding step uses 7 shapes; 32 is room enough
# and decodes as fast. oneDNN reads the limit once, at its first kernel, so it is set where a model
# is loaded for generation (ReviewGAN.from_pretrained), and never over a value the user set.
GENERATION_KERNEL_CACHE = 32


KERNEL_CACHE_VARS = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY")  # oneDNN reads both names
_capped_here = False


def limit_kernel_cache(capacity: int = GENERATION_KERNEL_CACHE) -> None:
    global _capped_here
    if not any(v in os.environ for v in KERNEL_CACHE_VARS):
        os.environ[KERNEL_CACHE_VARS[0]] = str(capacity)
        _capped_here = True


def kernel_cache_capped_here() -> bool:
    """Whether this process set the cap (child processes inherit it; bench's training one drops it)."""
    return _capped_here


# glibc gives a block of at least its mmap threshold pages of its own, handed back to the system when
# the block is freed; smaller blocks come from the heap, whose free holes stay resident. By default
# the threshold rises to the largest mmapped block freed so far: once the first decoding chunk has
# freed its cache (0.5-5 MB a layer as it grows), later cache buffers land in the heap, and the holes
# they leave held 413-423 MB at the generation peak (docs/PERFORMANCE.md). Fixed at 1 MiB, the cache's
# buffers and the logits come and go as pages of their own, while a step's activations (< 1 MB at
# 256 rows) stay in the heap. Fixing it also fixes glibc's other dynamic setting, the trim threshold,
# at its 128 KB default, which hands back and regrows the heap's top at every step (1,000 reviews
# ~10 % slower): it is set to 32 MiB (the dynamic scheme moves it up to 64 MiB).
HEAP_MMAP_THRESHOLD = 1 << 20
HEAP_TRIM_THRESHOLD = 32 << 20
HEAP_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")  # the user's own settings ...
HEAP_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")  # ... in either form
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def limit_heap_fragmentation() -> bool:
    """Fix glibc's mmap and trim thresholds for generation (above), unless the user set either
    through the environment. -> whether both were set (False where the C library is not glibc;
    under a preloaded allocator such as jemalloc, glibc's settings change nothing)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(v in os.environ for v in HEAP_VARS) or any(t in tunables for t in HEAP_TUNABLES):
        return False
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    done = [mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD), mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD)]
    return all(done)


def release_free_memory() -> None:
    """Hand the allocator's free pages back to the system (glibc's malloc_trim; elsewhere nothing).
    Between decoding chunks, the freed cache and logits of the last chunk lie in the heap in pieces
    that the next chunk's allocations do not fill exactly."""
    malloc_trim = _glibc("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


def _glibc(name: str):
    """glibc's function `name`, or None where the C library is another."""
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


class CodeMemory(nn.Module):
    """code (B, C) -> per-layer memory (k, v), each (B, kv_heads, slots, head_dim), and an input offset (B, 1, D).

    The memory keys carry no rotary position: every position attends to them alike. The offset is
    Optimus's second path (the code added to each input embedding); it starts at zero, so training
    begins from the base model plus a memory it learns to read.
    """

    def __init__(self, code_dim: int, shape: LlamaShape, slots: int):
        super().__init__()
        self.shape, self.slots = shape, slots
        self.kv = nn.Linear(code_dim, shape.n_layers * 2 * shape.n_kv_heads * slots * shape.head_dim)
        nn.init.normal_(self.kv.weight, std=0.02)
        nn.init.zeros_(self.kv.bias)
        self.offset = nn.Linear(code_dim, shape.dim)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, code: torch.Tensor, strength: float = 1.0):
        """strength (sample.code_strength): the memory's values and the offset times this; the keys,
        and so where attention goes, stay. Below 1 the decoder leans on what it learnt of reviews."""
        s, B = self.shape, code.size(0)
        kv = self.kv(code.float()).view(B, s.n_layers, 2, s.n_kv_heads, self.slots, s.head_dim)
        memory = [(kv[:, l, 0], kv[:, l, 1] * strength) for l in range(s.n_layers)]  # (x 1.0 is exact)
        return memory, self.offset(code.float())[:, None] * strength


class PretrainedAutoencoder(nn.Module):
    code_kind = "l2"  # the embedder's codes are unit length; the generator's are squashed to match

    def __init__(self, cfg: AEConfig, base: Base, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.cfg, self.tokenizer, self.base_info = cfg, base.tokenizer, base.info
        self.lm = Llama(base.shape, dtype)
        if not self.lm.embed_tokens.weight.is_meta:  # (built on the meta device, it only describes shapes)
            # assign: the module takes the loaded tensors themselves, no second copy of the base
            self.lm.load_state_dict(base.weights, assign=True)  # frozen
            self.lm.set_dtype(dtype)  # the base is cached in bf16: a float32 run casts it once
        self.lm.add_lora(cfg.lora_rank, cfg.lora_alpha, tuple(cfg.lora_targets.split(",")))
        self.memory = self.make_memory(base.shape)
        self.merged = False
        self._embedder = self._reading = None  # loaded on first use (encode_texts, read_texts)

    def make_memory(self, shape: LlamaShape) -> nn.Module:
        return CodeMemory(self.cfg.code_dim, shape, self.cfg.memory_slots)

    @property
    def memory_slots(self) -> int:
        """Key/value slots per layer the code becomes: the decoding cache keeps room for them."""
        return self.cfg.memory_slots

    read_dim = CODE_DIM  # what generation's screen reads a decoded review as: its sentence embedding

    def reading_codes(self, units: Units, device) -> torch.Tensor:
        """The sentence embeddings of units (N, 384), which the screen's Reader is fit on."""
        return self.encode_units(units, device)

    # -- what is trained, and so saved: the LoRA matrices and the code memory

    _trained = ("memory.",)  # name prefixes of the trained modules besides LoRA

    def _own(self, name: str) -> bool:
        return name.startswith(self._trained) or ".lora_" in name

    def state_dict(self, *args, **kwargs):
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if self._own(k)}

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        missing = sorted(set(self.state_dict()) - set(state))
        extra = sorted(set(state) - set(self.state_dict()))
        if strict and (missing or extra):
            raise RuntimeError(f"decoder weights: missing {missing[:3]}, unexpected {extra[:3]}")
        return super().load_state_dict(state, strict=False, assign=assign)

    def merge_lora(self) -> None:
        """For generation: fold LoRA into the base weights (same function, the base model's cost)."""
        self.lm.merge_lora()
        self.merged = True

    val_limit = 500  # validation reads the first 500 held-out units: a pass over all takes minutes on a CPU
    frozen_encoder = True  # codes do not change while training: computed once per set of units

    def param_groups(self) -> list[dict]:
        """The code memory (and a trained encoder) at ae.lr, LoRA at ae.lora_lr."""
        lora = [p for n, p in self.named_parameters() if ".lora_" in n]
        own = [p for n, p in self.named_parameters() if n.startswith(self._trained)]
        return [{"params": own}, {"params": lora, "lr": self.cfg.lora_lr}]

    # -- the stage-1 interface

    def codes(self, batch) -> torch.Tensor:
        return batch[3]

    def batch(self, units: Units, idx, device):
        """-> ids (B, T) ending in EOS, padded; lengths (B,); labels (B,); codes (B, C)."""
        codes = self.encode_units(units, device)[torch.as_tensor(np.asarray(idx), device=device)]
        return (*self.targets(units, idx, device), codes)

    def targets(self, units: Units, idx, device):
        """-> ids (B, T) ending in EOS, padded; lengths (B,); labels (B,): what every batch starts with."""
        seqs = [units.ids[i] for i in idx]
        lengths = torch.tensor([len(s) for s in seqs])
        ids = torch.full((len(seqs), int(lengths.max())), self.tokenizer.pad_id, dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, :len(s)] = torch.tensor(s)
        labels = torch.tensor([units.labels[i] for i in idx])
        return ids.to(device), lengths.to(device), labels.to(device)

    def loss(self, ids, lengths, labels, codes, noise_std: float = 0.0):
        """Teacher-forced cross-entropy of the review given its code (padding never counts). -> (ce, kl = 0,
        right tokens, real tokens), as Autoencoder.loss."""
        if noise_std > 0:  # ARAE-style: decode from a nearby code on the sphere, so nearby codes decode alike
            codes = F.normalize(codes + noise_std * torch.randn_like(codes), dim=-1)
        return self._teacher_forced(ids, ids, lengths, codes)

    def _teacher_forced(self, ids, fed, lengths, codes):
        """Cross-entropy of ids (B, T) where the decoder is fed `fed` (ids, or ids with words blanked)."""
        inputs = torch.cat([torch.full_like(ids[:, :1], self.tokenizer.start_id), fed[:, :-1]], dim=1)
        mask = torch.arange(ids.size(1), device=ids.device)[None, :] < lengths[:, None]
        memory, offset = self.memory(codes)
        h = self.lm.hidden(self.lm.embed(inputs) + offset, memory=memory)  # (B, T, D)
        ce, correct = output_loss(h.to(self.lm.dtype), _TiedHead(self.lm), ids, mask)
        return ce, ce.new_zeros(()), correct, mask.sum()

    @torch.no_grad()
    def encode_units(self, units: Units, device, batch_size: int = 0) -> torch.Tensor:
        """Codes of every unit (N, C), in order: computed once per set of texts and cached on disk."""
        if units.codes is None:
            units.codes = self.codes_of(units.texts)
        return units.codes.to(device)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], tokenizer=None, max_len: int | None = None, device="cpu") -> torch.Tensor:
        """Cleaned texts -> codes (N, 384): their sentence embeddings (the embedder reads up to 256 word pieces)."""
        return torch.as_tensor(self.embedder().encode(texts), dtype=torch.float32, device=device)

    def read_texts(self, texts: list[str], tokenizer=None, max_len: int | None = None, device="cpu") -> torch.Tensor:
        """Codes of decoded reviews for generation's screen: the embedder written out and run in the
        decoder's precision (embedder.MiniLM), cosine >= 0.9999 to encode_texts' codes."""
        return torch.as_tensor(self.minilm().encode(texts), dtype=torch.float32, device=device)

    def minilm(self):
        """The embedder written out (embedder.MiniLM), in the decoder's precision."""
        if self._reading is None or self._reading.dtype != self.lm.dtype:
            from .embedder import MiniLM
            self._reading = MiniLM(bf16=self.lm.dtype == torch.bfloat16)
        return self._reading

    def embedder(self):
        if self._embedder is None:
            from .embedder import SentenceEmbedder
            self._embedder = SentenceEmbedder()
        return self._embedder

    def codes_of(self, texts: list[str]) -> torch.Tensor:
        return cached_embeddings(texts, "codes-minilm", self.encode_texts)

    @torch.no_grad()
    def generate(self, codes: torch.Tensor, max_len: int, greedy=True, temperature=1.0, top_p=1.0,
                 generator: torch.Generator | None = None, labels=None, uniforms=None, steer=None, drop=None,
                 strength: float = 1.0):
        """Batched decoding from codes (B, C) with a KV cache; each row stops at its EOS and leaves the
        batch, and so does a row `drop` names. Same per-row options, `uniforms`, `steer` and `drop` as
        autoencoder.decode_loop (a row's text depends on its own random numbers only). `labels` is
        ignored: this decoder takes no sentiment. Rows are decoded DECODE_ROWS at a time (with
        `generator` instead of `uniforms`, chunk after chunk). strength: CodeMemory's.
        -> token lists without EOS, ended flags."""
        B = codes.size(0)
        if B <= DECODE_ROWS:
            return self._generate(codes, max_len, greedy, temperature, top_p, generator, uniforms, steer, drop,
                                  strength)
        rows, ended = [], []
        for s in range(0, B, DECODE_ROWS):
            part = slice(s, s + DECODE_ROWS)
            r, e = self._generate(codes[part], max_len, rows_of(greedy, part, B), rows_of(temperature, part, B),
                                  rows_of(top_p, part, B), generator, rows_of(uniforms, part, B),
                                  steer[part] if steer is not None else None, drop_rows(drop, part), strength)
            rows += r
            ended += e
            release_free_memory()
        return rows, ended

    def _generate(self, codes, max_len, greedy, temperature, top_p, generator, uniforms, steer=None, drop=None,
                  strength=1.0):
        lm, tok, B = self.lm, self.tokenizer, codes.size(0)
        gone = drop() if drop is not None else None
        if gone is not None and bool(gone.all()):  # a chunk cancelled whole before it starts is skipped
            return [[] for _ in range(B)], [False] * B
        memory, offset = self.memory(codes, strength)
        cache = lm.new_cache(B, self.memory_slots + max_len, self.memory_slots)
        cache.put_memory(memory)
        per_row = [(torch.as_tensor(x, device=codes.device).expand(B, 1) if torch.is_tensor(x) else x)
                   for x in (temperature, top_p)]
        greedy_rows = greedy.reshape(B) if torch.is_tensor(greedy) else torch.full((B,), bool(greedy), device=codes.device)
        banned = torch.tensor([i for i in tok.special_ids if i != tok.end_id], device=codes.device)
        active = torch.arange(B, device=codes.device)  # rows still writing, in cache order
        tokens = torch.full((B,), tok.start_id, dtype=torch.long, device=codes.device)
        out = torch.full((B, max_len), tok.end_id, dtype=torch.long, device=codes.device)
        ended = torch.zeros(B, dtype=torch.bool, device=codes.device)
        # The step's logits go into buffers allocated once, as the cache's keys do: a fresh (rows, V)
        # pair each step, of a new size whenever rows finish, fragments the heap (docs/PERFORMANCE.md).
        V = lm.shape.vocab_size
        low, full = (torch.empty(B, V, dtype=d, device=codes.device) for d in (lm.dtype, torch.float32))
        for t in range(max_len):
            gone = drop() if drop is not None else None
            if gone is not None and bool(gone[active].any()):  # cancelled rows leave as ended ones do
                keep = (~gone[active]).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                cache.keep(keep)
                active, tokens = active[keep], tokens[keep]
            h = lm.hidden(lm.embed(tokens[:, None]) + offset[active], start=t, cache=cache)
            b = active.numel()
            logits = full[:b].copy_(lm.logits(h[:, 0], out=low[:b]))  # (b, V), float32
            logits[:, banned] = -float("inf")
            if steer is not None:
                steer(logits, tokens, active)
            temp, p = (x[active] if torch.is_tensor(x) else x for x in per_row)
            u = uniforms[active, t:t + 1] if uniforms is not None else None
            tokens = next_tokens(logits, greedy_rows[active], temp, p, u, generator)
            out[active, t] = tokens
            done = tokens == tok.end_id
            if bool(done.any()):
                ended[active[done]] = True
                keep = (~done).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                cache.keep(keep)
                active, tokens = active[keep], tokens[keep]
        rows = []
        for r, e in zip(out.tolist(), ended.tolist()):
            rows.append(r[:r.index(tok.end_id)] if e else r)
        return rows, ended.tolist()


def cached_embeddings(texts: list[str], name: str, embed) -> torch.Tensor:
    """embed(texts) -> (N, C), computed once per list of texts and kept in the cache folder."""
    key = hashlib.sha1(json.dumps(texts).encode()).hexdigest()[:16]
    path = cache_root() / f"{name}-{key}.safetensors"
    if path.exists():
        return load_file(str(path))["codes"]
    codes = embed(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one per process: ranks under torchrun write alike
    save_file({"codes": codes.contiguous()}, str(tmp))
    tmp.replace(path)
    return codes


def next_tokens(logits, greedy, temperature, top_p, u=None, generator=None) -> torch.Tensor:
    """Each row's next token from its float32 logits (B, V): the most likely where greedy (B,), else
    drawn with its temperature and top_p (B, 1 or scalars) at its uniform u (B, 1; else drawn from
    `generator`): how `_generate` and stream.stream pick them.
    May overwrite logits."""
    if bool(greedy.all()):
        return logits.argmax(-1)
    best = logits.argmax(-1) if bool(greedy.any()) else None  # (sampling overwrites the logits)
    if bool(torch.as_tensor(top_p >= 1.0).all()):
        drawn = sample_softmax_(logits, temperature, generator, u)
    else:
        drawn = sample_nucleus(logits, temperature, top_p, generator, u)
    return drawn if best is None else torch.where(greedy, best, drawn)


def sample_softmax_(logits: torch.Tensor, temperature, generator=None, u=None) -> torch.Tensor:
    """One token per row from softmax(logits / temperature), by inverse CDF: what
    autoencoder.sample_top_p draws at top_p = 1 (tests compare them), in place and without normalising
    the probabilities: over SmolLM2's 49,152 tokens each pass costs as much as a layer of the model.
    Overwrites logits (B, V) with an unnormalised CDF."""
    if u is None:
        u = torch.rand(logits.size(0), 1, generator=generator, device=logits.device)
    logits.sub_(logits.amax(-1, keepdim=True)).div_(temperature).exp_()
    cdf = torch.cumsum(logits, -1, out=logits)
    idx = torch.searchsorted(cdf, u.clamp_min(1e-7) * cdf[:, -1:])
    return idx.squeeze(-1).clamp_(max=logits.size(-1) - 1)


class _TiedHead:
    """The LM's output layer for autoencoder.output_loss: its embedding matrix, no bias."""

    def __init__(self, lm: Llama):
        self.weight, self.bias, self.out_features = lm.embed_tokens.weight, None, lm.shape.vocab_size

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h.to(self.weight.dtype), self.weight)
