"""Stage 1, LSTM family: the autoencoder that maps a short review to a real-valued code and back (paper 5.1).

Encoder: Embedding(V, 100) -> (bi)LSTM(256) -> Linear(concat(h_T, c_T) of each direction) -> squash -> code (600)
Decoder: Embedding(V, 100) or the sentiment's start token [+ the code at every step]
         -> LSTM(600, h_0 = code) -> Dropout(0.5) -> Linear(V)
Sizes are `default`'s; the paper's (presets/paper.toml): a one-way LSTM(100), sigmoid codes, the code
only as the decoder's initial state. Also the decoding loop and the sampler both families share.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import pack_padded_sequence

from .config import AEConfig
from .tokenizer import END, PAD, START
from .units import Units, pad_batch

IGNORE = -100  # target of padding positions: cross_entropy's ignore_index
MAX_SEGMENTS = 4  # a batch with more distinct lengths than this is packed for the encoder


def slot_dim(kind: str) -> int | None:
    """The slot width of a slot code kind ("slots64", "latent64" -> 64); None for the other kinds."""
    for prefix in ("slots", "latent"):
        if kind.startswith(prefix):
            return int(kind[len(prefix):])
    return None


def gated(kind: str) -> bool:
    """A token-slot code ("slots64") fills as many slots as the text has word pieces, so each slot has a
    presence gate; a latent code ("latent64") fills all of its slots, always."""
    return kind.startswith("slots")


def squash(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The code's output range, shared by the encoder and the generator so both live in one space."""
    if kind == "sigmoid":
        return torch.sigmoid(x)
    if kind == "tanh":
        return torch.tanh(x)
    if kind == "l2":
        return F.normalize(x, dim=-1)
    if (d := slot_dim(kind)) is not None and not gated(kind):  # "latent64": per slot, 64 dims, mean 0, variance 1
        return F.layer_norm(x.view(x.size(0), -1, d), (d,)).flatten(1)
    if d is not None:  # "slots64": the same, times a gate
        x = x.view(x.size(0), -1, d + 1)
        # A token-slot code's slots are present (normalised) for the text's word pieces and zero after
        # it, never with a hole: the decoder stops at the first absent slot. So slot s is present only
        # as far as every slot before it: gate_s = prod_{t <= s} sigmoid(g_t), non-increasing along the
        # code. (Gates of their own leave holes: generated reviews that stop after a few words.)
        gate = torch.exp(torch.cumsum(F.logsigmoid(x[..., d:].float()), dim=1)).to(x.dtype)
        return (F.layer_norm(x[..., :d], (d,)) * gate).flatten(1)
    return x


SLOT_GATE_INIT = 3.0  # a generator's slot-gate logits start here: 0.95 per slot, codes of ~20 slots


def open_slot_gates_(out: nn.Linear, kind: str) -> None:
    """Start a generator's last layer with its slot gates open (squash); other code kinds unchanged."""
    if (d := slot_dim(kind)) is not None and gated(kind):
        with torch.no_grad():
            out.bias.view(-1, d + 1)[:, -1] = SLOT_GATE_INIT


def squash_input_dim(code_dim: int, kind: str) -> int:
    """The width squash(x, kind) takes to give a code of code_dim: a token-slot code's gates come on top."""
    d = slot_dim(kind)
    return code_dim + code_dim // d if d is not None and gated(kind) else code_dim


