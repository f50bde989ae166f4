"""The honest baselines: conditional language models, the model a practitioner would pick instead of
a GAN. Each trains with stage 1's loop, data and budget, by plain maximum likelihood.

    ConditionalLM (`--preset lm`): the LSTM family's decoder (Embedding 100 -> LSTM 600 -> Dropout ->
        Linear), with the sentiment as its start token.
    PretrainedLM (`--preset pretrained-lm`): the pretrained family's decoder (SmolLM2-135M, frozen,
        LoRA), with the sentiment as a control token: a learnt key/value slot per sentiment in every
        layer, where the autoencoder's decoder reads its code.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .autoencoder import decode_loop, decoder_io, dropout, output_loss
from .config import AEConfig
from .pretrained import CodeMemory, PretrainedAutoencoder
from .tokenizer import PAD, START
from .units import Units, pad_batch


class ConditionalLM(nn.Module):
    def __init__(self, vocab_size: int, cfg: AEConfig):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(vocab_size, cfg.emb_dim, padding_idx=PAD)
        self.sentiment = nn.Embedding(2, cfg.emb_dim)  # the two start tokens: <negative>, <positive>
        self.lstm = nn.LSTM(cfg.emb_dim, cfg.code_dim, batch_first=True)
        self.p_drop = cfg.dropout
        self.out = nn.Linear(cfg.code_dim, vocab_size)

    def _embed(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # tokens (B, T); a [START] in column 0 is replaced by the sentiment's own start token.
        x = self.emb(tokens)
        first = torch.where((tokens[:, 0] == START)[:, None], self.sentiment(labels), x[:, 0])
        return torch.cat([first.unsqueeze(1), x[:, 1:]], dim=1)

    def hidden(self, tokens, labels, state=None):
        """What the output layer reads: the LSTM's outputs (B, T, H) after dropout, and its state."""
        y, state = self.lstm(self._embed(tokens, labels), state)
        return dropout(y, self.p_drop, self.training), state

    def forward(self, tokens, labels, state=None):
        h, state = self.hidden(tokens, labels, state)
        return self.out(h), state

    def batch(self, units: Units, idx, device):
        return pad_batch(units, idx, device)

    def loss(self, ids, lengths, labels=None, noise_std: float = 0.0):
        """Same interface as Autoencoder.loss: (cross-entropy, kl=0, correct tokens, tokens)."""
        inputs, targets, mask = decoder_io(ids, lengths)
        ce, correct = output_loss(self.hidden(inputs, labels)[0], self.out, targets, mask)
        return ce, ce.new_zeros(()), correct, mask.sum()

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, max_len: int, greedy=False, temperature=1.0, top_p=1.0,
                 generator: torch.Generator | None = None, uniforms=None, drop=None):
        """Batched decoding for the given sentiments (B,). Returns token lists (without [END]), ended flags."""
        state = None

        def step(tok):
            nonlocal state
            logits, state = self(tok.unsqueeze(1), labels, state)
            return logits[:, -1]

        return decode_loop(step, labels.size(0), max_len, labels.device, greedy, temperature, top_p, generator,
                           uniforms, drop=drop)


class PretrainedLM(PretrainedAutoencoder):
    """SmolLM2 + LoRA conditioned on the sentiment alone: PretrainedAutoencoder with the one-hot label
    (B, 2) as its code, so the same memory path, training loop and cached decoding serve both."""

    frozen_encoder = False

    def make_memory(self, shape) -> nn.Module:
        return CodeMemory(2, shape, self.cfg.memory_slots)

    def batch(self, units: Units, idx, device):
        """-> ids (B, T) ending in EOS, padded; lengths (B,); labels (B,): no code."""
        return self.targets(units, idx, device)

    def loss(self, ids, lengths, labels, noise_std: float = 0.0):
        return self._teacher_forced(ids, ids, lengths, self._control(labels))

    @staticmethod
    def _control(labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(labels, 2).float()

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, max_len: int, greedy=False, temperature=1.0, top_p=1.0,
                 generator: torch.Generator | None = None, uniforms=None, drop=None):
        """Batched decoding for the given sentiments (B,): token lists without EOS, ended flags."""
        return super().generate(self._control(labels), max_len, greedy, temperature, top_p, generator,
                                uniforms=uniforms, drop=drop)
