"""Stage 2: a conditional Wasserstein GAN on autoencoder codes (paper 5.2-5.3, LaTextGAN).

Generator: Linear(noise + condition -> 100) -> 40 residual blocks (100) -> Linear(-> code) -> squash
Critic:    Linear(code -> 100) -> 40 residual blocks (100) -> Linear(-> 2): realness score, sentiment logit;
           with `critic_conditioned`, the score also judges the label by projection
One ResidualMLP class serves both (gan_slots.py has transformers over a token-slot code's slots in their
place, `gan.arch = "slots"`). The losses are written as the papers write them:

    critic:    -(E[D(real)] - E[D(fake)]) + cls_weight * sentiment loss + gp_weight * E[(||grad D(x_hat)|| - 1)^2]
    generator: -E[D(G(z, y))] + cls_weight * sentiment loss of the critic's head on G(z, y)

(Arjovsky et al. 2017; the penalty of Gulrajani et al. 2017, on interpolates x_hat of real and fake
codes, or the original weight clipping). `ReferenceSteps` differentiates them with autograd;
gan_fast.py computes the same gradients by hand, about twice as fast, and train.py uses it wherever it
applies (blocks without dropout).
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from .autoencoder import open_slot_gates_, squash, squash_input_dim
from .config import GANConfig


class ResidualMLP(nn.Module):
    """Linear(in -> width), n_blocks residual blocks h <- h + W2 relu(W1 h + b1) + b2, Linear(width -> out).

    The blocks' weights are stored stacked, one (n_blocks, width, width) tensor per kind (w1, w2) and
    one (n_blocks, width) per bias: stage 2's optimiser then updates 8 tensors per network instead of
    160-odd small ones, which on a CPU costs more than the arithmetic.
    """

    def __init__(self, in_dim: int, width: int, n_blocks: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.inp = nn.Linear(in_dim, width)  # no activation: it only reshapes the input (paper 5.2)
        # Initialised as nn.Linear initialises each block's two layers, in the same order.
        layers = [nn.Linear(width, width) for _ in range(2 * n_blocks)]
        self.w1 = nn.Parameter(_stack([l.weight for l in layers[0::2]], (0, width, width)))
        self.b1 = nn.Parameter(_stack([l.bias for l in layers[0::2]], (0, width)))
        self.w2 = nn.Parameter(_stack([l.weight for l in layers[1::2]], (0, width, width)))
        self.b2 = nn.Parameter(_stack([l.bias for l in layers[1::2]], (0, width)))
        self.out = nn.Linear(width, out_dim)
        self.dropout = dropout

    @property
    def n_blocks(self) -> int:
        return self.w1.size(0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)  # (B, width)
        for w1, b1, w2, b2 in zip(self.w1.unbind(0), self.b1.unbind(0), self.w2.unbind(0), self.b2.unbind(0)):
            r = F.dropout(F.relu(F.linear(h, w1, b1)), self.dropout, self.training)
            h = h + F.linear(r, w2, b2)  # each block adds its *own* input (the seed added the first layer's output)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


def _stack(ts: list[torch.Tensor], empty_shape: tuple[int, ...]) -> torch.Tensor:
    return torch.stack([t.detach() for t in ts]) if ts else torch.zeros(empty_shape)


_BLOCK_KEY = re.compile(r"^(.*)blocks\.(\d+)\.fc([12])\.(weight|bias)$")


def upgrade_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights saved by reviewgan 0.2 and earlier (one module per block: `net.blocks.{l}.fc{1,2}.*`)
    -> the stacked layout (`net.w1`, `net.b1`, `net.w2`, `net.b2`). Other state dicts pass unchanged."""
    found: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    out = {}
    for k, v in tensors.items():
        m = _BLOCK_KEY.match(k)
        if m is None:
            out[k] = v
            continue
        prefix, block, layer, kind = m.groups()
        found.setdefault((prefix, ("w" if kind == "weight" else "b") + layer), {})[int(block)] = v
    for (prefix, name), blocks in found.items():
        out[prefix + name] = torch.stack([blocks[i] for i in range(len(blocks))])
    return out


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
        self.net = ResidualMLP(cfg.noise_dim + cfg.cond_dim, cfg.width, cfg.n_blocks,
                               squash_input_dim(code_dim, code_kind), cfg.g_dropout)
        open_slot_gates_(self.net.out, code_kind)

    upgrade_state_dict = staticmethod(upgrade_state_dict)  # checkpoint.load_weights applies it

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
        self.proj = label_projection(cfg)

    upgrade_state_dict = staticmethod(upgrade_state_dict)

    def forward(self, code: torch.Tensor, labels: torch.Tensor):
        """-> realness score (B,), sentiment logit (B,)."""
        return score_and_logit(self.net.features(code), labels, self.net.out, self.proj)