class Encoder(nn.Module):
    def __init__(self, vocab_size: int, cfg: AEConfig):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, cfg.emb_dim, padding_idx=PAD)
        self.lstm = nn.LSTM(cfg.emb_dim, cfg.enc_hidden, batch_first=True, bidirectional=cfg.enc_bidirectional)
        # VAE: the dense layer emits mean and log-variance side by side.
        out = cfg.code_dim * (2 if cfg.variational else 1)
        self.fc = nn.Linear(2 * cfg.enc_hidden * (2 if cfg.enc_bidirectional else 1), out)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, pack: bool = False) -> torch.Tensor:
        # ids: (B, T) padded; lengths: (B,) true lengths. Each direction's state at each row's own end.
        x = self.emb(ids)
        lstm = self.lstm
        # Packing where it is fast: on a GPU (cuDNN runs packed batches natively) and for batches of
        # many lengths (unbucketed); `pack` always packs (the benchmark's straightforward baseline).
        if pack or x.device.type != "cpu" or len(torch.unique(lengths)) > MAX_SEGMENTS:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, (h, c) = lstm(packed)  # h, c: (directions, B, H)
            h, c = list(h), list(c)
        else:
            # Length-bucketed batches hold one to three lengths. On the CPU, packing runs the reverse
            # direction a time step at a time (the encoder's forward and backward take ~2.5x as long
            # as one fused call); runs between distinct lengths compute the same states with one
            # fused call per length. Under bf16 autocast these fused calls run in bf16, as the
            # decoder's LSTM always did, where packing kept the encoder in float32.
            w = lstm._flat_weights
            states = [final_states(x, lengths, w[:4], self.training)]
            if lstm.bidirectional:  # the reverse direction reads each row backwards from its own end
                states.append(final_states(reverse_within(x, lengths), lengths, w[4:], self.training))
            h, c = [s[0] for s in states], [s[1] for s in states]
        # Final output and final cell state of each direction (paper 5.1: the dense layer reads both).
        return self.fc(torch.cat([*h, *c], dim=-1))  # (B, code_dim[*2])


def final_states(x: torch.Tensor, lengths: torch.Tensor, weights, train: bool):
    """One LSTM direction over right-padded x (B, T, E): (h, c), each (B, H), at each row's last token.

    Rows are sorted longest first; the LSTM runs from one distinct length to the next over the rows
    still going, starting from the state where the previous run stopped. No row reads padding, so
    this is what packing computes, in one fused call per distinct length.
    """
    order = torch.argsort(lengths, descending=True, stable=True)
    x, lens = x[order], lengths[order].tolist()
    hidden = weights[1].size(1)
    h = c = x.new_zeros(1, x.size(0), hidden)
    done_h, done_c, start = [], [], 0
    for L in sorted(set(lens)):
        n = sum(k >= L for k in lens)  # rows still going: the first n
        _, h, c = torch._VF.lstm(x[:n, start:L], (h[:, :n], c[:, :n]), weights, True, 1, 0.0, train, False, True)
        ended = sum(k > L for k in lens)  # rows [ended, n) end here
        done_h.append(h[0, ended:])
        done_c.append(c[0, ended:])
        start = L
    inverse = torch.argsort(order)
    return torch.cat(done_h[::-1])[inverse], torch.cat(done_c[::-1])[inverse]


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row's first `length` steps in reverse order; padding stays at the end."""
    t = torch.arange(x.size(1), device=x.device)[None, :]
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, T)
    return x.gather(1, idx[..., None].expand(-1, -1, x.size(2)))


