"""The Python API: `ReviewGAN` bundles tokenizer, stage-1 model (either family), generator and critic
of one model directory.

    from reviewgan import ReviewGAN
    model = ReviewGAN.from_pretrained()             # the bundled model, or a directory from `reviewgan train`
    model.generate("positive", n=3, seed=0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .autoencoder import Autoencoder, drop_rows
from .base import Base, load_base
from .checkpoint import READER_FILE, ModelError, check_header, load_weights, read_model_config, stage1_file
from .config import RANGES, Config, ConfigError
from .data import SENTIMENTS, clean_text
from .gan import Critic, Generator, Reader
from .lm import ConditionalLM
from .precision import compute_dtype
from .pretrained import PretrainedAutoencoder, limit_heap_fragmentation, limit_kernel_cache, release_free_memory
from .rewrite import (METHODS, SourceCopy, class_means, fit_length, move, path_between, push, read_sentiment,
                      why_unclear)
from .tokenizer import Tokenizer
from .units import encode_unit

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


def _rows_of_requests(cancelled: Callable[[], Collection[int]], owner: torch.Tensor) -> Callable:
    """A batch's `cancelled() -> request indices` as the decoders' `drop() -> (B,) bools or None`:
    owner (B,) holds each row's request."""
    def drop():
        gone = cancelled()
        return torch.isin(owner, torch.tensor(sorted(gone), dtype=torch.long, device=owner.device)) if gone else None
    return drop


def _live(drop: Callable | None) -> torch.Tensor | None:
    """(B,) bools of the rows `drop` has not dropped; None when there is no drop or it drops none."""
    gone = None if drop is None else drop()
    return None if gone is None else ~gone


def default_model_dir() -> Path | None:
    """The bundled model, if this install ships one (see pretrained/)."""
    for p in (Path(__file__).resolve().parent / "pretrained", Path(__file__).resolve().parent.parent / "pretrained"):
        if (p / "config.json").exists():
            return p
    return None


def build_models(cfg: Config, vocab_size: int, base: Base | None = None, dtype: torch.dtype = torch.bfloat16):
    """-> stage-1 model (the LSTM autoencoder, the pretrained decoder on `base` computing in `dtype`, or
    the LM baseline), generator, critic (None for the LM)."""
    if cfg.model == "lm":
        return ConditionalLM(vocab_size, cfg.ae), None, None
    ae = PretrainedAutoencoder(cfg.ae, base, dtype) if cfg.ae.family == "pretrained" else Autoencoder(vocab_size, cfg.ae)
    gen = Generator(cfg.gan, cfg.ae.code_dim, ae.code_kind)
    critic = Critic(cfg.gan, cfg.ae.code_dim)
    return ae, gen, critic


def base_of(cfg: Config, meta: dict, path: Path, weights: bool = True) -> Base:
    """The base model a pretrained-family model directory names, checked against its sha256."""
    sha = (meta.get("base") or {}).get("sha256")
    if not isinstance(sha, str):
        raise ModelError(f"{path}: config.json names no base model (its sha256) for the pretrained decoder")
    return load_base(cfg.ae.base, sha, weights=weights, respace=not cfg.data.spaced_sentences)


def load_spec(path: Path) -> tuple[Config, Tokenizer, dict]:
    """A model directory's config and tokenizer, validated, without its weights. Reading never changes
    the folder (a run being trained may be writing it); only its writer rolls a checkpoint forward."""
    meta = read_model_config(path)
    try:
        cfg = Config.from_dict(meta["config"])
    except (ConfigError, KeyError, TypeError) as e:
        raise ModelError(f"{path}: config.json holds an invalid config ({e})") from None
    if cfg.ae.family == "pretrained":  # the tokenizer is the base model's, which config.json pins
        return cfg, base_of(cfg, meta, path, weights=False).tokenizer, meta
    try:
        tokenizer = Tokenizer.from_file(path / "tokenizer.json")
    except Exception as e:  # tokenizers raises its own Exception subclass
        raise ModelError(f"{path}: missing or invalid tokenizer.json ({str(e)[:100]})") from None
    if tokenizer.vocab_size > cfg.data.vocab_size + 16:
        raise ModelError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens, config allows {cfg.data.vocab_size}")
    return cfg, tokenizer, meta


