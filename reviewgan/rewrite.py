"""Moving a review's code: rewrite it into the other sentiment, or walk from one review to another.

A left-to-right language model can only continue text. A latent model has a code for every review,
so it can take a person's own review, move its code and decode it again: the same topic, the
other opinion. Two ways to move a code toward the target sentiment, both read off the conditional
generator (stage 2), so the GAN does the conditioning:

    mean    c' = c + strength * sign * d,        d = E_z[G(z, positive)] - E_z[G(z, negative)]
            the generator's sentiment direction: the difference of its class means, estimated on
            DIRECTION_DRAWS fixed noise draws (sign +1 toward positive, -1 toward negative)
    invert  c' = c + strength * (G(z*, to) - G(z*, from)),   z* = argmin_z  1 - cos(G(z, from), c)
            the noise whose code under the source's sentiment is nearest the source's code, found
            by Adam; then the step the label makes at that very point. At strength 1 and an exact
            inversion this is G(z*, to): the same noise, the other label.

c' is then put back into the code space (unit length for l2 codes, clamped for tanh and sigmoid
codes). strength 0 decodes the source's own code: a reconstruction. docs/RESULTS.md measures the
trade between transfer and content kept, strength by strength, for both methods.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from .autoencoder import gated, slot_dim, squash
from .data import split_sentences
from .gan import Generator

METHODS = ("mean", "invert")
DIRECTION_DRAWS = 8192  # noise draws behind the class means: their standard error is ~1 % of |d|


def into_space(codes: torch.Tensor, kind: str) -> torch.Tensor:
    """Put moved codes back where the encoder's codes live (autoencoder.squash's ranges)."""
    if kind == "l2":
        return F.normalize(codes, dim=-1)
    if kind == "tanh":
        return codes.clamp(-1.0, 1.0)
    if kind == "sigmoid":
        return codes.clamp(0.0, 1.0)
    if slot_dim(kind) is not None and not gated(kind):  # a latent code: each slot normalised, as the encoder does
        return squash(codes, kind)
    return codes


@torch.no_grad()
def class_means(gen: Generator, draws: int = DIRECTION_DRAWS, seed: int = 0) -> torch.Tensor:
    """-> (2, code_dim): the mean generated code of each sentiment (negative, positive), on the same
    fixed noise draws for both, so their difference is the label's effect alone."""
    dev = next(gen.parameters()).device
    z = torch.randn(draws, gen.noise_dim, generator=torch.Generator().manual_seed(seed)).to(dev)
    return torch.stack([gen(z, torch.full((draws,), y, dtype=torch.long, device=dev)).mean(0) for y in (0, 1)])