class Decoder(nn.Module):
    def __init__(self, vocab_size: int, cfg: AEConfig):
        super().__init__()
        self.code_to_input = cfg.code_to_input
        self.emb = nn.Embedding(vocab_size, cfg.emb_dim, padding_idx=PAD)
        # Optional: the sentiment as the decoder's start token, so the requested sentiment reaches the
        # text even where the code carries it weakly.
        self.sentiment = nn.Embedding(2, cfg.emb_dim) if cfg.label_to_decoder else None
        in_dim = cfg.emb_dim + (cfg.code_dim if cfg.code_to_input else 0)
        self.lstm = nn.LSTM(in_dim, cfg.code_dim, batch_first=True)
        self.p_drop = cfg.dropout
        self.out = nn.Linear(cfg.code_dim, vocab_size)

    def _inputs(self, tokens: torch.Tensor, code: torch.Tensor, labels=None) -> torch.Tensor:
        x = self.emb(tokens)  # (B, T, E)
        if self.sentiment is not None:
            if labels is None:
                raise ValueError("this decoder is conditioned on the sentiment: pass labels")
            first = torch.where((tokens[:, 0] == START)[:, None], self.sentiment(labels), x[:, 0])
            x = torch.cat([first.unsqueeze(1), x[:, 1:]], dim=1)
        if self.code_to_input:
            x = torch.cat([x, code.unsqueeze(1).expand(-1, x.size(1), -1)], dim=-1)
        return x

    def initial_state(self, code: torch.Tensor):
        # Paper 5.1: the code is the decoder's initial hidden state; the cell starts at zero.
        h0 = code.unsqueeze(0).contiguous()  # (1, B, C)
        return h0, torch.zeros_like(h0)

    def hidden(self, tokens: torch.Tensor, code: torch.Tensor, labels=None) -> torch.Tensor:
        """What the output layer reads: the LSTM's outputs (B, T, C), after dropout."""
        y, _ = self.lstm(self._inputs(tokens, code, labels), self.initial_state(code))
        return dropout(y, self.p_drop, self.training)

    def forward(self, tokens: torch.Tensor, code: torch.Tensor, labels=None) -> torch.Tensor:
        return self.out(self.hidden(tokens, code, labels))  # (B, T, V)

    def step(self, tokens: torch.Tensor, code: torch.Tensor, state, labels=None):
        """One decoding step for a batch: tokens (B,) -> logits (B, V), new state.

        The LSTM cell is written out with the layer's own weights: for one step of a small batch the
        fused RNN kernel spends more time preparing its weights than computing (~10x slower here).
        """
        x = self._inputs(tokens.unsqueeze(1), code, labels)[:, 0]  # (B, in)
        h, c = state[0][0], state[1][0]  # (B, H)
        rnn = self.lstm
        gates = F.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0) + F.linear(h, rnn.weight_hh_l0, rnn.bias_hh_l0)
        i, f, g, o = gates.chunk(4, dim=-1)  # PyTorch's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return self.out(h), (h.unsqueeze(0), c.unsqueeze(0))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, with the mask drawn by torch.rand on a CPU: PyTorch's CPU bernoulli_ draws one
    number at a time, about 3x slower than its vectorised uniform generator (16 against 5 ms for
    the decoder's (64, 37, 600) outputs, ~5 % of a training step)."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu":  # GPUs: a fused kernel
        return F.dropout(x, p, training)
    return x * ((torch.rand(x.shape, device=x.device) >= p).to(x.dtype) * (1 / (1 - p)))


def output_loss(h: torch.Tensor, out: nn.Linear, targets: torch.Tensor, mask: torch.Tensor):
    """Mean cross-entropy of the output layer `out` on hidden states h (B, T, C) over the real
    positions, and how many of them it predicts right.

    Padding positions are ignored rather than selected out: (B, T) shapes repeat from batch to batch
    (T from the length buckets), so the matmul kernels prepared for a shape are reused, and no
    gather and scatter of (B, T, V) tensors run; bucketed batches are ~1 % padding. In training the
    bias is left to the loss, which adds it as it converts each block of logits to float32, and
    counts the right tokens from the maxima it computes anyway: the bias pass and the `amax` over
    the bf16 (N, V) logits they replace took ~12 ms of a ~260 ms step, measured alone.
    """
    target = targets.masked_fill(~mask, IGNORE).flatten()
    h = h.flatten(0, 1)  # (N, C): a 2-D product
    if torch.is_grad_enabled() and (h.requires_grad or out.weight.requires_grad):
        bias = out.bias if out.bias is not None else h.new_zeros(out.out_features, dtype=torch.float32)
        return SoftmaxCrossEntropy.apply(F.linear(h, out.weight), bias, target)
    logits = out(h).float()  # evaluation: no gradient to prepare
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE)
    top = logits.gather(1, target.clamp(min=0)[:, None]).squeeze(1) >= logits.amax(-1)
    return ce, (top & (target != IGNORE)).sum()