class ReviewGAN:
    def __init__(self, cfg: Config, tokenizer: Tokenizer, autoencoder: Autoencoder,
                 generator: Generator | None = None, critic: Critic | None = None, device="cpu", path=None,
                 reader: Reader | None = None):
        self.cfg, self.tokenizer, self.autoencoder = cfg, tokenizer, autoencoder
        self.generator, self.critic, self.reader = generator, critic, reader
        self.device = torch.device(device)
        self.path = path
        self._means = None  # the generator's class means, computed on first use (class_means)
        for m in (autoencoder, generator, critic, reader):
            if m is not None:
                m.to(self.device).eval()

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str = "cpu", dtype: str = "auto") -> ReviewGAN:
        """Load a model directory written by `reviewgan train` (or the bundled model if `path` is None).
        dtype: auto | bf16 | fp32, the precision it computes in (precision.compute_dtype: auto is bf16
        where the matrix units have it natively); the weights on disk are the same in either."""
        if path is None:
            path = default_model_dir()
            if path is None:
                raise ModelError("no model given and no bundled model is installed: pass --model DIR "
                                 "(train one with: reviewgan train --preset tiny --out runs/tiny)")
        path = Path(path)
        cfg, tokenizer, meta = load_spec(path)
        dev = resolve_device(device)
        precision = compute_dtype(dtype, dev)
        if cfg.ae.family == "pretrained":  # generation's memory (pretrained.py)
            limit_kernel_cache()
            limit_heap_fragmentation()
        base = base_of(cfg, meta, path) if cfg.ae.family == "pretrained" else None
        stages = meta.get("stages", [])
        with torch.device("meta"):  # shapes only: the files' headers are checked before anything is allocated
            shapes = build_models(cfg, tokenizer.vocab_size, base, precision)
        files = [stage1_file(cfg)] + (["generator.safetensors"] if shapes[1] is not None and "gan" in stages else [])
        for module, name in zip(shapes, files):
            check_header(module, path / name)
        ae, gen, critic = build_models(cfg, tokenizer.vocab_size, base, precision)
        load_weights(ae, path / stage1_file(cfg), dev)
        if base is not None:
            ae.merge_lora()  # generation only from here: LoRA folded into the base weights
        if gen is not None and "gan" in stages:
            load_weights(gen, path / "generator.safetensors", dev)
            if (path / "critic.safetensors").exists():  # a released model may drop the critic
                load_weights(critic, path / "critic.safetensors", dev)
            else:
                critic = None
        else:
            gen = critic = None
        reader = None
        if gen is not None and (path / READER_FILE).exists():  # models trained before the reader have none
            reader = Reader(cfg.ae.code_dim)
            load_weights(reader, path / READER_FILE, dev)
        return cls(cfg, tokenizer, ae, gen, critic, dev, path, reader)

    # ------------------------------------------------------------------ generation

    def generate(self, sentiment="positive", n: int = 1, seed: int | None = None, greedy: bool | None = None,
                 temperature: float | None = None, top_p: float | None = None, max_len: int | None = None,
                 records: bool = False, batch_size: int = 1000, swap_decoder_sentiment: bool = False):
        """Write `n` reviews of the given sentiment. Same seed, same reviews.

        Decoding defaults come from the model's config (`sample` section). swap_decoder_sentiment: give
        a decoder that takes a sentiment input the other one (the generator still gets the request):
        what evaluation's code-only figures measure.
        """
        req = self.request(sentiment, n, seed, greedy, temperature, top_p, max_len)
        out = []
        for start in range(0, req.n, batch_size):  # each chunk draws on from the request's generator
            out += self.generate_batch([req], rows=min(batch_size, req.n - start), swap=swap_decoder_sentiment)[0]
        return out if records else [r.text for r in out]

    @property
    def decoder_takes_sentiment(self) -> bool:
        """Whether the decoder reads the sentiment besides the code (the LSTM family's ae.label_to_decoder)."""
        return not self.is_lm and self.cfg.ae.family == "lstm" and self.cfg.ae.label_to_decoder

    def request(self, sentiment="positive", n: int = 1, seed: int | None = None, greedy: bool | None = None,
                temperature: float | None = None, top_p: float | None = None, max_len: int | None = None) -> Request:
        """Validate one generation request and fill in the model's decoding defaults."""
        label = parse_sentiment(sentiment)
        if self.generator is None and not self.is_lm:
            raise ModelError(f"{self.path}: this model has no generator yet (train the gan stage)")
        if self.screens and self.reader is None:
            raise ModelError(f"{self.path}: sample.screen needs the model's sentiment reader ({READER_FILE}), "
                             "which it lacks: set sample.screen=0, or fit one with `reviewgan train --resume "
                             "--out RUN` on its training run")
        n = check_int(n, "n", 1, MAX_GENERATE)
        greedy, temperature, top_p, max_len = check_decoding(greedy, temperature, top_p, max_len)
        s = self.cfg.sample
        greedy = s.greedy if greedy is None else greedy
        temperature = s.temperature if temperature is None else temperature
        top_p = s.top_p if top_p is None else top_p
        max_len = (s.max_len or self.cfg.data.max_len) if max_len is None else max_len
        seed = int(torch.randint(2**62, (1,)).item()) if seed is None else check_int(seed, "seed", 0, 2**63 - 1)
        return Request(label, n, seeded_generator(seed, self.device), greedy, temperature, top_p, max_len)

    @torch.no_grad()
    def generate_batch(self, requests: list[Request], rows: int | None = None, swap: bool = False,
                       cancelled: Callable[[], Collection[int]] | None = None) -> list[list[Review] | None]:
        """Decode several requests as one batch (the server's micro-batching).

        What a request's reviews depend on is its own: its noise and every sampling number are drawn
        from its own seeded generator, up front, in the same order alone or in a batch (tested bit for
        bit). What can differ is the arithmetic: matrix products of a larger batch may sum in another
        order and round the last bit differently, and where that moves a cumulative probability across
        the sampled number, one token, and so the rest of that review, changes. `python -m
        reviewgan.loadtest --check-alone K` measures how often. `rows`: draw this many reviews per
        request instead of request.n.

        `cancelled() -> indices into requests` (the server's: requests whose clients went away) is asked
        between decoding steps; a cancelled request's rows leave the batch as ended rows do, the screen
        draws none of them again, and its entry in the result is None. The other requests' reviews are
        those of a run without it, up to the rounding a smaller batch can bring (above).
        """
        dev, max_len = self.device, max(r.max_len for r in requests)
        counts = [rows or r.n for r in requests]
        # owner (B,): each row's request
        owner = torch.repeat_interleave(torch.arange(len(requests), device=dev), torch.tensor(counts, device=dev))
        drop = None if cancelled is None else _rows_of_requests(cancelled, owner)
        z, u, labels, temp, top_p, greedy = [], [], [], [], [], []
        for r, b in zip(requests, counts):
            if not self.is_lm:
                z.append(self._noise(r, b))
            u.append(self._uniforms(r, b, max_len))
            labels += [r.label] * b
            temp += [r.temperature] * b
            top_p += [r.top_p] * b
            greedy += [r.greedy] * b
        labels = torch.tensor(labels, dtype=torch.long, device=dev)
        kw = dict(greedy=torch.tensor(greedy, device=dev), temperature=torch.tensor(temp, device=dev)[:, None],
                  top_p=torch.tensor(top_p, device=dev)[:, None], uniforms=torch.cat(u))
        if self.is_lm:
            ids, ended = self.autoencoder.generate(labels, max_len, **kw, drop=drop)
        else:
            to_decoder = 1 - labels if swap else labels
            ids, ended = self._decode_noise(torch.cat(z), labels, to_decoder, max_len, kw, drop)
            if self.screens:
                ids, ended = self._screen(requests, owner, labels, to_decoder, ids, ended, max_len, kw, drop)
        gone = set(cancelled()) if cancelled is not None else set()
        out, i = [], 0
        for k, (r, b) in enumerate(zip(requests, counts)):
            if k in gone:
                out.append(None)
                i += b
                continue
            # A request with a shorter max_len than the batch's: cut its rows where it would have stopped.
            cut = [x[:r.max_len] for x in ids[i:i + b]]
            ends = [e and len(x) < r.max_len for x, e in zip(ids[i:i + b], ended[i:i + b])]
            out.append(self._reviews(cut, ends, SENTIMENTS[r.label]))
            i += b
        return out

    def _noise(self, r: Request, rows: int) -> torch.Tensor:
        """The generator's noise for `rows` reviews of request r, from its own generator."""
        z = torch.randn(rows, self.cfg.gan.noise_dim, generator=r.generator, device=self.device)
        return z * self.cfg.sample.noise_scale

    def _uniforms(self, r: Request, rows: int, max_len: int) -> torch.Tensor:
        """The sampling numbers of `rows` reviews of request r, padded from its max_len to the batch's."""
        u = torch.rand(rows, r.max_len, generator=r.generator, device=self.device)
        return torch.nn.functional.pad(u, (0, max_len - r.max_len), value=0.5)

    def _decode_noise(self, z, labels, to_decoder, max_len, kw, drop=None):
        """Generator noise (B, noise_dim) and requested labels (B,) -> decoded rows, ended flags.
        drop: the decoder's (autoencoder.decode_loop)."""
        codes = self.generator(z, labels)
        if self.cfg.sample.push:
            codes = push(codes, labels, self.cfg.sample.push, self.class_means(), self.autoencoder.code_kind)
        return self.autoencoder.generate(codes, max_len, labels=to_decoder, **kw, drop=drop)

    @property
    def screens(self) -> bool:
        """Whether generation screens its reviews: sample.screen > 0 on a GAN model (see _screen)."""
        return not self.is_lm and self.cfg.sample.screen > 0

    def _screen(self, requests, owner, labels, to_decoder, ids, ended, max_len, kw, drop=None):
        """sample.screen: each review is encoded back into a code and read by the model's Reader; one
        that reads as its requested sentiment with a probability below sample.screen is drawn again
        (new noise, new sampling numbers), up to sample.screen_tries draws in all, and the draw read
        most clearly is kept. Decoding blurs a code's sentiment, and this is the one place that sees
        the review that came out. Redraws come from each request's own generator, in row order, after
        its first draws: a request's reviews still depend on the request alone. Rows that `drop` (the
        decoder's) says have left are neither read nor drawn again."""
        s = self.cfg.sample
        ids, ended = list(ids), list(ended)  # owner (B,): each row's request
        cut = [requests[i].max_len for i in owner.tolist()]
        score = self._reads_as(ids, cut, labels, _live(drop))
        for _ in range(s.screen_tries - 1):
            redo = torch.nonzero(score < s.screen).squeeze(1)
            live = _live(drop)
            if live is not None:
                redo = redo[live[redo]]
            if len(redo) == 0:
                break
            z, u = [], []
            for i, r in enumerate(requests):  # rows are grouped by request, so this keeps redo's order
                k = int((owner[redo] == i).sum())
                if k:
                    z.append(self._noise(r, k))
                    u.append(self._uniforms(r, k, max_len))
            again = dict(greedy=kw["greedy"][redo], temperature=kw["temperature"][redo], top_p=kw["top_p"][redo],
                         uniforms=torch.cat(u))
            sub = drop_rows(drop, redo)
            new_ids, new_ended = self._decode_noise(torch.cat(z), labels[redo], to_decoder[redo], max_len, again, sub)
            new_score = self._reads_as(new_ids, [cut[j] for j in redo.tolist()], labels[redo], _live(sub))
            for j, row in enumerate(redo.tolist()):
                if new_score[j] > score[row]:
                    ids[row], ended[row], score[row] = new_ids[j], new_ended[j], new_score[j]
        return ids, ended

    def _reads_as(self, rows, cut, labels, live=None) -> torch.Tensor:
        """The Reader's probability that each decoded row (cut to its request's max_len) has its label.
        live: (B,) bools, the rows to read; the others are not read and score 1 (never drawn again)."""
        if live is not None and not bool(live.all()):
            score = torch.ones(len(rows), device=labels.device)
            idx = live.nonzero().squeeze(1).tolist()
            if idx:
                score[idx] = self._reads_as([rows[j] for j in idx], [cut[j] for j in idx], labels[idx])
            return score
        texts = [clean_text(self.tokenizer.decode(r[:c]), self.cfg.data.lowercase) for r, c in zip(rows, cut)]
        p = self.reader(self.autoencoder.read_texts(texts, self.tokenizer, self.cfg.data.max_len, self.device))
        release_free_memory()  # the decode's and the reading's freed buffers, before a redraw decodes
        return torch.where(labels == 1, p, 1 - p)

    def _reviews(self, rows, ended, sentiment):
        return [Review(sentiment, self.tokenizer.decode(r), len(r) + int(e), e) for r, e in zip(rows, ended)]

    @property
    def is_lm(self) -> bool:
        return self.cfg.model == "lm"

    # ------------------------------------------------------------------ autoencoder

    def encode(self, texts) -> torch.Tensor:
        """Texts (a list of strings, or one string) -> codes (N, code_dim). Texts are cleaned and cut
        to max_len tokens like training data."""
        if self.is_lm:
            raise ModelError("the LM baseline has no autoencoder: encode/decode need a GAN model")
        texts = [clean_text(t, self.cfg.data.lowercase) for t in check_texts(texts, "encode")]
        return self.autoencoder.encode_texts(texts, self.tokenizer, self.cfg.data.max_len, self.device)

    def decode(self, codes, greedy: bool = True, temperature: float = 1.0, top_p: float = 1.0,
               max_len: int | None = None, seed: int = 0, sentiment=None) -> list[str]:
        """Codes (N, code_dim), or one code (code_dim,): a tensor, an array or nested lists -> texts.
        A model whose decoder is conditioned on the sentiment (ae.label_to_decoder) needs it."""
        if self.is_lm:
            raise ModelError("the LM baseline has no autoencoder: encode/decode need a GAN model")
        greedy, temperature, top_p, max_len = check_decoding(greedy, temperature, top_p, max_len)
        seed = check_int(seed, "seed", 0, 2**63 - 1)
        try:  # numpy arrays, lists and float64 welcome: the code space is float32
            codes = torch.as_tensor(np.asarray(codes) if not torch.is_tensor(codes) else codes, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError("codes must be numbers: a tensor, an array or lists of shape (N, code_dim)") from None
        if codes.dim() == 1:
            codes = codes[None]
        dim = self.cfg.ae.code_dim
        if codes.dim() != 2 or codes.size(1) != dim or codes.size(0) == 0:
            raise ValueError(f"codes must have shape (N, {dim}), got {tuple(codes.shape)}")
        if not bool(torch.isfinite(codes).all()):
            raise ValueError("codes must be finite (no NaN or infinity)")
        g = seeded_generator(seed, self.device)
        max_len = max_len or self.cfg.data.max_len
        labels = None
        if sentiment is not None:
            labels = torch.full((codes.size(0),), parse_sentiment(sentiment), dtype=torch.long, device=self.device)
        elif self.decoder_takes_sentiment:
            raise ValueError("this model's decoder is conditioned on the sentiment: pass sentiment=")
        rows, ended = self.autoencoder.generate(codes.to(self.device), max_len, greedy, temperature, top_p, g, labels)
        return [r.text for r in self._reviews(rows, ended, sentiment or "")]

    # ------------------------------------------------------------------ moving codes (rewrite.py)

    def _sources(self, texts, who: str) -> tuple[list[str], list[str | None]]:
        """Texts as given -> (cleaned texts cut to the model's length, a note for each cut one)."""
        texts = check_texts(texts, who)
        if len(texts) > MAX_REWRITE:
            raise ValueError(f"at most {MAX_REWRITE} texts per call, got {len(texts)}")
        limit = self.cfg.data.max_len - 1  # the training length, [END] excluded
        count = lambda t: len(self.tokenizer.encode(t))  # noqa: E731
        read, notes = [], []
        for i, t in enumerate(texts, 1):
            where = "" if len(texts) == 1 else f"text {i}: "
            if not t.strip():
                raise ValueError(f"{where}the text is empty")
            cleaned = clean_text(t, self.cfg.data.lowercase)
            if not cleaned:
                raise ValueError(f"{where}the text is empty after cleaning (markup or control characters only)")
            fitted, note = fit_length(cleaned, count, limit)
            read.append(fitted)
            notes.append(note)
        return read, notes

    def _need_generator(self, what: str) -> None:
        if self.is_lm:
            raise ModelError(f"the LM baseline has no codes: {what} needs a GAN model")
        if self.generator is None:
            raise ModelError(f"{self.path}: {what} needs the GAN's generator (train the gan stage)")

    def class_means(self) -> torch.Tensor:
        """(2, code_dim): the generator's mean code of each sentiment (negative, positive), computed once."""
        self._need_generator("the sentiment direction")
        if self._means is None:
            self._means = class_means(self.generator)
        return self._means

    def read(self, texts) -> list[Reading]:
        """The model's own reading of each text's sentiment: its reader's p_positive, and whether it
        cannot tell (a Reading each; see _read)."""
        read, _ = self._sources(texts, "read")
        return self._read(read, self._codes(read))

    def read_sentiment(self, texts) -> list[str]:
        """The model's own reading of texts: 'positive' or 'negative' each (read)."""
        return [r.sentiment for r in self.read(texts)]

    def _read(self, read: list[str], codes: torch.Tensor) -> list[Reading]:
        """Cleaned texts and their codes (N, C) -> a Reading each: positive when the reader's p_positive
        is above 0.5, and why the model cannot tell, if it cannot (rewrite.why_unclear).

        The reader's probability can be taken at its word on real reviews: it is a logistic regression
        fit on the codes of every training unit (gan.fit_reader), and on held-out validation chunks it
        is calibrated (for the bundled model, of the chunks it gives 0.8-0.9, 0.84 are positive; of those
        at 0.3-0.4, 0.38; expected calibration error 0.034; only below 0.2 is it too sure, 0.28 positive:
        docs/RESULTS.md). Off real reviews it is not, which why_unclear's word counts are for. A model
        without a reader (trained before 0.6.0) is read by the side of the generator's class means its
        codes lie on, with no probability."""
        self._need_generator("reading a sentiment")
        if self.reader is None:
            labels, ps = read_sentiment(codes, self.class_means()).tolist(), [None] * len(read)
        else:
            with torch.no_grad():
                ps = self.reader(codes).tolist()
            labels = [int(p > 0.5) for p in ps]
        rc = self.cfg.rewrite
        return [Reading(SENTIMENTS[y], None if p is None else round(p, 4),
                        why_unclear(t, p, rc.unclear_band, rc.min_words, rc.min_distinct))
                for t, y, p in zip(read, labels, ps)]

    def _codes(self, read: list[str]) -> torch.Tensor:
        return self.autoencoder.encode_texts(read, self.tokenizer, self.cfg.data.max_len, self.device)

    def rewrite_decoding(self, greedy=None, temperature=None, top_p=None) -> tuple[bool, float, float]:
        """How rewrites and interpolations are decoded: the config's `rewrite` section, unless told
        otherwise (a temperature or top_p asked for implies sampling). -> (greedy, temperature, top_p)."""
        greedy, temperature, top_p, _ = check_decoding(greedy, temperature, top_p, None)
        rc = self.cfg.rewrite
        if greedy is None:
            greedy = rc.greedy and temperature is None and top_p is None
        return greedy, rc.temperature if temperature is None else temperature, 1.0 if top_p is None else top_p

    def _decode_codes(self, codes, labels, greedy, temperature, top_p, g, steer=None) -> list[str]:
        max_len = self.cfg.sample.max_len or self.cfg.data.max_len
        rows, ended = self.autoencoder.generate(codes, max_len, greedy, temperature, top_p, g,
                                                labels if self.decoder_takes_sentiment else None, steer=steer)
        return [self.tokenizer.decode(r) for r in rows]

    def rewrite(self, texts, to="flip", strength: float | None = None, sentiments=None, method: str | None = None,
                seed: int = 0, greedy: bool | None = None, temperature: float | None = None,
                top_p: float | None = None, copy: float | None = None) -> list[Rewrite]:
        """Rewrite reviews into a sentiment: encode each, move its code (rewrite.py), decode it.

        to: positive, negative or flip (each into the other sentiment). sentiments: the sources' own
        sentiments, one per text (None for any the model should read itself, which the record's note
        says). strength, method: how far and how the code moves; copy: how strongly the decoder
        is drawn to continue the source's runs of words (rewrite.SourceCopy; 0: the moved code decoded
        alone); decoding: the config's `rewrite` section unless given (rewrite_decoding). Same seed,
        same rewrites. A text longer than the model's length is cut at a sentence boundary (noted).
        """
        self._need_generator("rewrite")
        if not isinstance(to, str) or to.lower() not in REWRITE_TARGETS:
            raise ValueError(f"unknown target {to!r} (use positive, negative or flip)")
        rc = self.cfg.rewrite
        method = rc.method if method is None else method
        if method not in METHODS:
            raise ValueError(f"unknown rewrite method {method!r} (use {' or '.join(METHODS)})")
        strength = check_number(rc.strength if strength is None else strength, "strength", *STRENGTH)
        copy = check_number(rc.copy if copy is None else copy, "copy", *COPY)
        decoding = self.rewrite_decoding(greedy, temperature, top_p)
        seed = check_int(seed, "seed", 0, 2**63 - 1)
        read, notes = self._sources(texts, "rewrite")
        originals = [texts] if isinstance(texts, str) else texts
        given = [None] * len(read) if sentiments is None else list(sentiments)
        if len(given) != len(read):
            raise ValueError(f"sentiments: {len(given)} given for {len(read)} texts")
        codes = self._codes(read)
        own = self._read(read, codes)
        src = [SENTIMENTS.index(own[i].sentiment) if s is None else parse_sentiment(s) for i, s in enumerate(given)]
        for i, r in enumerate(own):  # flip guesses no sentiment the model cannot tell
            if to.lower() == "flip" and given[i] is None and r.unclear:
                where = "" if len(read) == 1 else f"text {i + 1}: "
                raise ValueError(f"{where}{r.unclear_note()}: give the source's sentiment to flip it, or ask for "
                                 "positive or negative")
        dst = [1 - y if to.lower() == "flip" else SENTIMENTS.index(to.lower()) for y in src]
        g = seeded_generator(seed, self.device)
        src_t, dst_t = (torch.tensor(x, dtype=torch.long, device=self.device) for x in (src, dst))
        moved = move(codes, src_t, dst_t, strength, method, self.generator, self.autoencoder.code_kind,
                     self.class_means(), rc.invert_steps, g)
        steer = None
        if copy:
            tok = self.tokenizer  # special tokens are never copied: an unknown word is not worth writing
            skip = {tok.pad_id, tok.start_id, tok.end_id, getattr(tok, "unk_id", None), *getattr(tok, "special_ids", ())}
            # the source as the decoder learnt units: a glued decoder writes "end.The", so copies "The"
            spaced = self.cfg.data.spaced_sentences
            steer = SourceCopy([[i for i in encode_unit(tok, t, spaced) if i not in skip] for t in read], copy,
                               self.device)
        out = self._decode_codes(moved, dst_t, *decoding, g, steer)
        records = []
        for i, (orig, fitted, text) in enumerate(zip(originals, read, out)):
            parts = [notes[i]] if notes[i] else []
            r = own[i] if given[i] is None else None
            if r is not None:
                p = "" if r.p_positive is None else f", p_positive {r.p_positive:.2f}"
                parts.append(f"{r.unclear_note()}: read as {r.sentiment}" if r.unclear else
                             f"the source's sentiment is the model's reading ({r.sentiment}{p})")
            if src[i] == dst[i]:
                parts.append(f"already {SENTIMENTS[dst[i]]}: its code is decoded unmoved")
            records.append(Rewrite(orig, text, SENTIMENTS[src[i]], SENTIMENTS[dst[i]], "; ".join(parts) or None,
                                   fitted if notes[i] else None, None if r is None else r.p_positive,
                                   None if r is None else bool(r.unclear)))
        return records

    def interpolate(self, a: str, b: str, steps: int = 5, greedy: bool | None = None, seed: int = 0) -> list[str]:
        """Decode `steps` evenly spaced codes from review a's to review b's (along the sphere for
        unit-length codes), ends included, decoded as rewrites are (the config's `rewrite` section,
        unless greedy is given). A decoder that takes a sentiment gets the model's reading of the
        nearer end."""
        if self.is_lm:
            raise ModelError("the LM baseline has no codes: interpolate needs a GAN model")
        steps = check_int(steps, "steps", 2, MAX_STEPS)
        decoding = self.rewrite_decoding(greedy)
        read, _ = self._sources([a, b], "interpolate")
        ends = self._codes(read)
        codes = path_between(ends[0], ends[1], steps, self.autoencoder.code_kind)
        labels = None
        if self.decoder_takes_sentiment:
            self._need_generator("interpolate with a sentiment-conditioned decoder")
            y = torch.tensor([SENTIMENTS.index(r.sentiment) for r in self._read(read, ends)], device=self.device)
            labels = torch.where(torch.linspace(0, 1, steps, device=self.device) < 0.5, y[0], y[1])
        g = seeded_generator(check_int(seed, "seed", 0, 2**63 - 1), self.device)
        return self._decode_codes(codes, labels, *decoding, g)
