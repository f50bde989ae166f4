"""Stage 2: a conditional Wasserstein GAN on autoencoder codes (paper 5.2-5.3, LaTextGAN).

Generator: Linear(noise + condition -> 100) -> 40 x ResidualBlock(100) -> Linear(-> code) -> squash
Critic:    Linear(code [+ condition] -> 100) -> 40 x ResidualBlock(100) -> Linear(-> 2): (realness, sentiment logit)
One ResidualMLP class serves both.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .autoencoder import squash
from .config import GANConfig


class ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The block's *own* input is added back (the seed added the first layer's output instead).
        return x + self.fc2(self.drop(F.relu(self.fc1(x))))


class ResidualMLP(nn.Module):
    def __init__(self, in_dim: int, width: int, n_blocks: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.inp = nn.Linear(in_dim, width)  # no activation: it only reshapes the input (paper 5.2)
        self.blocks = nn.Sequential(*[ResidualBlock(width, dropout) for _ in range(n_blocks)])
        self.out = nn.Linear(width, out_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.inp(x))  # (B, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


class Condition(nn.Module):
    """Sentiment label (B,) -> condition vector (B, cond_dim).

    fill: the seed's vector filled with the 0/1 label; embed: a learnt vector per sentiment.
    """

    def __init__(self, kind: str, dim: int):
        super().__init__()
        self.kind, self.dim = kind, dim
        self.emb = nn.Embedding(2, dim) if kind == "embed" else None

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.emb is not None:
            return self.emb(labels)
        return labels.float()[:, None].expand(-1, self.dim)


class Generator(nn.Module):
    def __init__(self, cfg: GANConfig, code_dim: int, code_kind: str):
        super().__init__()
        self.noise_dim, self.code_kind = cfg.noise_dim, code_kind
        self.cond = Condition(cfg.condition, cfg.cond_dim)
        self.net = ResidualMLP(cfg.noise_dim + cfg.cond_dim, cfg.width, cfg.n_blocks, code_dim, cfg.g_dropout)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # z: (B, noise_dim) Gaussian, labels: (B,) -> code (B, code_dim) in the encoder's range
        return squash(self.net(torch.cat([z, self.cond(labels)], dim=-1)), self.code_kind)


class Critic(nn.Module):
    """Realness and sentiment from the code alone; with `critic_conditioned`, the realness score also
    judges the (code, sentiment) pair through a projection (Miyato & Koyama 2018):

        h = trunk(code);  score = w.h + b + embed(label).h;  sentiment logit = v.h + c

    The sentiment head never sees the label: a critic given the label as an input reads it back
    perfectly, its sentiment loss drops to zero and the generator gets no sentiment signal.
    """

    def __init__(self, cfg: GANConfig, code_dim: int):
        super().__init__()
        self.net = ResidualMLP(code_dim, cfg.width, cfg.n_blocks, 2, cfg.c_dropout)
        self.proj = nn.Embedding(2, cfg.width) if cfg.critic_conditioned else None
        if self.proj is not None:
            nn.init.zeros_(self.proj.weight)  # start unconditioned; learn what a real pair looks like

    def forward(self, code: torch.Tensor, labels: torch.Tensor):
        """-> realness score (B,), sentiment logit (B,)."""
        h = self.net.features(code)
        out = self.net.out(h)
        score = out[:, 0]
        if self.proj is not None:
            score = score + (self.proj(labels) * h).sum(-1)
        return score, out[:, 1]


def sentiment_loss(logit: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "mse":  # the paper: sigmoid output, mean squared error against the 0/1 target
        return F.mse_loss(torch.sigmoid(logit), labels.float())
    return F.binary_cross_entropy_with_logits(logit, labels.float())


def gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor,
                     eps: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al.) on random interpolates of real and fake codes, in a pass of its own."""
    x_hat = interpolates(real, fake, eps)
    return penalty(critic(x_hat, labels)[0], x_hat)


def interpolates(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    if eps is None:
        eps = torch.rand(real.size(0), 1, device=real.device, dtype=real.dtype)
    return (eps * real + (1 - eps) * fake).requires_grad_(True)


def penalty(scores: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """(||grad_x D(x_hat)||_2 - 1)^2 per sample (not of the whole batch), from the interpolates' scores."""
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    return (grad.norm(2, dim=1) - 1).pow(2).mean()


@torch.no_grad()
def clip_weights_(critic: nn.Module, c: float) -> None:
    """The original WGAN constraint: clamp *every* parameter (weights, biases, heads) to [-c, c]."""
    for p in critic.parameters():
        p.clamp_(-c, c)


def critic_loss(critic: Critic, real, real_labels, fake, fake_labels, cfg: GANConfig, eps=None, fused: bool = True):
    """Wasserstein critic loss + sentiment loss (+ gradient penalty). Returns (loss, parts dict).

    fused: real, fake and the penalty's interpolates go through the critic as one batch. Every row
    is scored independently (no batch statistics), so the result is the same as three passes, but a
    step of this small, deep MLP costs what its ~1,000 tiny kernels cost to launch, and one pass
    launches a third of them.
    """
    gp_on = cfg.lipschitz == "gp"
    gp = torch.zeros((), device=real.device)
    if fused:
        codes, labels = [real, fake], [real_labels, fake_labels]
        if gp_on:
            x_hat = interpolates(real, fake, eps)
            codes.append(x_hat)
            labels.append(real_labels)  # interpolates carry the real labels
        scores, logits = critic(torch.cat(codes), torch.cat(labels))
        B = real.size(0)
        s_real, s_fake, logit_real, logit_fake = scores[:B], scores[B:2 * B], logits[:B], logits[B:2 * B]
        if gp_on:
            gp = penalty(scores[2 * B:], x_hat)
    else:  # the straightforward way (bench's baseline): a pass per kind of input
        s_real, logit_real = critic(real, real_labels)
        s_fake, logit_fake = critic(fake, fake_labels)
        if gp_on:
            gp = gradient_penalty(critic, real, fake, real_labels, eps)
    wdist = s_real.mean() - s_fake.mean()
    cls = sentiment_loss(logit_real, real_labels, cfg.cls_loss)
    if cfg.cls_on_fake:
        cls = 0.5 * (cls + sentiment_loss(logit_fake, fake_labels, cfg.cls_loss))
    loss = -wdist + cfg.cls_weight * cls + cfg.gp_weight * gp  # WGAN-GP (Gulrajani et al.); gp = 0 when clipping
    acc = ((logit_real > 0).long() == real_labels).float().mean()
    return loss, {"c_loss": loss.detach(), "wdist": wdist.detach(), "c_cls": cls.detach(), "gp": gp.detach(), "c_acc": acc}


def generator_loss(critic: Critic, fake, fake_labels, cfg: GANConfig):
    """Fool the critic and make the critic read the requested sentiment in the generated code."""
    s_fake, logit_fake = critic(fake, fake_labels)
    cls = sentiment_loss(logit_fake, fake_labels, cfg.cls_loss)
    loss = -s_fake.mean() + cfg.cls_weight * cls
    return loss, {"g_loss": loss.detach(), "g_cls": cls.detach()}
