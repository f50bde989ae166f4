"""A Llama decoder (SmolLM2's architecture) in plain PyTorch: the pretrained decoder family's network.

    tokens -> embed -> n_layers x [x += attn(norm(x)); x += mlp(norm(x))] -> norm -> lm_head (tied to embed)

attn: grouped-query attention with rotary positions (Su et al. 2021); mlp: SwiGLU. It computes what
`transformers.LlamaForCausalLM` computes for the same weights (tests/test_llama.py compares the two).
With `LlamaShape.arch = "gemma3"` it is Gemma 3's variant, as `transformers.Gemma3ForCausalLM` computes
it (also compared): embeddings times sqrt(dim), RMS norms on the queries and keys, a norm after the
attention and after the MLP as well as before each, GELU (tanh) in place of SiLU in the MLP, and two
rotary bases: local layers (Gemma's sliding-window ones) use one, every `global_every`-th layer the
other. Gemma's norms scale by 1 + w: the base cache stores 1 + w, so RMSNorm is the same module. The
sliding window (512 positions) is longer than any sequence reviewgan decodes, so it never masks.
Added for reviewgan:

- **memory**: per-layer key/value pairs that every position attends to, before its own past, as in
  Optimus (Li et al. 2020): this is how a review's code enters every layer of the decoder;
- **LoRA** (Hu et al. 2021) on chosen projections: the base weights stay frozen, a low-rank update
  W + (alpha / r) B A is trained, and `merge_lora` folds it into W for generation;
- **a KV cache that drops finished rows**, so batched decoding stops paying for reviews that ended,
  and **a slot cache** for continuous batching, where each row is at its own position and a row that
  ends gives its slot to the next review (SlotCache; KVCache is its reference);
- **pre-packed weights** for generation (`Llama.pack`): each projection's weight held in oneDNN's
  blocked layout once, instead of oneDNN re-laying it out at every product (F.linear, the reference).

The residual stream is float32; the frozen weights and the matmuls run in `dtype`: bfloat16 on a CPU
with AVX512-BF16 or AMX (about twice float32's speed there), float32 on one without, where bf16 is
emulated at a fifth of float32's speed (precision.py picks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class LlamaShape:
    """The architecture's sizes (SmolLM2-135M's by default)."""
    vocab_size: int = 49152
    dim: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    hidden_dim: int = 1536
    rope_theta: float = 100000.0
    norm_eps: float = 1e-5
    arch: str = "llama"  # or "gemma3" (the module's docstring)
    head_size: int = 0  # 0: dim // n_heads (Gemma 3 sets its own)
    local_rope_theta: float = 0.0  # gemma3: the rotary base of the local layers ...
    global_every: int = 0  # ... and every global_every-th layer uses rope_theta

    @property
    def head_dim(self) -> int:
        return self.head_size or self.dim // self.n_heads

    @property
    def gemma(self) -> bool:
        return self.arch == "gemma3"

    def layer_theta(self, layer: int) -> float:
        """The rotary base of layer `layer`."""
        if self.gemma and (layer + 1) % self.global_every:
            return self.local_rope_theta
        return self.rope_theta

    @classmethod
    def from_hf(cls, c) -> LlamaShape:
        """From a transformers LlamaConfig or Gemma3TextConfig."""
        rope = getattr(c, "rope_parameters", None) or {}
        sizes = (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
                 c.intermediate_size)
        if c.model_type != "gemma3_text":
            theta = rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))
            return cls(*sizes, float(theta), float(c.rms_norm_eps))
        every = c.layer_types.index("full_attention") + 1
        wanted = ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(c.num_hidden_layers)]
        if list(c.layer_types) != wanted or c.query_pre_attn_scalar != c.head_dim or any(
                r.get("rope_type", "default") != "default" for r in rope.values()) or c.final_logit_softcapping:
            raise ValueError("a Gemma 3 variant this decoder does not implement (layer pattern, query scale, "
                             "rotary scaling or logit soft-capping)")
        return cls(*sizes, float(rope["full_attention"]["rope_theta"]), float(c.rms_norm_eps), "gemma3", c.head_dim,
                   float(rope["sliding_attention"]["rope_theta"]), every)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()


# The row count oneDNN is told to expect when it lays a weight out (any count then works): the stream's
# batches run from a few rows to 256.
PACK_ROWS = 64


def can_pack(dtype: torch.dtype, device: torch.device | str = "cpu") -> bool:
    """Whether this PyTorch can hold a weight pre-packed for oneDNN's products in `dtype` on `device`."""
    return (torch.device(device).type == "cpu" and dtype in (torch.bfloat16, torch.float32)
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


class Linear(nn.Module):
    """A frozen bias-free projection, optionally with a trainable LoRA update (B starts at zero, so
    training starts from the base model exactly)."""

    def __init__(self, d_in: int, d_out: int, dtype: torch.dtype):
        super().__init__()
        # empty, not zeros: the base's weights replace it (untouched pages cost no memory)
        self.weight = nn.Parameter(torch.empty(d_out, d_in, dtype=dtype), requires_grad=False)
        self.lora_a = self.lora_b = None
        self.scale = 0.0
        self.packed: torch.Tensor | None = None  # the weight in oneDNN's layout (pack), or None

    @torch.no_grad()
    def pack(self) -> None:
        """Generation only: hold the weight in oneDNN's blocked layout, laid out once here. F.linear
        lays out a bf16 weight again at every product: at the 16-80 rows of a decoding step that was
        ~30 % of a projection's time (576 -> 1536 at 16 rows: 160 us against 90 us packed, the same
        numbers; 2-core AMD EPYC). The packed copy replaces the weight, so memory does not grow."""
        if self.lora_a is not None:
            raise ValueError("merge LoRA before packing")
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), PACK_ROWS)
        self.weight.data = self.weight.data.new_empty(0)

    @torch.no_grad()
    def unpack(self) -> None:
        if self.packed is not None:
            self.weight.data = self.packed.to_dense()
            self.packed = None

    def _apply(self, fn, recurse=True):
        """.to(dtype or device) of a packed projection: unpacked, converted, and packed again where it can be."""
        if self.packed is None:
            return super()._apply(fn, recurse)
        self.unpack()
        super()._apply(fn, recurse)
        if can_pack(self.weight.dtype, self.weight.device):
            self.pack()
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.packed is not None:  # a packed model saves the weight it holds
            destination[prefix + "weight"] = self.packed.to_dense()

    def add_lora(self, rank: int, alpha: float) -> None:
        d_out, d_in = self.weight.shape
        self.lora_a = nn.Parameter(torch.randn(rank, d_in) / math.sqrt(d_in))  # (r, in)
        self.lora_b = nn.Parameter(torch.zeros(d_out, rank))  # (out, r)
        self.scale = alpha / rank

    @torch.no_grad()
    def merge_lora(self) -> None:
        """W <- W + scale B A, then drop A and B: the same function at the base projection's cost."""
        if self.lora_a is not None:
            self.weight += (self.scale * self.lora_b @ self.lora_a).to(self.weight.dtype)
            self.lora_a = self.lora_b = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:  # generation (pack); F.linear below is the reference
            return torch.ops.mkldnn._linear_pointwise(x.to(self.packed.dtype), self.packed, None, "none", [], "")
        x = x.to(self.weight.dtype)
        y = F.linear(x, self.weight)
        if self.lora_a is not None:
            y = y + F.linear(F.linear(x, self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype)) * self.scale
        return y