class SoftmaxCrossEntropy(torch.autograd.Function):
    """F.cross_entropy((logits + bias).float(), target, ignore_index=IGNORE), computed a block of
    rows at a time; also the number of real rows whose target is the top logit (a tie counts).

    The loss is float32 as under autocast, but no float32 copy of the (N, V) logits is made: each
    block is converted into one reused buffer with the bias added, and its log-sum-exp, loss and
    gradient ((softmax - one-hot) / n) computed while it is in cache, mostly in place: one exp per
    logit, the bias's gradient summed from the block, and the logits' gradient stored once, in the
    logits' dtype (bf16 under autocast, as autocast's backward would cast it). The backward pass
    then has nothing left to compute when the loss is not scaled. docs/PERFORMANCE.md has timings.
    """

    BLOCK = 64  # rows: 64 x 8000 float32 = 2 MB, about one core's L2 cache

    @staticmethod
    def forward(ctx, logits: torch.Tensor, bias: torch.Tensor, target: torch.Tensor):
        N, V = logits.shape
        real = target != IGNORE
        n = real.sum().clamp(min=1)
        grad = torch.empty_like(logits)
        dbias = torch.zeros(V, dtype=torch.float32, device=logits.device)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        right = torch.empty(N, dtype=torch.bool, device=logits.device)
        buf = torch.empty(min(N, SoftmaxCrossEntropy.BLOCK), V, dtype=torch.float32, device=logits.device)
        for s in range(0, N, SoftmaxCrossEntropy.BLOCK):
            block = slice(s, s + SoftmaxCrossEntropy.BLOCK)
            x = torch.add(logits[block], bias, out=buf[:min(N - s, buf.size(0))])  # float32, bias added
            t, keep = target[block].clamp(min=0)[:, None], real[block][:, None].float()
            picked = x.gather(1, t)
            top = x.amax(1, keepdim=True)
            torch.ge(picked, top, out=right[block, None])
            e = x.sub_(top).exp_()  # exp(x - max): one exp per logit, for the loss and the gradient
            z = e.sum(1, keepdim=True)
            total += ((top + z.log() - picked) * keep).sum()  # log-sum-exp - target logit, real rows
            e.mul_(keep / (z * n)).scatter_add_(1, t, -keep / n)  # (softmax - one-hot) / n; padding: 0
            dbias += e.sum(0)
            grad[block] = e
        ctx.save_for_backward(grad, dbias.to(bias.dtype))
        correct = (right & real).sum()
        ctx.mark_non_differentiable(correct)
        return total / n, correct

    @staticmethod
    @once_differentiable  # the stored gradient is a constant: a second derivative must fail, not be 0
    def backward(ctx, g, _):
        grad, dbias = ctx.saved_tensors
        scale = float(g)  # a Python number: bf16 gradients scaled by it exactly, not by a bf16 copy of it
        if scale == 1.0:  # the usual loss.backward(): no pass over (N, V)
            return grad, dbias, None
        return grad * scale, dbias * scale, None


def decoder_io(ids: torch.Tensor, lengths: torch.Tensor):
    """Teacher forcing: input [START] + ids[:-1], target ids (ending in [END]), mask of real positions.

    A plain shift, not a roll: the seed's tf.roll wrapped the last target around to [START].
    """
    start = torch.full_like(ids[:, :1], START)
    inputs = torch.cat([start, ids[:, :-1]], dim=1)
    mask = torch.arange(ids.size(1), device=ids.device)[None, :] < lengths[:, None]
    return inputs, ids, mask


