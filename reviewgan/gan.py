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
    return penalty_of(grad)


def penalty_of(grad_x: torch.Tensor) -> torch.Tensor:
    return (grad_x.norm(2, dim=1) - 1).pow(2).mean()  # norm per sample, not of the whole batch


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
    return critic_objective(s_real, s_fake, logit_real, logit_fake, real_labels, fake_labels, gp, cfg)


def critic_objective(s_real, s_fake, logit_real, logit_fake, real_labels, fake_labels, gp, cfg: GANConfig):
    """The critic's loss from its outputs: -W estimate + sentiment loss + penalty. -> (loss, parts)."""
    wdist = s_real.mean() - s_fake.mean()
    cls = sentiment_loss(logit_real, real_labels, cfg.cls_loss)
    if cfg.cls_on_fake:
        cls = 0.5 * (cls + sentiment_loss(logit_fake, fake_labels, cfg.cls_loss))
    loss = -wdist + cfg.cls_weight * cls + cfg.gp_weight * gp  # WGAN-GP (Gulrajani et al.); gp = 0 when clipping
    acc = ((logit_real > 0).long() == real_labels).float().mean()
    return loss, {"c_loss": loss.detach(), "wdist": wdist.detach(), "c_cls": cls.detach(), "gp": gp.detach(), "c_acc": acc}


def generator_loss(critic: Critic, fake, fake_labels, cfg: GANConfig):
    """Fool the critic and make the critic read the requested sentiment in the generated code."""
    return generator_objective(*critic(fake, fake_labels), fake_labels, cfg)


def generator_objective(s_fake, logit_fake, fake_labels, cfg: GANConfig):
    """The generator's loss from the critic's outputs on its codes. -> (loss, parts)."""
    cls = sentiment_loss(logit_fake, fake_labels, cfg.cls_loss)
    loss = -s_fake.mean() + cfg.cls_weight * cls
    return loss, {"g_loss": loss.detach(), "g_cls": cls.detach()}


