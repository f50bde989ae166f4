"""Stage 2's training steps with gradients derived by hand: the fast path beside gan.py's reference.

gan.py's `ReferenceSteps` differentiate the losses with autograd, as the papers write them. Both
networks of stage 2 are a ResidualMLP: h_0 = x W_in' + b_in, then 40 blocks
h_{l+1} = h_l + relu(h_l W1' + b1) W2' + b2, then a linear head (rows are samples, W' = W.T).
A step of this deep, narrow MLP at batch 64 costs what its few thousand small operations cost,
and eager autograd spends as much again recording and replaying them; the gradient penalty's
gradient-of-a-gradient doubles the work once more. Written out, the whole step is a handful of
matmuls per block:

- forward, keeping each block's input h_l and relu output r_l;
- backward, g_l = g_{l+1} + (relu'(r_l) * (g_{l+1} W2)) W1: the loss gradient for the real and fake
  rows, and for the penalty's interpolates the gradient of the score, delta_l, in the same matmuls;
- the penalty: x's gradient delta_0 W_in, (||.|| - 1)^2, and its gradient u. ReLU's second
  derivative is zero, so the penalty depends on the weights only through the linear backward chain,
  and its gradient is that chain run in reverse (block 1 -> 40), e_{l+1} = e_l + (relu'(r_l) * (e_l W1')) W2',
  with e_0 = u W_in': 64 rows, and no pass back through the forward activations;
- weight gradients: dW1_l = d_l' [h_l ; e_l] and dW2_l = g_{l+1}' [r_l ; relu'(r_l) * (e_l W1')],
  loss rows and interpolates stacked, for all 40 blocks in one batched matmul into the stacked
  (n_blocks, width, width) gradient.

The losses themselves (Wasserstein estimate, sentiment loss, penalty) stay in gan.py and are
differentiated by autograd on their small (B,) and (B, code) inputs, so every loss option works
unchanged. Dropout inside the blocks is not written out: `supported` says when this applies; train.py
uses the reference steps otherwise. tests/test_models.py checks every gradient against the
reference's; `reviewgan bench` measures both.
"""

from __future__ import annotations

import torch

from .autoencoder import squash
from .config import GANConfig
from .gan import Critic, Generator, ResidualMLP, critic_objective, generator_objective, penalty_of, scale_grads


def supported(cfg: GANConfig) -> bool:
    """Whether these steps apply: residual-MLP blocks, none with dropout."""
    return cfg.arch == "mlp" and cfg.g_dropout == 0 and cfg.c_dropout == 0 and cfg.n_blocks > 0