class Autoencoder(nn.Module):
    def __init__(self, vocab_size: int, cfg: AEConfig):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.encoder = Encoder(vocab_size, cfg)
        self.decoder = Decoder(vocab_size, cfg)

    @property
    def code_kind(self) -> str:
        # A VAE's code is the Gaussian sample itself; squashing it would break the N(0, I) prior.
        return "none" if self.cfg.variational else self.cfg.code_activation

    def encode(self, ids, lengths, sample: bool = False, noise_std: float = 0.0, pack: bool = False):
        """ids (B, T) -> code (B, C), KL term (scalar; 0 for the plain autoencoder)."""
        h = self.encoder(ids, lengths, pack)
        kl = h.new_zeros(())
        if self.cfg.variational:
            mu, logvar = h.chunk(2, dim=-1)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1).mean()
            code = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        else:
            code = squash(h, self.code_kind)
        if noise_std > 0:  # ARAE: decode from a noisy code, so nearby codes decode to nearby text
            code = code + noise_std * torch.randn_like(code)
        return code, kl

    def batch(self, units: Units, idx, device):
        """-> the inputs of `loss`: ids (B, T) padded to the batch's longest unit, lengths (B,), labels (B,)."""
        return pad_batch(units, idx, device)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], tokenizer, max_len: int, device) -> torch.Tensor:
        """Cleaned texts -> codes (N, code_dim), each cut to max_len tokens ([END] included) as in training."""
        ids = [x[:max_len - 1] + [tokenizer.end_id] for x in tokenizer.encode_batch(texts)]
        lengths = torch.tensor([len(x) for x in ids])
        batch = torch.full((len(ids), int(lengths.max())), PAD, dtype=torch.long)
        for i, x in enumerate(ids):
            batch[i, :len(x)] = torch.tensor(x)
        was_training = self.training
        self.eval()
        code = self.encode(batch.to(device), lengths.to(device))[0]
        self.train(was_training)
        return code

    def read_texts(self, texts: list[str], tokenizer, max_len: int, device) -> torch.Tensor:
        """Codes of decoded reviews for generation's screen: encode_texts' (the pretrained family reads
        them with a faster copy of its embedder)."""
        return self.encode_texts(texts, tokenizer, max_len, device)

    def codes(self, batch) -> torch.Tensor:
        """The codes of a batch from `batch()`."""
        return self.encode(batch[0], batch[1])[0]

    @torch.no_grad()
    def encode_units(self, units: Units, device, batch_size: int = 512) -> torch.Tensor:
        """Codes of every unit (N, code_dim), in the units' order: the GAN's "real" data."""
        was_training = self.training
        self.eval()
        order = np.argsort(units.lengths(), kind="stable")
        codes = torch.empty(len(units), self.cfg.code_dim, device=device)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            ids, lengths, _ = pad_batch(units, idx, device)
            codes[torch.as_tensor(idx, device=device)] = self.encode(ids, lengths)[0]
        self.train(was_training)
        return codes

    def loss(self, ids, lengths, labels=None, noise_std: float = 0.0):
        """Masked cross-entropy (padding never counts) + KL; also the number of correct tokens."""
        code, kl = self.encode(ids, lengths, sample=self.training, noise_std=noise_std)
        inputs, targets, mask = decoder_io(ids, lengths)
        ce, correct = output_loss(self.decoder.hidden(inputs, code, labels), self.decoder.out, targets, mask)
        return ce, kl, correct, mask.sum()

    @torch.no_grad()
    def generate(self, code: torch.Tensor, max_len: int, greedy=True, temperature=1.0, top_p=1.0,
                 generator: torch.Generator | None = None, labels=None, uniforms=None, steer=None, drop=None):
        """Batched decoding from codes (B, C) [and sentiments (B,)]; `steer` and `drop` as in decode_loop.
        Returns token lists (without [END]), ended flags."""
        state = self.decoder.initial_state(code)

        def step(tok):
            nonlocal state
            logits, state = self.decoder.step(tok, code, state, labels)
            return logits

        return decode_loop(step, code.size(0), max_len, code.device, greedy, temperature, top_p, generator, uniforms,
                           steer, drop)


