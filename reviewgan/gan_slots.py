"""Stage 2 for a token-slot code (`gan.arch = "slots"`): a generator and a critic that are small
transformers over the code's slots, in place of gan.py's MLPs.

A token-slot code is a sequence: slot s holds word piece s of the review. An MLP critic sees the
3,072 numbers as one flat vector and has to learn, for every position separately, which neighbouring
slots go together; its generator's codes decode to word salad. Here both networks share weights
across positions and compare slots by attention, so what one pair of neighbouring slots teaches holds
at every position:

    generator: slot s's input = pos[s] + Linear(noise, condition) -> g_blocks transformer blocks
               -> Linear(-> slot_dim + 1) per slot -> squash (each slot normalised, times a gate that never reopens)
    critic:    Linear(slot -> width) + pos[s], with a summary slot in front -> n_blocks blocks
               -> the summary slot's state h -> realness score (+ the label's projection on h), sentiment logit

Same losses, penalty and steps as gan.py (ReferenceSteps: autograd, double backward included, which
is why attention is written out rather than called through scaled_dot_product_attention).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .autoencoder import gated, open_slot_gates_, slot_dim, squash
from .config import GANConfig
from .gan import Condition, Critic, Generator, label_projection, score_and_logit


def slot_shape(code_dim: int, code_kind: str) -> tuple[int, int]:
    """(slots, slot_dim) of a slot code kind such as "slots64"."""
    d = slot_dim(code_kind)
    if d is None:
        raise ValueError(f"gan.arch = 'slots' needs a slot code (ae.code = 'tokens' or 'latents'), not {code_kind!r}")
    return code_dim // d, d


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN x), then x + MLP(LN x); every slot sees every slot."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, W = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, S, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(W // self.heads), dim=-1)  # (B, heads, S, S)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(B, S, W))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class SlotGenerator(nn.Module):
    def __init__(self, cfg: GANConfig, code_dim: int, code_kind: str):
        super().__init__()
        self.noise_dim, self.code_kind = cfg.noise_dim, code_kind
        self.slots, self.slot_dim = slot_shape(code_dim, code_kind)
        width, n_blocks = cfg.g_width or cfg.width, cfg.g_blocks or cfg.n_blocks
        self.cond = Condition(cfg.condition, cfg.cond_dim)
        self.inp = nn.Linear(cfg.noise_dim + cfg.cond_dim, width)
        self.pos = nn.Parameter(0.02 * torch.randn(self.slots, width))
        self.blocks = nn.ModuleList(Block(width, cfg.heads) for _ in range(n_blocks))
        self.ln = nn.LayerNorm(width)
        self.out = nn.Linear(width, self.slot_dim + gated(code_kind))  # the slot and a token slot's presence gate
        open_slot_gates_(self.out, code_kind)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # z: (B, noise_dim), labels: (B,) -> code (B, slots * slot_dim)
        h = self.inp(torch.cat([z, self.cond(labels)], dim=-1))[:, None] + self.pos  # (B, S, width)
        for block in self.blocks:
            h = block(h)
        return squash(self.out(self.ln(h)).flatten(1), self.code_kind)


class SlotCritic(nn.Module):
    """Realness and sentiment of a slot code; the label enters the score by projection only (as gan.Critic)."""

    def __init__(self, cfg: GANConfig, code_dim: int, code_kind: str):
        super().__init__()
        self.slots, self.slot_dim = slot_shape(code_dim, code_kind)
        self.inp = nn.Linear(self.slot_dim, cfg.width)
        self.pos = nn.Parameter(0.02 * torch.randn(self.slots + 1, cfg.width))  # [summary slot, slot 0, ...]
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads) for _ in range(cfg.n_blocks))
        self.ln = nn.LayerNorm(cfg.width)
        self.out = nn.Linear(cfg.width, 2)
        self.proj = label_projection(cfg)

    def forward(self, code: torch.Tensor, labels: torch.Tensor):
        """-> realness score (B,), sentiment logit (B,)."""
        x = self.inp(code.view(code.size(0), self.slots, self.slot_dim))
        h = torch.cat([x.new_zeros(x.size(0), 1, x.size(2)), x], dim=1) + self.pos
        for block in self.blocks:
            h = block(h)
        return score_and_logit(self.ln(h[:, 0]), labels, self.out, self.proj)  # from the summary slot


def networks(cfg: GANConfig, code_dim: int, code_kind: str) -> tuple[nn.Module, nn.Module]:
    """The generator and critic `gan.arch` names: gan.py's residual MLPs, or the slot transformers."""
    if cfg.arch == "slots":
        return SlotGenerator(cfg, code_dim, code_kind), SlotCritic(cfg, code_dim, code_kind)
    return Generator(cfg, code_dim, code_kind), Critic(cfg, code_dim)
