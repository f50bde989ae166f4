"""FlatAdam: Adam over many small parameters in one fused kernel (stage 2's optimiser).

Stage 2's networks are 160-odd small tensors each (40 blocks x 4, most of them 100 x 100 or 100).
torch.optim.Adam(fused=True) loops over them, and on the 2-core CPU that costs 1.1 ms a step on its
own and ~1.8 ms inside the training loop, more than a tenth of a GAN iteration. FlatAdam moves the
parameters, their gradients and Adam's two moments into four flat buffers, each parameter a view of
its range, and updates all of them with one call of the same fused kernel (0.4 ms).

The arithmetic is torch.optim.Adam's (tests/test_models.py checks the updates against it), and so is
the state_dict: per-parameter moments, in the parameters' own order, so checkpoints are
interchangeable with plain Adam's. `layout` orders the flat buffers: `stacked_layout` puts each kind
of block parameter back to back, so the 40 blocks' gradients form one (40, ...) tensor that
backprop.py's batched matmuls write into directly.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn


def stacked_layout(module: nn.Module) -> list[int]:
    """Indices into module.parameters(): 'blocks.{l}.{kind}' grouped by kind, blocks in order, then the rest."""
    keys = []
    for i, (name, _) in enumerate(module.named_parameters()):
        m = re.search(r"blocks\.(\d+)\.(.+)$", name)
        keys.append((0, m.group(2), int(m.group(1))) if m else (1, "", i))
    return sorted(range(len(keys)), key=keys.__getitem__)


class FlatAdam(torch.optim.Adam):
    """torch.optim.Adam (fused) whose parameters, gradients and moments are views of flat buffers.

    What it asks of its user, all true of stage 2:
    - every parameter has a gradient at every step (gradients are never None: zero_grad zeros the
      buffer). A .grad that is not the parameter's view of the flat gradient (autograd made a new
      one) is copied into it first;
    - the module is moved or converted (.to) before the optimiser is made, not after;
    - one parameter group; no amsgrad, no GradScaler.
    """

    # Not True, as Adam(fused=True) says: a GradScaler must unscale the gradients itself.
    _step_supports_amp_scaling = False

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float = 1e-8,
                 weight_decay: float = 0.0, layout: list[int] | None = None):
        params = list(params)
        if not params or any(isinstance(p, dict) for p in params):
            raise TypeError("FlatAdam takes a list of parameters (one group)")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)
        self._params = params
        total, ref = sum(p.numel() for p in params), params[0]
        self._flat = {k: ref.new_zeros(total) for k in ("param", "grad", "exp_avg", "exp_avg_sq")}
        self._step = torch.zeros((), dtype=torch.float32, device=ref.device)  # one counter for all
        self._views: list[dict] = [{} for _ in params]
        offset = 0
        for i in layout if layout is not None else range(len(params)):
            p, n = params[i], params[i].numel()
            self._views[i] = {k: buf[offset:offset + n].view_as(p) for k, buf in self._flat.items()}
            offset += n
        assert offset == total and all(self._views), "layout must name every parameter once"
        with torch.no_grad():
            for p, v in zip(params, self._views):
                v["param"].copy_(p)
                p.data = v["param"]  # the module now trains the flat buffer's range
                p.grad = v["grad"]
        self._point_state()

    def _point_state(self) -> None:
        for p, v in zip(self._params, self._views):
            self.state[p] = {"step": self._step, "exp_avg": v["exp_avg"], "exp_avg_sq": v["exp_avg_sq"]}

    def add_param_group(self, param_group: dict) -> None:
        if hasattr(self, "_flat"):
            raise ValueError("FlatAdam keeps one parameter group")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        g, f = self.param_groups[0], self._flat
        if closure is not None or g["amsgrad"]:
            raise ValueError("FlatAdam takes no closure and has no amsgrad")
        for p, v in zip(self._params, self._views):
            if p.data_ptr() != v["param"].data_ptr():
                raise RuntimeError("a parameter left FlatAdam's buffer: move the module before making the optimiser")
            if p.grad is not v["grad"]:
                if p.grad is None:
                    raise RuntimeError("FlatAdam updates every parameter at every step, and one has no gradient")
                v["grad"].copy_(p.grad)
                p.grad = v["grad"]
        self._step += 1  # torch.optim.Adam counts the step before the fused kernel, as here
        torch._fused_adam_([f["param"]], [f["grad"]], [f["exp_avg"]], [f["exp_avg_sq"]], [], [self._step],
                           amsgrad=g["amsgrad"], lr=g["lr"], beta1=g["betas"][0], beta2=g["betas"][1],
                           weight_decay=g["weight_decay"], eps=g["eps"], maximize=g["maximize"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zeros the gradients whatever set_to_none says: .grad stays a view of the flat buffer."""
        self._flat["grad"].zero_()
        for p, v in zip(self._params, self._views):
            p.grad = v["grad"]

    def state_dict(self):
        sd = super().state_dict()
        # Copies: the views share one buffer (safetensors refuses shared tensors), and the step too.
        sd["state"] = {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
                       for i, st in sd["state"].items()}
        return sd

    def load_state_dict(self, state_dict) -> None:
        saved = state_dict["state"]
        steps = {float(st["step"]) for st in saved.values()}
        if len(steps) > 1:
            raise ValueError(f"FlatAdam keeps one step count, and this state has several: {sorted(steps)}")
        if saved and len(saved) != len(self._params):
            raise ValueError("FlatAdam keeps one step count, and this state leaves some parameters out")
        super().load_state_dict(state_dict)  # fresh per-parameter tensors: copy them into the buffers
        with torch.no_grad():
            for p, v in zip(self._params, self._views):
                st = self.state.get(p, {})
                for k in ("exp_avg", "exp_avg_sq"):
                    v[k].copy_(st[k]) if k in st else v[k].zero_()
            self._step.fill_(steps.pop() if steps else 0)
        self._point_state()