def rotary(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, head_dim) for integer positions (T,), in the half-split layout Llama checkpoints use."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, heads, T, hd); rotate each (first half, second half) pair by its position's angle
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class KVCache:
    """Keys and values of every layer for a batch being decoded: (B, kv_heads, room, hd) each, filled
    up to `length`. Memory slots, when given, are its first entries.

    The buffers start with room for `GROW` positions past the memory and grow by `GROW` positions at a
    time, up to `capacity`, holding only the rows still in the batch. Rows leave as their reviews end,
    so the cache holds about (rows still writing) x (positions so far), not every row at full length:
    for 256 reviews of the bundled model, 128 MiB at its largest against 276 MiB for all rows at the
    whole budget (docs/PERFORMANCE.md); rows that all run to the budget still take the whole 276.
    Growth replaces one layer's buffers at a time, so it never holds two whole caches; it copies the
    cache a few times per batch, which costs little beside the matmuls."""

    GROW = 8

    def __init__(self, n_layers: int, batch: int, kv_heads: int, capacity: int, head_dim: int, dtype, device,
                 memory_slots: int = 0):
        self.capacity = capacity
        shape = (batch, kv_heads, min(capacity, memory_slots + self.GROW), head_dim)
        self.store = [torch.empty(shape, dtype=dtype, device=device) for _ in range(2 * n_layers)]
        self.k, self.v = self.store[:n_layers], self.store[n_layers:]  # views of the first rows of store
        self.length = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's k, v (B, kv_heads, t, hd) after the cached ones; -> all keys, values so far."""
        end = self.length + k.size(2)
        if end > self.store[layer].size(2):
            self._grow(layer, end)
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def _grow(self, layer: int, end: int) -> None:
        """Replace this layer's buffers by ones with room for `end` positions and GROW more (at most
        `capacity`), holding only the rows still in the batch."""
        room = min(self.capacity, end + self.GROW)
        if end > room:
            raise ValueError(f"the cache holds {self.capacity} positions; {end} asked for")
        for views, i in ((self.k, layer), (self.v, layer + len(self.k))):
            old = views[layer]
            new = old.new_empty(old.size(0), old.size(1), room, old.size(3))
            new[:, :, :self.length] = old[:, :, :self.length]
            self.store[i] = views[layer] = new

    def put_memory(self, memory) -> None:
        """Cache the memory slots (one (k, v) per layer, each (B, kv_heads, M, hd)) before any position."""
        for i, (k, v) in enumerate(memory):
            self.append(i, k.to(self.k[i].dtype), v.to(self.v[i].dtype))
        self.advance(memory[0][0].size(2))

    def advance(self, t: int) -> None:
        self.length += t

    def keep(self, rows: torch.Tensor) -> None:
        """Drop every row not in `rows` (the rows still decoding), so finished ones cost nothing. The
        kept rows move to the front of the buffers they are in: a fresh (rows, ...) tensor per layer
        at every shrink, each of another size, fragments the allocator's heap (peak RSS of 2,000
        reviews 2,573 against 1,794 MB: docs/PERFORMANCE.md)."""
        n = rows.numel()
        for buf, x in zip(self.store, self.k + self.v):
            buf[:n, :, :self.length] = x[rows, :, :self.length]  # the gather copies before any row is overwritten
        kept = [buf[:n] for buf in self.store]
        self.k, self.v = kept[:len(self.k)], kept[len(self.k):]