def label_projection(cfg: GANConfig) -> nn.Embedding | None:
    """A critic's embed(label), projected on its features h to judge the (code, label) pair."""
    if not cfg.critic_conditioned:
        return None
    proj = nn.Embedding(2, cfg.width)
    nn.init.zeros_(proj.weight)  # start unconditioned; learn what a real pair looks like
    return proj


def score_and_logit(h: torch.Tensor, labels: torch.Tensor, out: nn.Linear, proj: nn.Embedding | None):
    """A critic's features h (B, width) -> realness score (B,) (+ embed(label).h), sentiment logit (B,)."""
    o = out(h)
    score = o[:, 0]
    if proj is not None:
        score = score + (proj(labels) * h).sum(-1)
    return score, o[:, 1]


class Reader(nn.Module):
    """What sentiment a code reads as: logistic regression on codes, p(positive | code) (B,).

    Fit on real training codes when stage 2 ends (`fit_reader`, train.train_reader). Generation
    re-encodes each decoded review and reads its code (`sample.screen`): decoding blurs a code's
    sentiment, so the check is made on the review that came out, not on the code that went in. The
    critic's sentiment head reads held-out real codes about as well (0.680 for the bundled model's
    critic, 0.685 for its reader), but it is a network of 4 x 512 blocks that a released model does
    not ship; this is 385 numbers.
    """

    def __init__(self, code_dim: int):
        super().__init__()
        self.linear = nn.Linear(code_dim, 1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(codes).squeeze(-1))


def fit_reader(codes: torch.Tensor, labels: torch.Tensor, c: float = 1.0) -> Reader:
    """The Reader of real codes (N, C) and their labels (N,): L2-regularised logistic regression
    (scikit-learn's lbfgs, inverse strength `c`), fit in float64; deterministic."""
    from sklearn.linear_model import LogisticRegression
    fit = LogisticRegression(C=c, max_iter=2000).fit(codes.detach().cpu().double().numpy(), labels.cpu().numpy())
    reader = Reader(codes.size(1))
    with torch.no_grad():
        reader.linear.weight.copy_(torch.as_tensor(fit.coef_, dtype=torch.float32))
        reader.linear.bias.copy_(torch.as_tensor(fit.intercept_, dtype=torch.float32))
    return reader


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


class ReferenceSteps:
    """Stage 2's three computations, differentiated by autograd:

        fake(z, labels)                                 generated codes, no gradients
        critic_step(real, y_real, fake, y_fake, eps)    the critic loss's gradients into the critic's .grad
        generator_step(z, labels)                       the generator loss's gradients into the generator's .grad

    `scale` multiplies the gradients (1 / processes under torchrun, so their sum is the global
    batch's). gan_fast.FastSteps has the same interface, and the tests hold the two to the same results.
    """

    def __init__(self, gen: Generator, critic: Critic, cfg: GANConfig):
        self.gen, self.critic, self.cfg = gen, critic, cfg

    @torch.no_grad()
    def fake(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.gen(z, labels)

    def critic_step(self, real, real_labels, fake, fake_labels, eps, scale: float = 1.0) -> dict:
        loss, parts = critic_loss(self.critic, real, real_labels, fake, fake_labels, self.cfg, eps)
        self.critic.zero_grad(set_to_none=True)
        (loss * scale).backward()
        return parts

    def generator_step(self, z, labels, scale: float = 1.0) -> dict:
        self.critic.requires_grad_(False)  # the critic is not trained by this loss: no weight gradients
        try:
            loss, parts = generator_loss(self.critic, self.gen(z, labels), labels, self.cfg)
        finally:
            self.critic.requires_grad_(True)
        self.gen.zero_grad(set_to_none=True)
        (loss * scale).backward()
        return parts


def scale_grads(module: nn.Module, parts: dict, scale: float) -> dict:
    """Multiply the module's gradients by scale in place; -> parts, unchanged."""
    if scale != 1.0:
        torch._foreach_mul_([p.grad for p in module.parameters() if p.grad is not None], scale)
    return parts
