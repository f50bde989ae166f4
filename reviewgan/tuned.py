"""Stage 1, pretrained-decoder family with an encoder tuned with the decoder (ae.code = "tuned").

    encoder: text -> all-MiniLM-L6-v2 (frozen) + LoRA on its 36 linear layers (trained)
             -> mean pooled over the real tokens, unit length -> code (384)
    decoder: as pretrained.py: CodeMemory -> SmolLM2-135M (frozen, LoRA) -> text

The pooled code (pretrained.py) is MiniLM's frozen sentence embedding, made for telling sentences
apart by topic and meaning: who did what, and the exact claim, are not in it, so the decoder invents
them (its reconstructions read as incoherently as the GAN's reviews). Optimus (Li et al. 2020)
trains its encoder with its decoder; here LoRA lets the decoder's gradient reach MiniLM at the cost
of ~1 % of its weights, so the code learns to hold what the decoder needs to give the review back.
The code keeps the pooled code's form (384 numbers, unit length), so the GAN, the screen, rewriting
and the reader are unchanged.

LoRA's B starts at zero: an untrained encoder is exactly MiniLM (the pooled code), and ae.init can
start the decoder from a pooled-code model's, so training begins from a working decoder and a code
it already reads (docs/RESULTS.md has the climb). Generation folds LoRA into MiniLM's weights.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import AEConfig
from .pretrained import PretrainedAutoencoder, cached_embeddings
from .units import Units

# all-MiniLM-L6-v2's linear layers that LoRA adapts, (out, in) features: 6 layers of these.
LAYER_LINEARS = {"attention.self.query": (384, 384), "attention.self.key": (384, 384),
                 "attention.self.value": (384, 384), "attention.output.dense": (384, 384),
                 "intermediate.dense": (1536, 384), "output.dense": (384, 1536)}
LINEARS = {f"encoder.layer.{i}.{n}": shape for i in range(6) for n, shape in LAYER_LINEARS.items()}


class EncoderLoRA(nn.Module):
    """LoRA (Hu et al. 2021) for MiniLM's linear layers: linear `name`'s output gains
    (alpha / rank) * x A^T B^T. The embedder's weights stay frozen in embedder.MiniLM; this holds only
    A (rank, in) and B (out, rank) per layer, B at zero."""

    def __init__(self, rank: int, alpha: float):
        super().__init__()
        self.scale = alpha / rank
        keys = [self.key(n) for n in LINEARS]
        self.a = nn.ParameterDict({k: nn.Parameter(torch.randn(rank, i) / math.sqrt(i))
                                   for k, (_, i) in zip(keys, LINEARS.values())})
        self.b = nn.ParameterDict({k: nn.Parameter(torch.zeros(o, rank)) for k, (o, _) in zip(keys, LINEARS.values())})

    @staticmethod
    def key(name: str) -> str:
        return name.removeprefix("encoder.").replace(".", "_")

    def forward(self, x: torch.Tensor, name: str) -> torch.Tensor:
        k = self.key(name)
        return F.linear(F.linear(x, self.a[k].to(x.dtype)), self.b[k].to(x.dtype)) * self.scale

    @torch.no_grad()
    def merged(self, weights: dict) -> dict:
        """MiniLM's weight dict with every adapted weight W replaced by W + scale * B A, in W's dtype."""
        out = dict(weights)
        for name in LINEARS:
            k, w = self.key(name), weights[f"{name}.weight"]
            out[f"{name}.weight"] = (w.float() + self.scale * self.b[k].float() @ self.a[k].float()).to(w.dtype)
        return out

    def version(self) -> int:
        """Changes whenever a weight is updated in place (optimizer steps, loading): when to merge again."""
        return sum(p._version for p in self.parameters())


class TunedAutoencoder(PretrainedAutoencoder):
    """The pretrained-decoder autoencoder whose encoder trains with it: the stage-1 interface of
    PretrainedAutoencoder, but codes are computed per batch (with gradients) from MiniLM's word
    pieces, and cached per set of texts and encoder weights once training is done."""

    frozen_encoder = False
    _trained = ("memory.", "encoder.")

    def __init__(self, cfg: AEConfig, base, dtype: torch.dtype = torch.bfloat16):
        super().__init__(cfg, base, dtype)
        self.encoder = EncoderLoRA(cfg.encoder_rank, cfg.lora_alpha)
        self._frozen = None  # MiniLM in float32, what training reads through (loaded on first use)
        self._read_at = None  # the encoder version the screen's merged MiniLM was made from

    def param_groups(self) -> list[dict]:
        """The code memory at ae.lr, the encoder's LoRA at ae.encoder_lr, the decoder's LoRA at ae.lora_lr."""
        memory, lora = super().param_groups()
        memory["params"] = [p for n, p in self.named_parameters() if n.startswith("memory.")]
        return [memory, {"params": list(self.encoder.parameters()), "lr": self.cfg.encoder_lr}, lora]

    def frozen_minilm(self):
        if self._frozen is None:
            from .embedder import MiniLM
            self._frozen = MiniLM(bf16=False)
        return self._frozen

    def embed(self, tokens: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """MiniLM word-piece ids (B, T) and their mask -> codes (B, 384), through the adapted encoder
        (with gradients while training). The reference the screen's merged encoder is tested against."""
        return self.frozen_minilm()._forward(*tokens, adapter=self.encoder)

    def word_pieces(self, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.frozen_minilm().word_pieces(texts)
        return ids.to(device), mask.to(device)

    # -- the stage-1 interface

    def codes(self, batch) -> torch.Tensor:
        return self.embed(batch[3])

    def batch(self, units: Units, idx, device):
        """-> ids (B, T) ending in EOS, padded; lengths (B,); labels (B,); the texts' MiniLM word pieces
        and mask (the encoder's input: ae.codes(batch) makes the codes)."""
        return (*self.targets(units, idx, device), self.word_pieces([units.texts[i] for i in idx], device))

    def loss(self, ids, lengths, labels, tokens, noise_std: float = 0.0):
        return super().loss(ids, lengths, labels, self.embed(tokens), noise_std)

    @torch.no_grad()
    def encode_units(self, units: Units, device, batch_size: int = 0) -> torch.Tensor:
        """Codes of every unit (N, 384), in order: the GAN's real codes. Cached on disk per set of
        texts and encoder weights (a run's stage 2 and reader read the same ones)."""
        return self.codes_of(units.texts).to(device)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], tokenizer=None, max_len: int | None = None, device="cpu") -> torch.Tensor:
        """Cleaned texts -> codes (N, 384): MiniLM with LoRA folded into its weights, in the decoder's
        precision (embedder.MiniLM, batches of similar length), as `embed` computes them up to rounding
        (cosine >= 0.999 in bf16). The GAN's real codes, the reader's and the screen's come from here."""
        return torch.as_tensor(self.minilm().encode(texts), dtype=torch.float32, device=device)

    def codes_of(self, texts: list[str]) -> torch.Tensor:
        digest = hashlib.sha1()
        for k, p in sorted(self.encoder.state_dict().items()):
            digest.update(k.encode() + p.detach().float().cpu().numpy().tobytes())
        return cached_embeddings(texts, f"codes-tuned-{digest.hexdigest()[:12]}", self.encode_texts)

    def read_texts(self, texts: list[str], tokenizer=None, max_len: int | None = None, device="cpu") -> torch.Tensor:
        """Codes of decoded reviews for generation's screen: the same as encode_texts."""
        return self.encode_texts(texts, device=device)

    def minilm(self):
        """The adapted encoder written out with LoRA merged (embedder.MiniLM), in the decoder's precision;
        merged again after the encoder's weights change."""
        version = (self.encoder.version(), self.lm.dtype)
        if self._reading is None or self._read_at != version:
            from .embedder import MiniLM
            reading = MiniLM(bf16=self.lm.dtype == torch.bfloat16)
            reading.w = self.encoder.merged(reading.w)
            self._reading, self._read_at = reading, version
        return self._reading