def decode_loop(step, batch: int, max_len: int, device, greedy, temperature, top_p, generator=None, uniforms=None,
                steer=None, drop=None):
    """Autoregressive decoding shared by the autoencoder and the LM baseline.

    `step(tokens (B,)) -> logits (B, V)` advances the model one token. Stops as soon as every row
    has produced [END]: no work is wasted on finished batches. `greedy` (bool or (B,) bools),
    `temperature` and `top_p` (floats or (B, 1) tensors) may differ per row, so requests with
    different settings share one batch. `uniforms` (B, max_len): the random numbers of each row's
    sampling, drawn up front; a row's text then depends on its own numbers only, not on the batch it
    was decoded in. Without them, `generator` draws them step by step. `steer(logits, previous
    tokens, rows)`, if given, adds to each step's float logits in place before the choice
    (rewrite.SourceCopy); rows are the batch's row numbers. `drop() -> (B,) bools or None`, if given,
    is asked before each step: the rows it names stop as ended rows do (the server's cancelled
    requests), with no [END]; the loop stops once every row has.
    """
    tok = torch.full((batch,), START, dtype=torch.long, device=device)
    rows_all = torch.arange(batch, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    out = torch.full((batch, max_len), PAD, dtype=torch.long, device=device)
    all_greedy = greedy is True or (torch.is_tensor(greedy) and bool(greedy.all()))
    for t in range(max_len):
        if drop is not None:
            gone = drop()
            if gone is not None:
                done |= gone
                if bool(done.all()):
                    break
        logits = step(tok).float()
        logits[:, PAD] = -float("inf")  # never emit padding or a second [START]
        logits[:, START] = -float("inf")
        if steer is not None:
            steer(logits, tok, rows_all)
        if all_greedy:
            tok = logits.argmax(-1)
        else:
            u = uniforms[:, t:t + 1] if uniforms is not None else None
            tok = sample_nucleus(logits, temperature, top_p, generator, u)
            if torch.is_tensor(greedy):
                tok = torch.where(greedy, logits.argmax(-1), tok)
        tok = torch.where(done, torch.full_like(tok, PAD), tok)
        out[:, t] = tok
        done |= tok == END
        if bool(done.all()):
            break
    rows, ended = [], []
    for row in out.tolist():
        if END in row:
            rows.append(row[:row.index(END)]); ended.append(True)
        else:
            rows.append([t for t in row if t != PAD]); ended.append(False)
    return rows, ended


def sample_top_p(logits: torch.Tensor, temperature, top_p, generator=None, u=None) -> torch.Tensor:
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.

    temperature, top_p: floats or (B, 1) tensors; u: (B, 1) uniforms, else drawn from `generator`.
    """
    probs = F.softmax(logits.float() / temperature, dim=-1)
    if bool(torch.as_tensor(top_p < 1.0).any()):
        # stable: tokens of equal probability (common in logits from bf16 products) in id order, so
        # which of them make the nucleus is defined, and sample_nucleus can find the same ones
        sorted_p, idx = probs.sort(dim=-1, descending=True, stable=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # always keeps the most likely token
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    # Inverse-CDF sampling: one uniform per row (torch.multinomial draws one exponential per vocabulary
    # entry, which dominated decoding time). Zero-probability tokens are never picked.
    if u is None:
        u = torch.rand(probs.size(0), 1, generator=generator, device=probs.device)
    u = u.clamp_min(1e-7)
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:])
    return idx.squeeze(-1).clamp_(max=probs.size(-1) - 1)


def rows_of(x, rows, batch: int):
    """The entries of `rows` of a per-row setting: x[rows] when x holds one entry per row of a batch
    of `batch` rows ((batch, ...) tensors), else x itself (a float, or one tensor for every row)."""
    return x[rows] if torch.is_tensor(x) and x.dim() > 0 and x.size(0) == batch else x


def drop_rows(drop, rows):
    """A decoding loop's `drop` (decode_loop) for a batch made of some of its rows (a slice or an index
    tensor): a chunk of a large batch, or the screen's redraws. None stays None."""
    if drop is None:
        return None
    return lambda: (lambda gone: None if gone is None else gone[rows])(drop())


NUCLEUS_K = 256  # candidates sample_nucleus looks at before it falls back to sorting a row whole


