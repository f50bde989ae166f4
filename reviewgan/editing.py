"""Rewriting, reading and interpolating reviews: what ReviewGAN does to a text it is given, as a mixin
class of ReviewGAN (model.py), which holds the models these methods use.

    model.rewrite(["One of the best films of the year."], to="flip")   # encode, move the code, decode
    model.read(["A dull, overlong mess."])                                # the reader's sentiment and doubt
    model.interpolate("A moving film.", "A dull mess.", steps=5)          # codes on the way from one to the other

How a code is moved, and the source-copy bonus, are rewrite.py's; this module applies them to texts.
"""

from __future__ import annotations

import torch

from .checkpoint import ModelError
from .data import SENTIMENTS, clean_text
from .records import (COPY, MAX_REWRITE, MAX_STEPS, REWRITE_TARGETS, STRENGTH, Reading, Rewrite, check_decoding,
                      check_int, check_number, check_texts, parse_sentiment, seeded_generator)
from .rewrite import METHODS, SourceCopy, fit_length, move, path_between, read_sentiment, why_unclear
from .units import encode_unit


class Editing:
    """ReviewGAN's methods for texts it is given (see the module's docstring)."""

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
                raise ValueError(f"{where}{r.unclear_note()}: give the source's sentiment to flip it (--from; "
                                 "`sentiment` in JSONL and the HTTP API; sentiments= in Python), or ask for "
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
