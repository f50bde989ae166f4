"""Stage 1, pretrained-decoder family with a code that carries the review (ae.code = "tokens" or "latents").

    encoder: text -> all-MiniLM-L6-v2 (frozen) -> its last layer's token states (T, 384)
             -> tokens:  TokenSlots (trained): the first K tokens, each projected to D dims and normalised
                         -> code (K x D; the slots past the text are zero)
             -> latents: LatentSlots (trained): K learnt queries read all tokens by cross-attention (a
                         small Perceiver, as LD4LG), each projected to D dims and normalised -> code (K x D)
    decoder: code -> SlotMemory: slot i becomes one key/value memory slot per layer
             -> SmolLM2-135M (frozen, LoRA) -> text, ending at its EOS

The pooled code (pretrained.py) is a frozen 384-d sentence embedding: a bag of meaning, from which
the decoder writes a new sentence around a few of the source's words. Here the code keeps one slot
per word piece, in order, so the decoder can give back what the review said. Two things make the
decoder read the slots rather than write generic text: no pooled slot beside them (with one, it
learns to paraphrase the pooled meaning and never uses the slots), and word dropout on its inputs
(ae.word_dropout: half of the words it is fed are blanked, so the next word has to come from the
code). docs/RESULTS.md, "A code that carries the review", has the measurements behind both.

A token-slot code is as long as its text, so a generator has to write a sequence with an end; a latent
code has K slots whatever the text, each a summary of all of it, so a generator writes K vectors of a
fixed shape (K x D numbers, as a pooled code's 384 are a fixed shape).

The sentiment is in the code as the review's own words are. Generation's screen still reads a
decoded review by its sentence embedding (read_texts, the Reader over 384 numbers), as the pooled
family does.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import AEConfig
from .llama import LlamaShape
from .pretrained import CODE_DIM, PretrainedAutoencoder, cached_embeddings
from .units import Units


class TokenSlots(nn.Module):
    """Token states (B, T, 384) and their mask (B, T) -> K slots (B, K, D): slot i is token i's state,
    projected down and normalised to zero mean and unit variance (a code of fixed scale for the GAN);
    slots past the text are zero, and tokens past the K-th are dropped."""

    def __init__(self, k: int, d: int):
        super().__init__()
        self.k, self.d = k, d
        self.ln = nn.LayerNorm(CODE_DIM)
        self.down = nn.Linear(CODE_DIM, d)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x, mask = states[:, :self.k], mask[:, :self.k]
        h = F.layer_norm(self.down(self.ln(x)).float(), (self.d,)) * mask[..., None]
        return F.pad(h, (0, 0, 0, self.k - h.size(1)))


class CrossBlock(nn.Module):
    """Pre-norm cross-attention block: the latents read the token states, then an MLP on each latent."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_q, self.ln_mlp = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.kv, self.o = nn.Linear(width, width), nn.Linear(width, 2 * width), nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, h: torch.Tensor, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """h: latents (B, K, W); x: token states (B, T, W); bias: added to the attention logits (B, K, T),
        -inf at padding."""
        (B, K, W), T, H = h.shape, x.size(1), self.heads
        q = self.q(self.ln_q(h)).view(B, K, H, W // H).transpose(1, 2)
        k, v = self.kv(x).view(B, T, 2, H, W // H).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None].to(q.dtype))  # (B, H, K, W/H)
        h = h + self.o(att.transpose(1, 2).reshape(B, K, W))
        return h + self.fc2(F.gelu(self.fc1(self.ln_mlp(h))))


class LatentSlots(nn.Module):
    """Token states (B, T, 384) and their mask (B, T) -> K latent slots (B, K, D): K learnt queries read
    every token through `layers` cross-attention blocks, then each is projected down, standardised per
    dimension over texts, and normalised to zero mean and unit variance per slot (a code of fixed scale
    for the GAN, as TokenSlots).

    Slot i starts out reading its own stretch of the text: its attention logits get a Gaussian bias
    centred at (i + 1/2) / K of the text's length, with a learnt width (at first one slot's share). So
    the latents begin as the text's token states pooled in K windows, in order, and training moves
    from there. (Without the bias every query starts by reading the whole text alike, a mean-pooled
    bag: at 400 steps the decoder's loss was 3.71 with a text's own code and 3.96 with another's.)"""

    def __init__(self, k: int, d: int, layers: int = 2, heads: int = 6):
        super().__init__()
        self.k, self.d = k, d
        self.ln = nn.LayerNorm(CODE_DIM)
        self.queries = nn.Parameter(0.02 * torch.randn(k, CODE_DIM))
        self.log_width = nn.Parameter(torch.zeros(k))  # each window's sd, in units of 1/K of the text
        self.blocks = nn.ModuleList(CrossBlock(CODE_DIM, heads) for _ in range(layers))
        self.ln_out = nn.LayerNorm(CODE_DIM)
        self.down = nn.Linear(CODE_DIM, d)
        # Every dimension standardised over texts (batch statistics while training, their running means
        # after): MiniLM's states share a large common part, and without this the codes of any two texts
        # had cosine 0.96, so the text's own part was no larger than the code noise (ae.code_noise, per
        # dimension) and the decoder learnt to read it slowly.
        self.standardise = nn.BatchNorm1d(k * d, affine=False)

    def window_bias(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) mask -> (B, K, T) attention bias: -z^2 / 2, z the token's distance from slot i's centre
        in window widths, over the text's real tokens alone (so padding changes nothing); -inf at padding."""
        n = mask.sum(1, keepdim=True).float()  # (B, 1) real tokens
        where = (torch.arange(mask.size(1), device=mask.device)[None].float() + 0.5) / n  # (B, T) in (0, 1]
        centre = (torch.arange(self.k, device=mask.device).float() + 0.5) / self.k
        z = (where[:, None, :] - centre[None, :, None]) * self.k / self.log_width.exp()[None, :, None]
        return (-0.5 * z.pow(2)).masked_fill(~mask[:, None, :], float("-inf"))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x, bias = self.ln(states), self.window_bias(mask)
        h = self.queries.expand(x.size(0), -1, -1)
        for block in self.blocks:
            h = block(h, x, bias)
        z, bn = self.down(self.ln_out(h)).float().flatten(1), self.standardise
        z = F.batch_norm(z, bn.running_mean, bn.running_var, training=self.training and len(z) > 1,
                         momentum=bn.momentum, eps=bn.eps)  # a batch of one has no spread: running statistics
        return F.layer_norm(z.view(-1, self.k, self.d), (self.d,))


class SlotMemory(nn.Module):
    """code (B, K*D) -> per-layer memory (k, v), each (B, kv_heads, K, head_dim), and a zero input offset.

    Each slot gets a learnt position vector before one shared projection to every layer's keys and
    values. The projection starts at zero: training begins from the base model, reading memory that
    says nothing yet. The memory keys carry no rotary position; the slots' order is in their vectors.
    """

    def __init__(self, k: int, d: int, shape: LlamaShape):
        super().__init__()
        self.k, self.d, self.shape = k, d, shape
        self.slot = nn.Parameter(torch.zeros(k, d))
        self.kv = nn.Linear(d, shape.n_layers * 2 * shape.n_kv_heads * shape.head_dim)
        nn.init.zeros_(self.kv.weight)
        nn.init.zeros_(self.kv.bias)

    def forward(self, code: torch.Tensor, strength: float = 1.0):
        s, B = self.shape, code.size(0)
        slots = code.float().view(B, self.k, self.d) + self.slot
        kv = self.kv(slots).view(B, self.k, s.n_layers, 2, s.n_kv_heads, s.head_dim)
        kv = kv.permute(2, 3, 0, 4, 1, 5)  # (layers, k/v, B, kv_heads, K, head_dim)
        memory = [(kv[l, 0], kv[l, 1] * strength) for l in range(s.n_layers)]  # strength: CodeMemory's
        return memory, code.new_zeros(B, 1, s.dim, dtype=torch.float32)


class SlotAutoencoder(PretrainedAutoencoder):
    """The pretrained-decoder autoencoder with a token-slot code: the stage-1 interface of
    PretrainedAutoencoder, but the encoder is trained (TokenSlots), so codes are computed per batch
    from the embedder's token states and not cached."""

    frozen_encoder = False
    _trained = ("memory.", "slots.")

    read_tokens: int | None = None  # how many of the embedder's token states the encoder reads (None: all)

    def __init__(self, cfg: AEConfig, base, dtype: torch.dtype = torch.bfloat16):
        super().__init__(cfg, base, dtype)
        self.slots = TokenSlots(cfg.code_slots, cfg.slot_dim)
        self.read_tokens = cfg.code_slots

    @property
    def code_kind(self) -> str:
        """The generator writes each slot as the encoder does, normalised, times a presence gate
        (autoencoder.squash): it learns directions and which slots the text fills, not scales."""
        return f"slots{self.cfg.slot_dim}"

    def make_memory(self, shape: LlamaShape) -> nn.Module:
        return SlotMemory(self.cfg.code_slots, self.cfg.slot_dim, shape)

    @property
    def memory_slots(self) -> int:
        return self.cfg.code_slots

    def codes(self, batch) -> torch.Tensor:
        return self.slots(*batch[3]).flatten(1)

    def batch(self, units: Units, idx, device):
        """-> ids (B, T) ending in EOS, padded; lengths (B,); labels (B,); the embedder's token states
        and their mask (the encoder's input: ae.codes(batch) makes the codes)."""
        states, mask = self.minilm().states([units.texts[i] for i in idx], self.read_tokens)
        return (*self.targets(units, idx, device), (states.to(device), mask.to(device)))

    def loss(self, ids, lengths, labels, states, noise_std: float = 0.0):
        """Teacher-forced cross-entropy of the review given its code, with ae.word_dropout on the
        decoder's inputs while training. -> (ce, kl = 0, right tokens, real tokens)."""
        codes = self.slots(*states).flatten(1)
        if noise_std > 0:
            codes = codes + noise_std * torch.randn_like(codes)
        fed = ids
        if self.training and self.cfg.word_dropout > 0:
            blank = torch.rand(ids.shape, device=ids.device) < self.cfg.word_dropout
            fed = ids.masked_fill(blank, self.tokenizer.pad_id)
        return self._teacher_forced(ids, fed, lengths, codes)

    @torch.no_grad()
    def encode_units(self, units: Units, device, batch_size: int = 256) -> torch.Tensor:
        """Codes of every unit (N, K*D), in order (the GAN's real data). Not cached: they change as
        the encoder trains."""
        return self.encode_texts(units.texts, device=device, batch_size=batch_size)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], tokenizer=None, max_len: int | None = None, device="cpu",
                     batch_size: int = 256) -> torch.Tensor:
        """Cleaned texts -> codes (N, K*D)."""
        out = []
        for s in range(0, len(texts), batch_size):
            states, mask = self.minilm().states(texts[s:s + batch_size], self.read_tokens)
            out.append(self.slots(states.to(device), mask.to(device)).flatten(1).float())
        return torch.cat(out) if out else torch.empty(0, self.cfg.code_dim, device=device)

    def reading_codes(self, units: Units, device) -> torch.Tensor:
        """The Reader reads sentence embeddings, as generation's screen computes them (cached: they do
        not change as the encoder trains)."""
        name = f"reading-minilm-{str(self.lm.dtype).split('.')[-1]}"
        return cached_embeddings(units.texts, name, self.read_texts).to(device)


class LatentAutoencoder(SlotAutoencoder):
    """The slot autoencoder with a latent code (ae.code=latents): K slots read from all of the text by
    LatentSlots, every slot always present."""

    def __init__(self, cfg: AEConfig, base, dtype: torch.dtype = torch.bfloat16):
        super().__init__(cfg, base, dtype)
        self.slots = LatentSlots(cfg.code_slots, cfg.slot_dim, cfg.latent_layers)
        self.read_tokens = None

    @property
    def code_kind(self) -> str:
        """The generator writes each slot as the encoder does, normalised (autoencoder.squash), no gate."""
        return f"latent{self.cfg.slot_dim}"