class SlotCache:
    """The cache of continuous batching: `rows` slots, each holding one review being decoded at its own
    position, (rows, kv_heads, capacity, hd) per layer, allocated whole once. A slot's entries are its
    memory, then its positions so far (`lengths`: how many). A review that ends frees its slot, and the
    next one waiting is written into it at the next step (`start`), so the batch stays full while
    reviews of different lengths come and go; KVCache (one position for the whole batch) is the
    reference that tests compare it with.

    Positions past a slot's length hold whatever an earlier review left there (zeros at first, always
    finite): the attention mask (`mask`) keeps every row from them."""

    def __init__(self, n_layers: int, rows: int, kv_heads: int, capacity: int, head_dim: int, dtype, device):
        self.capacity = capacity
        shape = (rows, kv_heads, capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.used = 0  # slots [0, used) are computed at each step; free ones among them are masked
        self.mask = None

    def start(self, slots: torch.Tensor, memory) -> None:
        """New reviews in `slots`: their memory (one (k, v) per layer, each (n, kv_heads, M, hd)) first."""
        for i, (k, v) in enumerate(memory):
            M = k.size(2)
            self.k[i][slots, :, :M] = k.to(self.k[i].dtype)
            self.v[i][slots, :, :M] = v.to(self.v[i].dtype)
        self.lengths[slots] = memory[0][0].size(2)

    def prepare(self) -> None:
        """Before a step: the mask over every position of the used slots, open on each row's past and
        its new position. Attention reads whole slots, masked: a slot cut to the longest review so far
        is not contiguous, and the matmul then copied every layer's keys and values at every step."""
        at = self.lengths[:self.used]
        if bool((at >= self.capacity).any()):
            raise ValueError(f"the cache holds {self.capacity} positions; {int(at.max()) + 1} asked for")
        pos = torch.arange(self.capacity, device=at.device)
        self.mask = torch.zeros(self.used, self.capacity, device=at.device).masked_fill_(
            pos[None, :] > at[:, None], float("-inf"))[:, None, :, None]  # (used, 1, capacity, 1)
        self.rows = torch.arange(self.used, device=at.device)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's k, v (used, kv_heads, 1, hd), each row at its own length; -> keys, values to read."""
        at = self.lengths[:self.used]
        self.k[layer][self.rows, :, at] = k[:, :, 0]
        self.v[layer][self.rows, :, at] = v[:, :, 0]
        return self.k[layer][:self.used], self.v[layer][:self.used]

    def advance(self, live: torch.Tensor) -> None:
        """After a step: the rows that took one (live, (used,) bools) hold one position more."""
        self.lengths[:self.used] += live.long()

    def keep(self, slots: torch.Tensor) -> None:
        """Move the reviews in `slots` to the front and compute only them from now on: when no review
        waits for a free slot, the batch shrinks as reviews end, as KVCache's does."""
        n, end = slots.numel(), int(self.lengths[slots].max()) if slots.numel() else 0
        for buf in self.k + self.v:
            buf[:n, :, :end] = buf[slots, :, :end]  # the gather copies before any slot is overwritten
        self.lengths[:n] = self.lengths[slots].clone()
        self.used = n


class Attention(nn.Module):
    def __init__(self, s: LlamaShape, dtype):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = s.n_heads, s.n_kv_heads, s.head_dim
        self.q_proj = Linear(s.dim, s.n_heads * s.head_dim, dtype)
        self.k_proj = Linear(s.dim, s.n_kv_heads * s.head_dim, dtype)
        self.v_proj = Linear(s.dim, s.n_kv_heads * s.head_dim, dtype)
        self.o_proj = Linear(s.n_heads * s.head_dim, s.dim, dtype)
        if s.gemma:
            self.q_norm, self.k_norm = RMSNorm(s.head_dim, s.norm_eps), RMSNorm(s.head_dim, s.norm_eps)
        self.gemma = s.gemma

    def forward(self, x, cos, sin, memory=None, cache: KVCache | None = None, layer: int = 0):
        """x (B, T, D) normalised; memory: (k, v) each (B, kv_heads, M, hd) or None.

        Without a cache (training, scoring), position t sees the memory and positions <= t. With a
        cache (decoding), the new positions see everything cached (the memory was cached first) and
        each other causally.
        """
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, KH, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        if self.gemma:
            q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        past = 0
        if isinstance(cache, SlotCache):
            k, v = cache.append(layer, k, v)
        elif cache is not None:
            past = cache.length
            k, v = cache.append(layer, k, v)
        elif memory is not None:
            past = memory[0].size(2)
            k, v = torch.cat([memory[0].to(k.dtype), k], 2), torch.cat([memory[1].to(v.dtype), v], 2)
        if isinstance(cache, SlotCache):  # continuous batching: each row sees its own past only
            y = decode_attention(q, k, v, cache.mask)
        elif T == 1:  # decoding: one new position sees everything before it
            y = decode_attention(q, k, v)
        else:  # (T, past + T): all of the past, then causal
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_kv != self.n_heads)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of one new position (q: (B, H, 1, hd)) over all cached keys and values (B, KH, t, hd),
    as F.scaled_dot_product_attention computes it (tests compare the two). Each group of H / KH query
    heads shares a key/value head, so the scores are one batched matmul per group without copying the
    keys H / KH times; on a CPU this is several times faster than SDPA's kernel for a single query.
    The scores are computed as keys x queries, (t, hd) x (hd, H / KH): the cached keys are read in
    place, where queries x keys^T made the matmul copy every layer's transposed keys at every step
    (~1 ms a layer for 256 rows). mask: (B, 1, t, 1), added to the scores (-inf where a row must not
    look: SlotCache)."""
    B, H, _, hd = q.shape
    KH = k.size(1)
    qg = q.reshape(B, KH, H // KH, hd)  # query head h reads key/value head h // (H / KH)
    scores = torch.matmul(k, qg.transpose(-1, -2)).float() * hd ** -0.5  # (B, KH, t, H / KH)
    if mask is not None:
        scores = scores + mask
    p = scores.softmax(-2).transpose(-1, -2).to(v.dtype)  # (B, KH, H / KH, t), laid out by the cast
    return torch.matmul(p, v).reshape(B, H, 1, hd)


class MLP(nn.Module):
    def __init__(self, s: LlamaShape, dtype):
        super().__init__()
        self.gate_proj = Linear(s.dim, s.hidden_dim, dtype)
        self.up_proj = Linear(s.dim, s.hidden_dim, dtype)
        self.down_proj = Linear(s.hidden_dim, s.dim, dtype)
        self.act = partial(F.gelu, approximate="tanh") if s.gemma else F.silu

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU (GeGLU in Gemma)


class Block(nn.Module):
    def __init__(self, s: LlamaShape, dtype):
        super().__init__()
        self.input_layernorm = RMSNorm(s.dim, s.norm_eps)
        self.self_attn = Attention(s, dtype)
        self.post_attention_layernorm = RMSNorm(s.dim, s.norm_eps)
        self.mlp = MLP(s, dtype)

    def forward(self, x, cos, sin, memory=None, cache=None, layer=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, memory, cache, layer).float()
        return x + self.mlp(self.post_attention_layernorm(x)).float()


class GemmaBlock(nn.Module):
    """Gemma 3's layer: each sublayer's output is normalised too before it joins the residual stream.
    (Its post_attention_layernorm is that output norm; Llama's of the same name is the MLP's input norm.)"""

    def __init__(self, s: LlamaShape, dtype):
        super().__init__()
        self.input_layernorm = RMSNorm(s.dim, s.norm_eps)
        self.self_attn = Attention(s, dtype)
        self.post_attention_layernorm = RMSNorm(s.dim, s.norm_eps)
        self.pre_feedforward_layernorm = RMSNorm(s.dim, s.norm_eps)
        self.mlp = MLP(s, dtype)
        self.post_feedforward_layernorm = RMSNorm(s.dim, s.norm_eps)

    def forward(self, x, cos, sin, memory=None, cache=None, layer=0):
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, memory, cache, layer))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Llama(nn.Module):
    """Parameter names follow transformers' LlamaForCausalLM (without its `model.` prefix), so its
    state dict loads as it is."""

    def __init__(self, shape: LlamaShape, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.shape, self.dtype = shape, dtype
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.dim, dtype=dtype, _weight=torch.empty(shape.vocab_size, shape.dim, dtype=dtype))
        self.embed_tokens.weight.requires_grad_(False)
        block = GemmaBlock if shape.gemma else Block
        self.layers = nn.ModuleList([block(shape, dtype) for _ in range(shape.n_layers)])
        self.norm = RMSNorm(shape.dim, shape.norm_eps)

    def set_dtype(self, dtype: torch.dtype) -> None:
        """Run in `dtype` (precision.compute_dtype): the frozen weights are cast to it; LoRA, norms and
        the residual stream stay float32."""
        packed = self.packed
        self.unpack()
        self.embed_tokens.weight.data = self.embed_tokens.weight.data.to(dtype)
        for m in self.modules():
            if isinstance(m, Linear):
                m.weight.data = m.weight.data.to(dtype)
        self.dtype = dtype
        if packed:
            self.pack()

    @property
    def packed(self) -> bool:
        return any(m.packed is not None for m in self.modules() if isinstance(m, Linear))

    def pack(self) -> None:
        """Generation only (after merge_lora): every projection's weight pre-packed (Linear.pack); the
        embedding, which is also the output layer, stays as it is."""
        for m in self.modules():
            if isinstance(m, Linear):
                m.pack()
        # The base's weights share the buffer its safetensors file was loaded into, which lives while any
        # of them does: copying out the few left (embedding, norms) lets it go, or the packed copies
        # would come on top of it (+170 MB of generation's peak RSS).
        with torch.no_grad():
            for w in self.parameters():
                if w.numel():
                    w.data = w.data.clone()

    def unpack(self) -> None:
        for m in self.modules():
            if isinstance(m, Linear):
                m.unpack()

    def add_lora(self, rank: int, alpha: float, targets: tuple[str, ...]) -> None:
        """LoRA on the named projections (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)."""
        for name, m in self.named_modules():
            if isinstance(m, Linear) and name.rsplit(".", 1)[-1] in targets:
                m.add_lora(rank, alpha)

    def merge_lora(self) -> None:
        for m in self.modules():
            if isinstance(m, Linear):
                m.merge_lora()

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(tokens).float()  # (B, T, D)
        return x * math.sqrt(self.shape.dim) if self.shape.gemma else x

    def hidden(self, x: torch.Tensor, start: int | torch.Tensor = 0, memory=None, cache=None) -> torch.Tensor:
        """Input embeddings x (B, T, D) at positions start.. -> final normalised states (B, T, D), float32.

        memory: one (k, v) pair per layer, each (B, kv_heads, M, hd), or None. With a SlotCache, x is one
        position per row (B, 1, D) and start each row's own position (B,); the caller advances the cache.
        """
        s = self.shape
        angles = {}  # rotary base -> cos, sin (Gemma's layers use two bases)
        for theta in {s.layer_theta(i) for i in range(s.n_layers)}:
            if torch.is_tensor(start):  # one position per row: (B, 1, 1, hd) angles, broadcast over heads
                angles[theta] = tuple(a[:, None, None] for a in rotary(start, s.head_dim, theta))
            else:
                angles[theta] = rotary(torch.arange(start, start + x.size(1), device=x.device), s.head_dim, theta)
        for i, block in enumerate(self.layers):
            x = block(x, *angles[s.layer_theta(i)], None if memory is None else memory[i], cache, i)
        if isinstance(cache, KVCache):
            cache.advance(x.size(1))
        return self.norm(x)

    def logits(self, h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Final states (..., D) -> next-token logits (..., V), through the tied output layer; into
        `out` (rows, V) of the model's dtype when given (h then (rows, D))."""
        if out is not None:
            return torch.mm(h.to(self.dtype), self.embed_tokens.weight.t(), out=out)
        return F.linear(h.to(self.dtype), self.embed_tokens.weight)

    def new_slot_cache(self, rows: int, capacity: int) -> SlotCache:
        """A continuous-batching cache of `rows` slots, `capacity` positions each (memory included)."""
        s = self.shape
        return SlotCache(s.n_layers, rows, s.n_kv_heads, capacity, s.head_dim, self.dtype, self.embed_tokens.weight.device)

    def new_cache(self, batch: int, capacity: int, memory_slots: int = 0) -> KVCache:
        """A cache for up to `capacity` positions (memory slots included), grown as it fills."""
        s = self.shape
        return KVCache(s.n_layers, batch, s.n_kv_heads, capacity, s.head_dim, self.dtype,
                       self.embed_tokens.weight.device, memory_slots)