def read_sentiment(codes: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """The reading of codes (B, C) -> labels (B,) by a model without a Reader: the side of the midpoint
    between the generator's class means that each code lies on, along their difference (a linear
    classifier the GAN defines, with no probability; its held-out accuracy is in docs/RESULTS.md)."""
    d = means[1] - means[0]
    return ((codes - means.mean(0)) @ d > 0).long()


def why_unclear(text: str, p_positive: float | None, band: float, min_words: int, min_distinct: float) -> str | None:
    """Why a reading of a cleaned text's sentiment is not to be trusted, in words, or None if it is.

    Two reasons. (1) The reader is unsure: p_positive within `band` of 0.5. (2) The text is unlike
    the reviews the reader was fit on, by a count on its words: fewer than `min_words`, or distinct
    words under `min_distinct` of them (a repeated phrase). The reader's probability is calibrated on
    real reviews only; on such texts it is often sure with nothing to back it ("great" 0.81, a positive
    phrase said three times 0.87-0.98). A count, not a distance between codes: the bundled model's
    code of "I loved it. I loved it. I loved it." lies nearer the generator's codes than 57 % of real
    held-out chunks do, so no distance threshold that spares real reviews flags it (docs/RESULTS.md,
    "Reading a source's sentiment")."""
    words = re.findall(r"[^\W_]+", text.lower())  # runs of letters and digits: "10/10" is two words
    if len(words) < min_words:
        return f"{len(words)} word{'' if len(words) == 1 else 's'}, fewer than {min_words}"
    if len(set(words)) < min_distinct * len(words):
        n = len(set(words))
        return f"a repeated phrase: {n} distinct word{'' if n == 1 else 's'} in {len(words)}"
    if p_positive is not None and abs(p_positive - 0.5) < band:
        return f"within {band:g} of 0.5"
    return None


def invert(gen: Generator, codes: torch.Tensor, labels: torch.Tensor, steps: int = 200, lr: float = 0.05,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise z (B, noise_dim) whose G(z, labels) is nearest `codes` (B, C) by cosine, by Adam from a
    draw of N(0, I) (seeded by `generator`). Each row's loss is its own: rows do not interact."""
    dev = codes.device
    z = torch.randn(codes.size(0), gen.noise_dim, generator=generator).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    was = [p.requires_grad for p in gen.parameters()]
    gen.requires_grad_(False)  # only z is fitted
    try:
        with torch.enable_grad():
            for _ in range(steps):
                loss = (1 - F.cosine_similarity(gen(z, labels), codes, dim=-1)).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        for p, r in zip(gen.parameters(), was):
            p.requires_grad_(r)
    return z.detach()


@torch.no_grad()
def move(codes: torch.Tensor, from_labels: torch.Tensor, to_labels: torch.Tensor, strength: float, method: str,
         gen: Generator, kind: str, means: torch.Tensor | None = None, steps: int = 200,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Codes (B, C) moved toward their target sentiments (B,) by `method` (see the module's docstring).
    Rows whose target is their source's sentiment move by the same rule (mean: not at all; invert:
    toward the generator's own code for it)."""
    if method not in METHODS:
        raise ValueError(f"unknown rewrite method {method!r} (use {' or '.join(METHODS)})")
    if method == "mean":
        means = class_means(gen) if means is None else means
        return along_direction(codes, to_labels - from_labels, strength, means, kind)  # +1, -1, or 0: stay
    z = invert(gen, codes, from_labels, steps, generator=generator)
    return into_space(codes + strength * (gen(z, to_labels) - gen(z, from_labels)), kind)


def along_direction(codes: torch.Tensor, sign: torch.Tensor, strength: float, means: torch.Tensor,
                    kind: str) -> torch.Tensor:
    """codes (B, C) + strength * sign (B,) * the generator's sentiment direction (means[1] - means[0]),
    back in the code space: sign +1 moves a code toward positive, -1 toward negative."""
    return into_space(codes + strength * sign.to(codes.dtype)[:, None] * (means[1] - means[0]), kind)


def push(codes: torch.Tensor, labels: torch.Tensor, strength: float, means: torch.Tensor, kind: str) -> torch.Tensor:
    """Generated codes (B, C) moved `strength` along the generator's sentiment direction toward their
    own labels (B,), back in the code space: `mean`'s move with the other sentiment as the source.
    Decoding blurs a code's sentiment (a reconstruction reads as its source's label less often than
    the source does), so a generated code can start a little further out than the generator puts it."""
    return along_direction(codes, 2 * labels - 1, strength, means, kind)


def path_between(a: torch.Tensor, b: torch.Tensor, steps: int, kind: str) -> torch.Tensor:
    """`steps` evenly spaced codes from a to b (C,), ends included -> (steps, C): along the great
    circle for unit-length codes (slerp), along the line otherwise."""
    t = torch.linspace(0, 1, steps, dtype=a.dtype, device=a.device)[:, None]
    if kind == "l2":
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        omega = torch.arccos((a @ b).clamp(-1 + 1e-7, 1 - 1e-7))
        if float(omega) > 1e-4:
            return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
    return (1 - t) * a + t * b


def fit_length(text: str, count, limit: int) -> tuple[str, str | None]:
    """Cleaned text cut to at most `limit` tokens (count(text) -> tokens) at a sentence boundary, or
    at a word boundary when its first sentence alone is longer. -> (text, note or None)."""
    if count(text) <= limit:
        return text, None
    sentences = split_sentences(text)
    kept = ""
    for s in sentences:
        longer = f"{kept} {s}".strip()
        if count(longer) > limit:
            break
        kept = longer
    if kept:
        n = len(split_sentences(kept))
        return kept, f"cut to its first {n} of {len(sentences)} sentences (the model reads {limit} tokens)"
    words = text.split()
    lo, hi = 1, len(words)  # the most words of the first sentence that fit (count grows with words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count(" ".join(words[:mid])) <= limit else (lo, mid - 1)
    return " ".join(words[:lo]), f"cut within its first sentence, after {lo} words (the model reads {limit} tokens)"


def copy_bonus(source: list[int], written: list[int], vocab: int, bonus: float) -> list[float]:
    """SourceCopy's bias for one row, as its definition reads: the reference the tests hold the
    batched version to. source: the source's token ids; written: the tokens written so far.
    -> the bonus of each of the vocab's tokens at the next step."""
    unused = [True] * len(source)
    for t in written:  # each written token uses up its earliest unused occurrence in the source
        for j, s in enumerate(source):
            if s == t and unused[j]:
                unused[j] = False
                break
    out = [0.0] * vocab
    for j in range(1, len(source)):
        if unused[j] and written and source[j - 1] == written[-1]:
            out[source[j]] = bonus
    return out


class SourceCopy:
    """A decoding bias toward the source's own wording: the decoder's `steer` (autoencoder.decode_loop).

    A code keeps what a review is about more than how it says it, so a decoded code paraphrases.
    This lets a rewrite keep the source's phrasing where the moved code allows it: whenever the
    rewrite has just written a word of the source, the word that follows it in the source gets
    `bonus` added to its logit, so a run of the source's words, once begun, tends to go on in the
    source's order. The decoder still picks every word; the code decides the opinion, and a far
    enough sentiment move outweighs the bias. Each occurrence in the source is used up once written,
    so a copied run is not pushed twice. (A bonus for every source word, wherever it falls, raises
    BLEU further but breaks sentences: docs/RESULTS.md.)

    sources: token ids of each row's source (B lists). Sliced by rows (copy[rows]) for decoding a
    batch in parts."""

    def __init__(self, sources: list[list[int]], bonus: float, device="cpu"):
        width = max(1, max((len(s) for s in sources), default=1))
        self.ids = torch.zeros(len(sources), width, dtype=torch.long, device=device)
        self.valid = torch.zeros(len(sources), width, dtype=torch.bool, device=device)
        for i, s in enumerate(sources):
            self.ids[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
            self.valid[i, :len(s)] = True
        self.unused = self.valid.clone()
        self.bonus = float(bonus)

    def __getitem__(self, rows) -> SourceCopy:
        part = SourceCopy.__new__(SourceCopy)
        part.ids, part.valid, part.unused, part.bonus = self.ids[rows], self.valid[rows], self.unused[rows], self.bonus
        return part

    def __call__(self, logits: torch.Tensor, previous: torch.Tensor, rows: torch.Tensor) -> None:
        """Add the bias to logits (b, V) in place. previous (b,): each row's last token (the start
        token at the first step, never a source token); rows (b,): the rows being decoded."""
        ids, unused = self.ids[rows], self.unused[rows]
        match = self.valid[rows] & (ids == previous[:, None])  # (b, L): where the source has the token just written
        written = match & unused
        unused &= ~(written & (written.cumsum(1) == 1))  # the earliest unused occurrence is the one used up
        self.unused[rows] = unused
        after = torch.zeros_like(match)
        after[:, 1:] = match[:, :-1]  # the source's words right after an occurrence of it
        boosted = logits.gather(1, ids) + (after & unused).to(logits.dtype) * self.bonus
        logits.scatter_reduce_(1, ids, boosted, "amax")  # amax: a word that follows in two places gets it once