def sample_nucleus(logits: torch.Tensor, temperature, top_p, generator=None, u=None, k: int = NUCLEUS_K) -> torch.Tensor:
    """What sample_top_p draws, token for token for the same uniforms (tests compare them), without
    sorting the whole vocabulary: sorting (rows, 49,152) probabilities at every step took longer
    than the decoding step itself. The nucleus is found among the k most likely tokens, ordered as
    the reference orders them (probability, then id); a row whose nucleus is not surely among them
    (it reaches the k-th candidate's probability: a flat distribution, or top_p = 1) is drawn by
    sample_top_p.

    The draw is sample_top_p's inverse CDF in vocabulary order: the kept tokens, ordered by id, and
    their cumulative probabilities are the nonzero entries of the reference's CDF, summed in the same
    order (the reference's zeros add nothing)."""
    if not bool(torch.as_tensor(top_p < 1.0).any()):
        return sample_top_p(logits, temperature, top_p, generator, u)  # no nucleus to find
    B = logits.size(0)
    probs = F.softmax(logits.float() / temperature, dim=-1)  # as the reference computes them
    if u is None:
        u = torch.rand(B, 1, generator=generator, device=probs.device)
    top_p = torch.as_tensor(top_p, dtype=probs.dtype, device=probs.device).expand(B, 1)
    vals, idx = probs.topk(min(k, probs.size(-1)), dim=-1)  # (B, k): which of equal values is unspecified
    ids, order = idx.sort(-1)  # the candidates in vocabulary order
    by_id = vals.gather(-1, order)
    ranked, rank = by_id.sort(dim=-1, descending=True, stable=True)  # the reference's order: probability, then id
    cum = ranked.cumsum(-1)
    keep = ~(cum - ranked > top_p)  # the reference's rule: a prefix, never empty
    last = ranked.gather(-1, keep.sum(-1, keepdim=True) - 1)  # the least likely kept probability
    # Every token outside the candidates is at most as likely as the last candidate: if the kept ones
    # are all more likely than it, no token outside could be kept or rank between them.
    inside = last[:, 0] > ranked[:, -1]
    kept = torch.zeros_like(by_id).scatter_(-1, rank, ranked.masked_fill(~keep, 0.0))  # back in id order
    cdf = kept.cumsum(-1)
    j = torch.searchsorted(cdf, u.clamp_min(1e-7) * cdf[:, -1:]).clamp_(max=ids.size(-1) - 1)
    tok = ids.gather(-1, j).squeeze(-1)
    if not bool(inside.all()):
        rest = (~inside).nonzero().squeeze(1)
        tok[rest] = sample_top_p(logits[rest], rows_of(temperature, rest, B), top_p[rest], u=u[rest])
    return tok


# --------------------------------------------------------------------------- over a whole split
# Shared by both stage-1 families (and the LM baseline): each has batch(units, idx, device) -> the
# inputs of its loss(...), encode_units(units, device) -> codes, generate(codes, ...) -> token rows.


@torch.no_grad()
def evaluate_autoencoder(ae, units: Units, device, batch_size: int = 256, limit: int | None = None) -> dict:
    """Teacher-forced reconstruction loss and token accuracy on held-out units (no noise, no dropout);
    also the LM baseline's validation (same `loss` interface). limit: the first this many units only."""
    ae.eval()
    tot_loss = tot_correct = tot_tokens = 0.0
    order = np.argsort(units.lengths(), kind="stable")
    if limit is not None:
        order = order[order < limit]  # the first `limit` units, still sorted by length
    for s in range(0, len(order), batch_size):
        ce, _, correct, n = ae.loss(*ae.batch(units, order[s:s + batch_size], device))
        tot_loss += float(ce) * int(n); tot_correct += int(correct); tot_tokens += int(n)
    ae.train()
    return {"recon_loss": tot_loss / max(tot_tokens, 1), "token_acc": tot_correct / max(tot_tokens, 1)}
