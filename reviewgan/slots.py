"""Stage 1, pretrained-decoder family with a code that carries the review (ae.code = "tokens").

    encoder: text -> all-MiniLM-L6-v2 (frozen) -> its last layer's token states (T, 384)
             -> TokenSlots (trained): the first K tokens, each projected to D dims and normalised
             -> code (K x D; the slots past the text are zero)
    decoder: code -> SlotMemory: slot i becomes one key/value memory slot per layer
             -> SmolLM2-135M (frozen, LoRA) -> text, ending at its EOS

The pooled code (pretrained.py) is a frozen 384-d sentence embedding: a bag of meaning, from which
the decoder writes a new sentence around a few of the source's words. Here the code keeps one slot
per word piece, in order, so the decoder can give back what the review said. Two things make the
decoder read the slots rather than write generic text: no pooled slot beside them (with one, it
learns to paraphrase the pooled meaning and never uses the slots), and word dropout on its inputs
(ae.word_dropout: half of the words it is fed are blanked, so the next word has to come from the
code). docs/RESULTS.md, "A code that carries the review", has the measurements behind both.

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

    def __init__(self, cfg: AEConfig, base, dtype: torch.dtype = torch.bfloat16):
        super().__init__(cfg, base, dtype)
        self.slots = TokenSlots(cfg.code_slots, cfg.slot_dim)

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
        states, mask = self.minilm().states([units.texts[i] for i in idx], self.cfg.code_slots)
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
            states, mask = self.minilm().states(texts[s:s + batch_size], self.cfg.code_slots)
            out.append(self.slots(states.to(device), mask.to(device)).flatten(1).float())
        return torch.cat(out) if out else torch.empty(0, self.cfg.code_dim, device=device)

    def reading_codes(self, units: Units, device) -> torch.Tensor:
        """The Reader reads sentence embeddings, as generation's screen computes them (cached: they do
        not change as the encoder trains)."""
        name = f"reading-minilm-{str(self.lm.dtype).split('.')[-1]}"
        return cached_embeddings(units.texts, name, self.read_texts).to(device)
