"""The Python API: `ReviewGAN` bundles tokenizer, stage-1 model (either family), generator and critic
of one model directory, loads them, and generates: noise -> generator -> code -> decoder -> review,
with the screen that reads each review back and draws a vague one again.

    from reviewgan import ReviewGAN
    model = ReviewGAN.from_pretrained()             # the bundled model, or a directory from `reviewgan train`
    model.generate("positive", n=3, seed=0)

What it does to texts it is given (rewrite, read, interpolate) is editing.py's; the records it returns
and the checks on its arguments are records.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .autoencoder import Autoencoder, drop_rows
from .base import Base, load_base
from .checkpoint import READER_FILE, ModelError, check_header, load_weights, read_model_config, stage1_file
from .config import Config, ConfigError
from .data import SENTIMENTS, clean_text
from .editing import Editing
from .gan import Critic, Generator, Reader
from .gan_slots import networks
from .llama import can_pack
from .lm import ConditionalLM, PretrainedLM
from .precision import compute_dtype
from .pretrained import PretrainedAutoencoder, limit_heap_fragmentation, limit_kernel_cache, release_free_memory
from .records import (MAX_GENERATE, Request, Review, check_decoding, check_int, check_texts, parse_sentiment,
                      resolve_device, seeded_generator)
from .rewrite import class_means, push
from .slots import LatentAutoencoder, SlotAutoencoder
from .stream import STREAM_ROWS, Rows, stream
from .tokenizer import Tokenizer
from .tuned import TunedAutoencoder

def _rows_of_requests(cancelled: Callable[[], Collection[int]], owner: Callable[[], torch.Tensor]) -> Callable:
    """A batch's `cancelled() -> request indices` as the decoders' `drop() -> (B,) bools or None`:
    owner() -> (B,), each row's request (a stream that takes new requests grows it)."""
    def drop():
        gone, rows = cancelled(), owner()
        return torch.isin(rows, torch.tensor(sorted(gone), dtype=torch.long, device=rows.device)) if gone else None
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
        if cfg.ae.family == "pretrained":
            return PretrainedLM(cfg.ae, base, dtype), None, None
        return ConditionalLM(vocab_size, cfg.ae), None, None
    if cfg.ae.family == "lstm":
        ae = Autoencoder(vocab_size, cfg.ae)
    else:
        kind = {"tokens": SlotAutoencoder, "latents": LatentAutoencoder, "tuned": TunedAutoencoder}.get(cfg.ae.code, PretrainedAutoencoder)
        ae = kind(cfg.ae, base, dtype)
    gen, critic = networks(cfg.gan, cfg.ae.code_dim, ae.code_kind)
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