class GANSteps:
    """Stage 2's three computations:

        fake(z, labels)                              generated codes, no gradients
        critic_step(real, y_real, fake, y_fake, eps)  fills the critic's .grad, returns the loss parts
        generator_step(z, labels)                    fills the generator's .grad, returns the loss parts

    Three ways, all computing the same losses and gradients (tests/test_models.py):
    - hand-derived (`manual`, the default wherever it applies: blocks without dropout): backprop.py
      writes the gradients straight into .grad; on the 2-core CPU a critic step takes 10 ms against
      24 ms with autograd (docs/PERFORMANCE.md).
    - eager autograd: `critic_loss` (one fused pass) and `generator_loss`.
    - compiled (`train.compile`): each step's loss is written as a pure function of the parameters
      (torch.func.functional_call) and differentiated with torch.func, the gradient penalty's
      gradient-of-a-gradient included, so torch.compile can trace forward, backward and double
      backward into one graph: eager autograd cannot be compiled across that double backward. On the
      2-core CPU it is 1.15x eager autograd at 2 threads, about half the speed of the hand-derived
      steps, after a minute of compiling; it is meant for accelerators, where an eager step is bound
      by kernel launches. Compiling needs a C++ compiler on a CPU; if it fails, the steps fall back
      to eager autograd with a warning.
    """

    def __init__(self, gen: Generator, critic: Critic, cfg: GANConfig, compile: bool = False,
                 functional: bool | None = None, manual: bool | None = None, log=print):
        from . import backprop  # it builds on this module
        self.gen, self.critic, self.cfg, self.log = gen, critic, cfg, log
        # functional: the torch.func losses, compiled or not (uncompiled they are slower than
        # autograd, and serve to test that both ways give the same gradients).
        self.functional = compile if functional is None else functional
        self.compiled = compile and self.functional
        if self.functional:
            from torch.func import grad_and_value
            wrap = (lambda f: torch.compile(f, dynamic=False)) if compile else (lambda f: f)
            self._fake_fn = wrap(self._functional_fake)
            self._critic_fn = wrap(grad_and_value(self._functional_critic_loss, has_aux=True))
            self._gen_fn = wrap(grad_and_value(self._functional_generator_loss, has_aux=True))
        # manual: hand-derived gradients (backprop.py), the default wherever they apply
        if manual is None:
            manual = not self.functional and backprop.supported(cfg)
        if manual and self.functional:
            raise ValueError("the GAN steps are either hand-derived (manual) or torch.func's (functional, compile)")
        if manual and not backprop.supported(cfg):
            raise ValueError("hand-derived GAN gradients need blocks, none with dropout (gan.g_dropout = gan.c_dropout = 0)")
        self.manual = backprop.ManualSteps(gen, critic, cfg) if manual else None

    # -- the steps

    def fake(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.manual is not None:
            return self.manual.fake(z, labels)
        with torch.no_grad():
            if self.functional:
                out = self._try(lambda: self._fake_fn(_detached(self.gen), z, labels))
                if out is not None:
                    return out
            return self.gen(z, labels)

    def critic_step(self, real, real_labels, fake, fake_labels, eps, scale: float = 1.0) -> dict:
        """Gradients of `scale` x the critic loss into critic .grad (scale = 1/processes under torchrun)."""
        if self.manual is not None:
            return _scale_grads(self.critic, self.manual.critic_step(real, real_labels, fake, fake_labels, eps), scale)
        if self.functional:
            out = self._try(lambda: self._critic_fn(_detached(self.critic), real, real_labels, fake, fake_labels, eps))
            if out is not None:
                grads, (_, parts) = out
                _set_grads(self.critic, grads, scale)
                return parts
        loss, parts = critic_loss(self.critic, real, real_labels, fake, fake_labels, self.cfg, eps)
        self.critic.zero_grad(set_to_none=True)
        (loss * scale).backward()
        return parts

    def generator_step(self, z, labels, scale: float = 1.0) -> dict:
        """Gradients of `scale` x the generator loss into generator .grad. The critic's .grad means
        nothing afterwards (autograd's path clears it, the others leave the last critic step's)."""
        if self.manual is not None:
            return _scale_grads(self.gen, self.manual.generator_step(z, labels), scale)
        if self.functional:
            out = self._try(lambda: self._gen_fn(_detached(self.gen), _detached(self.critic), z, labels))
            if out is not None:
                grads, (_, parts) = out
                _set_grads(self.gen, grads, scale)
                return parts
        loss, parts = generator_loss(self.critic, self.gen(z, labels), labels, self.cfg)
        self.gen.zero_grad(set_to_none=True)
        (loss * scale).backward()
        self.critic.zero_grad(set_to_none=True)  # the critic is not trained by this loss
        return parts

    # -- the pure functions torch.func differentiates

    def _functional_fake(self, params, z, labels):
        return torch.func.functional_call(self.gen, params, (z, labels))

    def _functional_critic_loss(self, params, real, real_labels, fake, fake_labels, eps):
        def critic(x, labels):
            return torch.func.functional_call(self.critic, params, (x, labels))

        gp = torch.zeros((), device=real.device)
        if self.cfg.lipschitz == "gp":
            x_hat = eps * real + (1 - eps) * fake  # interpolates carry the real labels, as in critic_loss
            gp = penalty_of(torch.func.grad(lambda x: critic(x, real_labels)[0].sum())(x_hat))
        B = real.size(0)
        scores, logits = critic(torch.cat([real, fake]), torch.cat([real_labels, fake_labels]))
        loss, parts = critic_objective(scores[:B], scores[B:], logits[:B], logits[B:], real_labels, fake_labels, gp,
                                       self.cfg)
        return loss, parts  # grad_and_value(has_aux=True) -> (grads, (loss, parts))

    def _functional_generator_loss(self, params, critic_params, z, labels):
        fake = torch.func.functional_call(self.gen, params, (z, labels))
        critic = lambda x, y: torch.func.functional_call(self.critic, critic_params, (x, y))  # noqa: E731
        return generator_loss(critic, fake, labels, self.cfg)  # (loss, parts): grads of loss, parts as aux

    # -- helpers

    def _try(self, fn):
        try:
            return fn()
        except Exception as e:  # no C++ compiler, an unsupported backend: train eagerly instead
            if not self.compiled:
                raise
            self.compiled = self.functional = False
            self.log(f"torch.compile of the GAN steps failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                     "training eagerly from here on")
            return None


def _detached(module: nn.Module) -> dict[str, torch.Tensor]:
    # torch.func differentiates with respect to these inputs; detached, the gradients it returns carry
    # no autograd graph back to the live parameters (which would keep each step's graph alive).
    return {k: v.detach() for k, v in module.named_parameters()}


def _set_grads(module: nn.Module, grads: dict[str, torch.Tensor], scale: float) -> None:
    for name, p in module.named_parameters():
        p.grad = grads[name] * scale if scale != 1.0 else grads[name]


def _scale_grads(module: nn.Module, parts: dict, scale: float) -> dict:
    if scale != 1.0:
        torch._foreach_mul_([p.grad for p in module.parameters()], scale)
    return parts