def _relu_grad(g: torch.Tensor, r: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = g * relu'(.), from the relu's output r (positive exactly where its input was); out may be g or r."""
    return torch.ops.aten.threshold_backward.grad_input(g, r, 0, grad_input=out)


def grad_buffer(p: torch.Tensor) -> torch.Tensor:
    """p.grad, for a gradient to be written into (out=); creates it (zeros) where p has none yet."""
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    return p.grad


class Trunk:
    """One ResidualMLP's forward and backward passes over preallocated activation buffers.

    For a batch of N rows, buffers (L = blocks, w = width): H (L+1, N, w) block inputs (H[L] is the
    trunk's output), R (L, N, w) relu outputs, D (L, N, w) gradients at the relu inputs, G (L+1, N, w)
    gradients at the block inputs. Matmuls write into them (out=), so a step allocates little, and
    the per-block views of parameters and buffers are made once: at ~12 operations per block, even
    making a view is a cost worth saving.
    """

    def __init__(self, net: ResidualMLP):
        self.net, self.L = net, net.n_blocks
        self._data_ptr = None
        self._buffers: dict = {}

    def refresh(self) -> None:
        """Per-block views of the stacked weights (and their transposes), remade if the weights moved
        (e.g. .to() after this was made)."""
        net = self.net
        if net.w1.data_ptr() != self._data_ptr:
            self.W1, self.b1, self.W2, self.b2 = (t.unbind(0) for t in (net.w1, net.b1, net.w2, net.b2))
            self.W1t, self.W2t = [w.t() for w in self.W1], [w.t() for w in self.W2]
            self._data_ptr = net.w1.data_ptr()

    def buffers(self, n: int) -> dict:
        self.refresh()
        w = self.net.inp.weight
        key = (n, w.dtype, w.device)
        if key not in self._buffers:
            L, width = self.L, w.size(0)
            b = {"H": w.new_empty(L + 1, n, width), "R": w.new_empty(L, n, width),
                 "D": w.new_empty(L, n, width), "G": w.new_empty(L + 1, n, width)}
            b.update({k.lower(): b[k].unbind(0) for k in "HRDG"})  # per-block views
            self._buffers[key] = b
        return self._buffers[key]

    def forward(self, x: torch.Tensor, b: dict) -> torch.Tensor:
        """-> h_L (H[L]); fills H and R."""
        H, R = b["h"], b["r"]
        torch.mm(x, self.net.inp.weight.t(), out=H[0]).add_(self.net.inp.bias)
        for l in range(self.L):
            torch.mm(H[l], self.W1t[l], out=R[l]).add_(self.b1[l]).clamp_min_(0)
            torch.mm(R[l], self.W2t[l], out=H[l + 1]).add_(self.b2[l]).add_(H[l])
        return H[self.L]

    def backward(self, b: dict) -> torch.Tensor:
        """From G[L] (the gradient at the trunk's output), fill D and G -> G[0]."""
        R, D, G = b["r"], b["d"], b["g"]
        for l in reversed(range(self.L)):
            _relu_grad(torch.mm(G[l + 1], self.W2[l], out=D[l]), R[l], out=D[l])
            torch.mm(D[l], self.W1[l], out=G[l]).add_(G[l + 1])
        return G[0]

    def adjoint(self, b: dict, e0: torch.Tensor, n: int) -> torch.Tensor:
        """The backward chain of rows n: run in reverse, from e_0 = dLoss/d(G[0][n:]).

        Writes e_l into H[l][n:] and relu'(r_l) * (e_l W1') into R[l][n:], the rows `block_grads`
        pairs with D and G -> e_L, the gradient at G[L][n:].
        """
        if ("he", n) not in b:
            b["he", n], b["re", n] = b["H"][:, n:].unbind(0), b["R"][:, n:].unbind(0)
        He, Re = b["he", n], b["re", n]
        He[0].copy_(e0)
        for l in range(self.L):
            _relu_grad(torch.mm(He[l], self.W1t[l]), Re[l], out=Re[l])
            torch.mm(Re[l], self.W2t[l], out=He[l + 1]).add_(He[l])
        return He[self.L]

    def block_grads(self, b: dict, n: int) -> None:
        """Every block's weight and bias gradients into the stacked .grad; biases from the first n (loss) rows."""
        H, R, D, G = b["H"], b["R"], b["D"], b["G"]
        net = self.net
        torch.bmm(D.transpose(1, 2), H[:-1], out=grad_buffer(net.w1))
        torch.bmm(G[1:].transpose(1, 2), R, out=grad_buffer(net.w2))
        torch.sum(D[:, :n], 1, out=grad_buffer(net.b1))
        torch.sum(G[1:, :n], 1, out=grad_buffer(net.b2))


class FastSteps:
    """gan.ReferenceSteps' three computations with hand-derived gradients, written into the parameters' .grad."""

    def __init__(self, gen: Generator, critic: Critic, cfg: GANConfig):
        self.gen, self.critic, self.cfg = gen, critic, cfg
        self.g_trunk, self.c_trunk = Trunk(gen.net), Trunk(critic.net)

    @torch.no_grad()
    def fake(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = torch.cat([z, self.gen.cond(labels)], dim=-1)
        h = self.g_trunk.forward(x, self.g_trunk.buffers(x.size(0)))
        out = self.gen.net.out
        return squash(torch.addmm(out.bias, h, out.weight.t()), self.gen.code_kind)

    def _critic_forward(self, x, y, bufs):
        """-> trunk output h, head output (N, 2), P[y] or None, realness score (N,)."""
        h = self.c_trunk.forward(x, bufs)
        out = torch.addmm(self.critic.net.out.bias, h, self.critic.net.out.weight.t())
        Py = self.critic.proj.weight[y] if self.critic.proj is not None else None
        score = out[:, 0] + (Py * h).sum(-1) if Py is not None else out[:, 0]
        return h, out, Py, score

    def _critic_top(self, top, ds, dlg, Py):
        """Gradient at the critic trunk's output from d(score), d(logit) -> written into top; -> the
        gradient at the head's output (N, 2)."""
        d_head = torch.stack([ds, dlg], 1)
        torch.mm(d_head, self.critic.net.out.weight, out=top)
        if Py is not None:
            top.addcmul_(ds[:, None], Py)
        return d_head

    @torch.no_grad()
    def critic_step(self, real, real_labels, fake, fake_labels, eps, scale: float = 1.0) -> dict:
        cfg, net, tr = self.cfg, self.critic.net, self.c_trunk
        gp_on, B = cfg.lipschitz == "gp", real.size(0)
        n = 2 * B  # rows that enter the loss; with the penalty, B interpolates follow them
        x, y = torch.cat([real, fake]), torch.cat([real_labels, fake_labels])
        if gp_on:  # interpolates carry the real labels, as in gan.critic_loss
            if eps is None:
                eps = torch.rand(B, 1, device=real.device, dtype=real.dtype)
            x, y = torch.cat([x, eps * real + (1 - eps) * fake]), torch.cat([y, real_labels])
        bufs = tr.buffers(x.size(0))
        h, out, Py, score = self._critic_forward(x, y, bufs)

        # The objective's gradients at the scores and sentiment logits, by autograd on those alone.
        # The objective is linear in the penalty, so they do not depend on it: it is added below.
        with torch.enable_grad():
            s, lg = (t[:n].detach().requires_grad_(True) for t in (score, out[:, 1]))
            loss, parts = critic_objective(s[:B], s[B:], lg[:B], lg[B:], real_labels, fake_labels,
                                           torch.zeros((), device=x.device, dtype=x.dtype), cfg)
            ds, dlg = torch.autograd.grad(loss, [s, lg])
        G = bufs["g"]
        d_head = self._critic_top(G[-1][:n], ds, dlg, Py[:n] if Py is not None else None)
        if gp_on:  # the interpolates' rows carry d score / d h_L instead
            G[-1][n:] = net.out.weight[0] + (Py[n:] if Py is not None else 0)
        g0 = tr.backward(bufs)

        d_in = torch.mm(g0[:n].t(), x[:n], out=grad_buffer(net.inp.weight))
        torch.sum(g0[:n], 0, out=grad_buffer(net.inp.bias))
        if gp_on:
            grad_x = g0[n:] @ net.inp.weight  # d score / d x_hat, per interpolate
            with torch.enable_grad():
                grad_x.requires_grad_(True)
                gp = penalty_of(grad_x)
                (u,) = torch.autograd.grad(cfg.gp_weight * gp, grad_x)
            d_in.addmm_(g0[n:].t(), u)
            e_top = tr.adjoint(bufs, u @ net.inp.weight.t(), n)  # H's rows n: now hold adjoints: h[:n] only below
            parts["gp"] = gp.detach()
            parts["c_loss"] = parts["c_loss"] + cfg.gp_weight * parts["gp"]
        tr.block_grads(bufs, n)
        dW_out = torch.mm(d_head.t(), h[:n], out=grad_buffer(net.out.weight))
        if gp_on:
            dW_out[0] += e_top.sum(0)
        torch.sum(d_head, 0, out=grad_buffer(net.out.bias))
        if self.critic.proj is not None:
            dP = grad_buffer(self.critic.proj.weight).zero_().index_add_(0, y[:n], ds[:, None] * h[:n])
            if gp_on:
                dP.index_add_(0, real_labels, e_top)
        return scale_grads(self.critic, parts, scale)

    @torch.no_grad()
    def generator_step(self, z, labels, scale: float = 1.0) -> dict:
        cfg, gt, ct = self.cfg, self.g_trunk, self.c_trunk
        gnet, B = self.gen.net, z.size(0)
        x = torch.cat([z, self.gen.cond(labels)], dim=-1)
        g_bufs = gt.buffers(B)
        h = gt.forward(x, g_bufs)
        pre = torch.addmm(gnet.out.bias, h, gnet.out.weight.t())
        with torch.enable_grad():  # the squash's gradient by autograd, for every code kind
            code = squash(pre.requires_grad_(True), self.gen.code_kind)
        c_bufs = ct.buffers(B)
        _, out, Py, score = self._critic_forward(code.detach(), labels, c_bufs)
        with torch.enable_grad():
            s, lg = (t.detach().requires_grad_(True) for t in (score, out[:, 1]))
            loss, parts = generator_objective(s, lg, labels, cfg)
            ds, dlg = torch.autograd.grad(loss, [s, lg])
        self._critic_top(c_bufs["g"][-1], ds, dlg, Py)
        d_code = ct.backward(c_bufs) @ self.critic.net.inp.weight  # the critic's weights get no gradient
        with torch.enable_grad():
            (d_pre,) = torch.autograd.grad(code, pre, d_code)
        torch.mm(d_pre, gnet.out.weight, out=g_bufs["g"][-1])
        g0 = gt.backward(g_bufs)
        torch.mm(g0.t(), x, out=grad_buffer(gnet.inp.weight))
        torch.sum(g0, 0, out=grad_buffer(gnet.inp.bias))
        torch.mm(d_pre.t(), h, out=grad_buffer(gnet.out.weight))
        torch.sum(d_pre, 0, out=grad_buffer(gnet.out.bias))
        gt.block_grads(g_bufs, B)
        if self.gen.cond.emb is not None:
            d_cond = g0 @ gnet.inp.weight[:, z.size(1):]
            grad_buffer(self.gen.cond.emb.weight).zero_().index_add_(0, labels, d_cond)
        return scale_grads(self.gen, parts, scale)