class ReviewGAN(Editing):
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
    def from_pretrained(cls, path: str | Path | None = None, device: str = "cpu", dtype: str = "auto",
                        pack: bool | None = None) -> ReviewGAN:
        """Load a model directory written by `reviewgan train` (or the bundled model if `path` is None).
        dtype: auto | bf16 | fp32, the precision it computes in (precision.compute_dtype: auto is bf16
        where the matrix units have it natively); the weights on disk are the same in either.
        pack: hold the pretrained decoder's weights pre-packed for oneDNN (llama.Linear.pack; None:
        wherever this PyTorch can); False decodes through F.linear, the reference."""
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
            if can_pack(precision, dev) if pack is None else pack:
                ae.lm.pack()
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
            reader = Reader(getattr(ae, "read_dim", cfg.ae.code_dim))
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
                       cancelled: Callable[[], Collection[int]] | None = None,
                       more: Callable[[int], list[Request]] | None = None,
                       answer: Callable[[int, list[Review]], None] | None = None) -> list[list[Review] | None]:
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

        Continuous batching only (`continuous`, not `swap`): `more(free slots) -> requests` is asked
        whenever slots are free and no review waits for one; the requests it gives (max_len at most
        the first requests') join the running batch, after those given, in order. `answer(k, reviews)`
        is called as soon as request k is done, so the server answers each request when its own
        reviews are, not when the batch's last one is. The result lists every request's reviews.
        """
        dev, max_len = self.device, max(r.max_len for r in requests)
        requests = list(requests)
        counts = [rows or r.n for r in requests]
        owner = torch.repeat_interleave(torch.arange(len(requests), device=dev), torch.tensor(counts, device=dev))
        drop = None if cancelled is None else _rows_of_requests(cancelled, lambda: owner)
        draws = self._draw_up_front(requests, counts, max_len)
        z, u, labels, cut, kw = draws
        if self.is_lm:
            ids, ended = self.autoencoder.generate(labels, max_len, **kw, drop=drop)
        elif self.continuous and not swap:
            left = list(counts)  # rows of each request not settled yet
            got: dict[int, tuple[list[int], bool]] = {}  # settled rows, for answering their requests

            def grow(free: int):
                nonlocal owner
                new = more(free) if more is not None else None
                if not new:
                    return None
                if max(r.max_len for r in new) > max_len:
                    raise ValueError("requests given by `more` must not have a longer max_len than the batch's")
                first = len(requests)
                requests.extend(new)
                n = [rows or r.n for r in new]
                counts.extend(n)
                left.extend(n)
                owner = torch.cat([owner, torch.repeat_interleave(
                    torch.arange(first, len(requests), device=dev), torch.tensor(n, device=dev))])
                return self._draw_up_front(new, n, max_len)

            def settled(done: list[tuple[int, list[int], bool]]):
                for i, toks, ended_ in done:
                    got[i] = (toks, ended_)
                    k = int(owner[i])
                    left[k] -= 1
                    if not left[k] and answer is not None and k not in self._gone(cancelled):
                        answer(k, self._reviews_of(requests[k], [got[j] for j in self._rows_of(counts, k)]))

            joins = dict(grow=grow, width=STREAM_ROWS) if more is not None else {}  # all slots, for those to come
            ids, ended = self._stream(z, u, labels, cut, max_len, kw, drop, settled=settled, **joins)
        else:
            to_decoder = 1 - labels if swap else labels
            ids, ended = self._decode_noise(z[0], labels, to_decoder, max_len, kw, drop)
            if self.screens:
                ids, ended = self._screen(z, u, labels, to_decoder, cut, ids, ended, max_len, kw, drop)
        gone = self._gone(cancelled)
        return [None if k in gone else self._reviews_of(r, [(ids[i], ended[i]) for i in self._rows_of(counts, k)])
                for k, r in enumerate(requests)]

    @staticmethod
    def _gone(cancelled) -> set[int]:
        return set(cancelled()) if cancelled is not None else set()

    @staticmethod
    def _rows_of(counts: list[int], k: int) -> range:
        """The rows of request k, whose requests have counts[j] rows each, in order."""
        first = sum(counts[:k])
        return range(first, first + counts[k])

    def _reviews_of(self, r: Request, rows: list[tuple[list[int], bool]]) -> list[Review]:
        """Request r's decoded rows -> its reviews. A request with a shorter max_len than its batch's:
        its rows are cut where it would have stopped."""
        return self._reviews([t[:r.max_len] for t, _ in rows], [e and len(t) < r.max_len for t, e in rows],
                             SENTIMENTS[r.label])

    def _draw_up_front(self, requests: list[Request], counts: list[int], max_len: int):
        """Every random number the rows of `requests` (counts[k] rows for request k) may use, drawn
        from each request's own generator: the first draw's noise and sampling numbers, then those of
        each redraw the screen may ask for. -> z (a (B, noise_dim) tensor per draw, None for the LM),
        u (a (B, max_len) tensor per draw), labels (B,), each row's max_len, and the decoding settings."""
        dev = self.device
        tries = self.cfg.sample.screen_tries if self.screens else 1
        z, u = [[] for _ in range(tries)], [[] for _ in range(tries)]
        labels, temp, top_p, greedy, cut = [], [], [], [], []
        for r, b in zip(requests, counts):
            for k in range(tries):
                if not self.is_lm:
                    z[k].append(self._noise(r, b))
                u[k].append(self._uniforms(r, b, max_len))
            labels += [r.label] * b
            temp += [r.temperature] * b
            top_p += [r.top_p] * b
            greedy += [r.greedy] * b
            cut += [r.max_len] * b
        z = [torch.cat(x) for x in z] if not self.is_lm else None
        u = [torch.cat(x) for x in u]
        kw = dict(greedy=torch.tensor(greedy, device=dev), temperature=torch.tensor(temp, device=dev)[:, None],
                  top_p=torch.tensor(top_p, device=dev)[:, None], uniforms=u[0])
        return z, u, torch.tensor(labels, dtype=torch.long, device=dev), cut, kw

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
        strength = self.cfg.sample.code_strength  # (the LSTM family's decoder has none: config.py)
        more = {"strength": strength} if strength != 1.0 else {}
        return self.autoencoder.generate(self._codes_of_noise(z, labels), max_len, labels=to_decoder, **kw, drop=drop,
                                         **more)

    @property
    def screens(self) -> bool:
        """Whether generation screens its reviews: sample.screen > 0 on a GAN model (see _screen)."""
        return not self.is_lm and self.cfg.sample.screen > 0

    @property
    def continuous(self) -> bool:
        """Whether generation decodes by continuous batching (stream.py: the pretrained family): the
        readable reference is `_decode_noise` and `_screen`, batch by batch."""
        return self.continuous_batching and isinstance(self.autoencoder, PretrainedAutoencoder)

    continuous_batching = True  # False: the reference path (tests compare the two)

    def _screen(self, z, u, labels, to_decoder, cut, ids, ended, max_len, kw, drop=None):
        """sample.screen: each review is encoded back into a code and read by the model's Reader; one
        that reads as its requested sentiment with a probability below sample.screen (or, with
        sample.screen_cos, whose code is further than that from the code it was decoded from:
        `_reads_as`) is drawn again (its next noise and sampling numbers, drawn up front: z[k], u[k]
        for its k-th redraw), up to sample.screen_tries draws in all, and the draw that passes best is
        kept. Decoding blurs a code, and this is the one place that sees the review that came out.
        Rows that `drop` (the decoder's) says have left are neither read nor drawn again. The redraws
        are decoded in rounds here; `_stream` decodes them as rows free up, to the same reviews."""
        s = self.cfg.sample
        ids, ended = list(ids), list(ended)
        score = self._reads_as(ids, cut, labels, _live(drop), codes=self._screen_codes(z[0], labels))
        for k in range(1, s.screen_tries):
            redo = torch.nonzero(score < s.screen).squeeze(1)
            live = _live(drop)
            if live is not None:
                redo = redo[live[redo]]
            if len(redo) == 0:
                break
            again = dict(greedy=kw["greedy"][redo], temperature=kw["temperature"][redo], top_p=kw["top_p"][redo],
                         uniforms=u[k][redo])
            sub = drop_rows(drop, redo)
            new_ids, new_ended = self._decode_noise(z[k][redo], labels[redo], to_decoder[redo], max_len, again, sub)
            new_score = self._reads_as(new_ids, [cut[j] for j in redo.tolist()], labels[redo], _live(sub),
                                       codes=self._screen_codes(z[k][redo], labels[redo]))
            for j, row in enumerate(redo.tolist()):
                if new_score[j] > score[row]:
                    ids[row], ended[row], score[row] = new_ids[j], new_ended[j], new_score[j]
        return ids, ended

    # The screen's draws of a review are decoded one after another (`_screen`), so the last reviews of
    # a batch wait for chains of up to screen_tries decodes while most of the batch is idle. Once fewer
    # than this many draws are in flight, `_stream` decodes each undecided review's next draw beside
    # its current one: wasted if the current one reads as asked, but the slots were idle.
    SPECULATE_BELOW = 64

    def _stream(self, z, u, labels, cut, max_len, kw, drop=None, grow=None, settled=None, width=None):
        """`_decode_noise` and `_screen` by continuous batching (stream.stream): every
        row's first draw is queued, a review is read as it ends (in groups), and a redraw joins the
        batch as soon as a slot frees, so the matrix units see full batches instead of ever smaller
        rounds of redraws; near the end, next draws start early (SPECULATE_BELOW). Row i's k-th draw
        uses z[k][i], u[k][i] as in `_screen`, and a review is settled from its draws in their order
        (the first that reads as asked, else the best read of all), so the reviews are `_screen`'s, up
        to the rounding a batch of other rows can bring. `drop` as in `_screen`.

        grow(free slots) -> more rows, as `_draw_up_front` gives them, or None: asked when slots are
        free and nothing waits (before any early next draw); their first draws join the batch.
        settled([(row, tokens, ended)]) is told of rows as they are settled. -> tokens, ended per row."""
        s, dev = self.cfg.sample, labels.device
        tries = len(z) if self.screens else 1
        B = labels.numel()
        z, u, cut = list(z), list(u), list(cut)
        kw = dict(kw)
        read = {}  # (row, draw) -> (tokens, ended, score)
        sent = [0] * B  # draws of each row given to the decoder
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        best = [([], False)] * B

        def settle(i: int) -> int:
            """Settle row i if its draws so far do -> how many of its first draws are back."""
            top, pick, k = -1.0, None, 0
            while (i, k) in read:
                toks, ended, score = read[i, k]
                if score > top:
                    top, pick = score, (toks, ended)
                k += 1
                if not self.screens or top >= s.screen or k == tries:
                    best[i] = pick
                    done[i] = True
                    break
            return k

        def draws(pairs: list[tuple[int, int]]) -> Rows:
            """Draw k of row i for each (i, k), for the decoder: its id is i * tries + k."""
            for i, k in pairs:
                sent[i] = k + 1
            idx = torch.tensor([i for i, _ in pairs], device=dev)
            zz = torch.stack([z[k][i] for i, k in pairs])
            uu = torch.stack([u[k][i] for i, k in pairs])
            ids = idx * tries + torch.tensor([k for _, k in pairs], device=dev)
            return Rows(ids, self._codes_of_noise(zz, labels[idx]), uu, kw["greedy"][idx],
                        kw["temperature"][idx, 0], kw["top_p"][idx, 0])

        def finished(ids, toks, ends):
            rows = [i // tries for i in ids]
            live = [j for j, i in enumerate(rows) if not done[i]]
            if not live:
                return None
            if self.screens:
                at = torch.tensor([rows[j] for j in live], device=dev)
                codes = None
                if s.screen_cos > 0:  # the codes these draws were decoded from (draw k of row i: z[k][i])
                    codes = self._codes_of_noise(torch.stack([z[ids[j] % tries][rows[j]] for j in live]), labels[at])
                got = self._reads_as([toks[j] for j in live], [cut[rows[j]] for j in live], labels[at], trim=False,
                                     codes=codes)
            else:
                got = torch.ones(len(live))
            for j, g in zip(live, got.tolist()):
                read[rows[j], ids[j] % tries] = (toks[j], ends[j], g)
            nxt, now = [], []
            for i in dict.fromkeys(rows[j] for j in live):  # (in order, once each)
                back = settle(i)
                if done[i]:
                    now.append((i, *best[i]))
                elif back == sent[i] and sent[i] < tries:
                    nxt.append((i, sent[i]))
            if now and settled is not None:
                settled(now)
            return draws(nxt) if nxt else None

        def spare(free: int, in_flight: int):
            nonlocal B, labels, done
            new = grow(free) if grow is not None else None
            if new is not None:  # new rows: their first draws take the free slots
                nz, nu, nlabels, ncut, nkw = new
                first, B = B, B + nlabels.numel()
                for k in range(tries):
                    z[k], u[k] = torch.cat([z[k], nz[k]]), torch.cat([u[k], nu[k]])
                labels = torch.cat([labels, nlabels])
                cut.extend(ncut)
                for key in ("greedy", "temperature", "top_p"):
                    kw[key] = torch.cat([kw[key], nkw[key]])
                done = torch.cat([done, torch.zeros(B - first, dtype=torch.bool, device=dev)])
                sent.extend([0] * (B - first))
                best.extend([([], False)] * (B - first))
                return draws([(i, 0) for i in range(first, B)])
            if tries == 1 or in_flight >= self.SPECULATE_BELOW:
                return None
            ahead = [(i, sent[i]) for i in range(B) if not done[i] and 0 < sent[i] < tries
                     and (i, sent[i] - 1) not in read]  # its last draw is still being decoded
            ahead = ahead[:min(free, self.SPECULATE_BELOW - in_flight)]
            return draws(ahead) if ahead else None

        def gone():
            out = done if drop is None or (cancelled := drop()) is None else done | cancelled
            return out.repeat_interleave(tries)

        if B:
            stream(self.autoencoder, draws([(i, 0) for i in range(B)]), max_len, finished, gone,
                   width=width or B * tries, spare=spare if tries > 1 or grow is not None else None,
                   strength=s.code_strength)
        return [b[0] for b in best], [b[1] for b in best]

    def _codes_of_noise(self, z, labels):
        """The generator's codes for noise z and labels, pushed (sample.push) as `_decode_noise` does."""
        codes = self.generator(z, labels)
        if self.cfg.sample.push:
            codes = push(codes, labels, self.cfg.sample.push, self.class_means(), self.autoencoder.code_kind)
        return codes

    def _screen_codes(self, z, labels) -> torch.Tensor | None:
        """The codes draws z were decoded from, for sample.screen_cos (None when it is off)."""
        return self._codes_of_noise(z, labels) if self.cfg.sample.screen_cos > 0 else None

    def _reads_as(self, rows, cut, labels, live=None, trim: bool = True, codes=None) -> torch.Tensor:
        """The screen's score of each decoded row (cut to its request's max_len): the Reader's
        probability that it has its label. With `codes` (the codes the rows were decoded from;
        sample.screen_cos), the lower of that and the cosine of the row's own code to its code, scaled
        so that screen_cos maps onto screen: a row passes at >= sample.screen either way.
        live: (B,) bools, the rows to read; the others are not read and score 1 (never drawn again)."""
        if live is not None and not bool(live.all()):
            score = torch.ones(len(rows), device=labels.device)
            idx = live.nonzero().squeeze(1).tolist()
            if idx:
                score[idx] = self._reads_as([rows[j] for j in idx], [cut[j] for j in idx], labels[idx],
                                            codes=None if codes is None else codes[idx])
            return score
        texts = [clean_text(self.tokenizer.decode(r[:c]), self.cfg.data.lowercase) for r, c in zip(rows, cut)]
        own = self.autoencoder.read_texts(texts, self.tokenizer, self.cfg.data.max_len, self.device)
        p = self.reader(own)
        if trim:  # the decode's and the reading's freed buffers, before a redraw decodes
            release_free_memory()
        score = torch.where(labels == 1, p, 1 - p)
        if codes is not None:
            if codes.size(-1) != own.size(-1):
                raise ConfigError("sample.screen_cos compares a review's own code with its code: this model "
                                  f"reads reviews as {own.size(-1)} numbers and its codes have {codes.size(-1)}")
            s = self.cfg.sample
            agree = F.cosine_similarity(own.float(), codes.float(), dim=-1)
            score = torch.minimum(score, agree * (s.screen / s.screen_cos))
        return score

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
