"""What the Python API takes and gives: the records it returns (Review, Rewrite, Reading), a validated
generation Request, the bounds of its arguments and the checks that enforce them alike wherever they
enter (CLI, Python, HTTP), and the seeded random stream of a request."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .config import RANGES, ConfigError
from .data import SENTIMENTS

MAX_GENERATE = 100_000  # per call; more is almost certainly a typo
MAX_REWRITE = 10_000  # texts per rewrite call
MAX_STEPS = 50  # codes per interpolation
REWRITE_TARGETS = ("positive", "negative", "flip")


@dataclass
class Request:
    """One validated generation request (see ReviewGAN.request)."""
    label: int
    n: int
    generator: torch.Generator
    greedy: bool
    temperature: float
    top_p: float
    max_len: int


@dataclass
class Review:
    sentiment: str
    text: str
    tokens: int
    ended: bool

    def to_dict(self) -> dict:
        return {"sentiment": self.sentiment, "text": self.text, "tokens": self.tokens, "ended": self.ended}


@dataclass
class Rewrite:
    """One review rewritten: `source` as given, `text` the rewrite, `sentiment_from` what the source
    was taken to be (given, or the model's reading, which `note` then says), `to` the target.
    When the model read the source's sentiment: `p_positive`, its reader's probability that the
    source is positive (None for a model without a reader), and `unclear`, whether the model cannot
    tell (ReviewGAN.read; `note` says why)."""
    source: str
    text: str
    sentiment_from: str
    to: str
    note: str | None = None
    read: str | None = None  # the part of the source the model read, when it was cut to fit
    p_positive: float | None = None
    unclear: bool | None = None  # None: the source's sentiment was given, not read

    def to_dict(self) -> dict:
        d = {"source": self.source, "text": self.text, "from": self.sentiment_from, "to": self.to}
        if self.note:
            d["note"] = self.note
        if self.read is not None:
            d["read"] = self.read
        if self.p_positive is not None:
            d["p_positive"] = self.p_positive
        if self.unclear is not None:
            d["unclear"] = self.unclear
        return d


@dataclass
class Reading:
    """The model's reading of one text's sentiment (ReviewGAN.read)."""
    sentiment: str
    p_positive: float | None  # the reader's probability of positive; None for a model without a reader
    unclear: str | None = None  # why the model cannot tell this text's sentiment (rewrite.why_unclear), or None

    def unclear_note(self) -> str:
        """The reading's doubt in words, e.g. "the model cannot tell this text's sentiment (p_positive 0.52;
        within 0.15 of 0.5)"."""
        p = [] if self.p_positive is None else [f"p_positive {self.p_positive:.2f}"]
        return f"the model cannot tell this text's sentiment ({'; '.join(p + [self.unclear])})"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(name, str) or name.split(":")[0] not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r} (use cpu, cuda or auto)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but no CUDA GPU is available")
    return torch.device(name)


# Decoding options a caller may pass, checked alike wherever they enter (CLI, Python, HTTP), within the
# bounds the config itself allows (config.RANGES). Temperature: below 0.01 the logits / T overflow to a
# one-token distribution; above 100 it is uniform noise.
_SAMPLE = {key: (lo, hi) for section, key, lo, hi in RANGES if section == "sample"}
TEMPERATURE, TOP_P, MAX_TOKENS = _SAMPLE["temperature"], _SAMPLE["top_p"], _SAMPLE["max_len"][1]
_REWRITE = {key: (lo, hi) for section, key, lo, hi in RANGES if section == "rewrite"}
STRENGTH, COPY = _REWRITE["strength"], _REWRITE["copy"]


def check_int(value, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):  # ints and numpy ints, not 2.7 or "3"
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    value = int(value.__index__())
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def seeded_generator(seed: int, device="cpu") -> torch.Generator:
    """A torch.Generator for a seed in 0..2**63-1, each seed its own stream.

    manual_seed keeps only the low 32 bits of a seed for the CPU's Mersenne Twister (seeds 0 and 2**32
    draw the same numbers). Below 2**32 this is manual_seed itself, so those seeds draw what they always
    have; from 2**32 up, the twister's 624-word state is filled from numpy's SeedSequence of the whole
    integer (a hash of it), as numpy seeds its own generators. A CUDA generator (Philox) keeps all 64 bits."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    if seed < 2**32 or g.device.type != "cpu":
        return g
    # The CPU generator's state (torch 2.x, CPUGeneratorImplStateLegacy): the seed (u64), `left` (i32),
    # `seeded` (i32), `next` (u64), then the 624 state words, each in a u64. `left` = 1 makes the first
    # draw regenerate the whole state from these words, as after manual_seed.
    state = g.get_state().numpy().copy()
    words = np.random.SeedSequence(seed).generate_state(_MT_WORDS, dtype=np.uint32).astype(np.uint64)
    state[_MT_OFFSET:_MT_OFFSET + 8 * _MT_WORDS] = words.view(np.uint8)
    g.set_state(torch.from_numpy(state))
    return g


_MT_WORDS, _MT_OFFSET = 624, 24


def check_number(value, name: str, lo: float, hi: float) -> float:
    """A finite int or float (not a bool, not a string) in [lo, hi] -> float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def check_texts(texts, who: str) -> list[str]:
    """One string, or a non-empty list or tuple of strings -> a list of them."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{who} takes a non-empty list of strings")
    return list(texts)


def check_decoding(greedy, temperature, top_p, max_len) -> tuple:
    """-> (greedy, temperature, top_p, max_len) validated; None stays None (the model's default)."""
    if greedy is not None and not isinstance(greedy, bool):
        raise ValueError(f"greedy must be True, False or None, got {greedy!r}")
    if temperature is not None:
        temperature = check_number(temperature, "temperature", *TEMPERATURE)
    if top_p is not None:
        top_p = check_number(top_p, "top_p", *TOP_P)
    if max_len is not None:
        max_len = check_int(max_len, "max_len", 1, MAX_TOKENS)
    return greedy, temperature, top_p, max_len


def parse_sentiment(sentiment) -> int:
    if isinstance(sentiment, str) and sentiment.lower() in SENTIMENTS:
        return SENTIMENTS.index(sentiment.lower())
    if sentiment in (0, 1) and not isinstance(sentiment, bool):
        return int(sentiment)
    raise ValueError(f"unknown sentiment {sentiment!r} (use positive or negative)")
