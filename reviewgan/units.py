"""Units: the token-id sequences the models train on, cut from cleaned sentences, and their batches.

    sentences (data.py) -> `make_units`: whole sentences up to max_len tokens, [END] appended
                        -> `opinion_filter` (training units only) -> `iterate_batches` -> `pad_batch`

`prepare_data` runs the whole of it for a config: load, split, train the tokenizer on the training
split, cut every split into units.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import Config
from .data import (DataError, Record, clean_text, limit_records, load_records, sentences_of, split_records,
                   split_sentences)
from .tokenizer import PAD, Tokenizer

@dataclass
class Units:
    """Tokenised training units: `ids[i]` ends with [END]; `labels[i]` is 0/1; `texts[i]` the cleaned text."""
    ids: list[list[int]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    dropped_long: int = 0  # first sentence alone longer than max_len
    dropped_wordless: int = 0  # punctuation or symbols only (e.g. a lone "."): nothing to learn or to judge
    filtered: int = 0  # removed by the opinion filter
    codes: torch.Tensor | None = None  # (N, C) codes of a frozen encoder, once computed (pretrained family)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: list[int], label: int, text: str) -> None:
        self.ids.append(ids); self.labels.append(label); self.texts.append(text)

    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.ids], dtype=np.int64)

    def subset(self, idx) -> Units:
        """These units only, in this order (their codes too, if computed)."""
        idx = list(idx)
        codes = self.codes[torch.as_tensor(idx, dtype=torch.long)] if self.codes is not None else None
        return Units([self.ids[i] for i in idx], [self.labels[i] for i in idx], [self.texts[i] for i in idx],
                     codes=codes)


def make_units(records: list[Record], sentences: list[list[str]], tokenizer, max_len: int, unit: str = "review",
               spaced: bool = True) -> Units:
    """Cut each review into units of at most `max_len` tokens including [END].

    review mode: the longest run of opening whole sentences that fits; a review whose first
    sentence alone is too long is dropped (counted), never cut mid-sentence.
    chunk mode: the whole review cut into consecutive runs of whole sentences that fit (more
    multi-sentence training text per review; a sentence too long alone is skipped).
    sentence mode: every sentence that fits is its own unit, with the review's label.

    spaced: a sentence after the first of a unit is encoded with the space before it. A byte-level
    BPE (a pretrained base's) keeps spaces in its tokens, so without it the unit's ids decode as
    "one.Two"; the LSTM family's WordPiece drops spaces, so its ids are the same either way.
    """
    budget = max_len - 1  # room for [END]
    flat = [s for ss in sentences for s in ss]
    bare = tokenizer.encode_batch(flat)
    after = tokenizer.encode_batch([" " + s for s in flat]) if spaced else bare
    out, k = Units(), 0
    for rec, sents in zip(records, sentences):
        # (text, ids opening a unit, ids after another sentence)
        pieces = [p for p in zip(sents, bare[k:k + len(sents)], after[k:k + len(sents)]) if p[1]]
        k += len(sents)
        if unit == "sentence":
            for piece in pieces:
                if len(piece[1]) <= budget:
                    _add_run(out, [piece], rec.label, tokenizer.end_id)
                else:
                    out.dropped_long += 1
            continue
        if unit == "review":
            run = _fit_run(pieces, 0, budget)
            if run == 0:
                out.dropped_long += 1
            else:
                _add_run(out, pieces[:run], rec.label, tokenizer.end_id)
            continue
        i = 0  # chunk mode
        while i < len(pieces):
            run = _fit_run(pieces, i, budget)
            if run == 0:
                out.dropped_long += 1
                i += 1
            else:
                _add_run(out, pieces[i:i + run], rec.label, tokenizer.end_id)
                i += run
    return out


def encode_unit(tokenizer, text: str, spaced: bool = True) -> list[int]:
    """A cleaned text's ids as make_units encodes a unit of its sentences, without [END]: what a
    decoder trained on such units writes for it (a rewrite's source-copy bonus uses them)."""
    ids: list[int] = []
    for s in split_sentences(text):
        first = tokenizer.encode(s)
        if first:  # make_units skips a sentence with no tokens
            ids += tokenizer.encode(" " + s) if ids and spaced else first
    return ids


def _fit_run(pieces, start: int, budget: int) -> int:
    """How many whole sentences from `start` on fit in `budget` tokens."""
    total, n = 0, 0
    for _, first, later in pieces[start:]:
        size = len(later if n else first)
        if total + size > budget:
            break
        total += size
        n += 1
    return n


_WORD = re.compile(r"[a-z0-9]", re.I)


def _add_run(out: Units, run, label: int, end_id: int) -> None:
    text = " ".join(s for s, _, _ in run)
    if not _WORD.search(text):
        out.dropped_wordless += 1
        return
    ids = run[0][1] + [t for _, _, later in run[1:] for t in later]
    out.add(ids + [end_id], label, text)


def opinion_filter(units: Units, records: list[Record], threshold: float) -> Units:
    """Keep the units that read clearly as their review's sentiment.

    A review's label is about the whole review; a 40-token piece of it is often plot summary or
    hedging. A unigram naive Bayes model trained on the *whole* training reviews scores each unit,
    and only units whose own label gets probability >= threshold are kept, so labels mean something
    at this length. (A different model family and unit than the evaluation judge, which is a
    TF-IDF 1-2-gram logistic regression trained on units.)
    """
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB
    vec = CountVectorizer(min_df=3, token_pattern=r"[a-z0-9']+")
    nb = MultinomialNB().fit(vec.fit_transform([clean_text(r.text) for r in records]), [r.label for r in records])
    proba = nb.predict_proba(vec.transform(units.texts))
    keep = [i for i, y in enumerate(units.labels) if proba[i, y] >= threshold]
    out = Units([units.ids[i] for i in keep], [units.labels[i] for i in keep], [units.texts[i] for i in keep],
                units.dropped_long, units.dropped_wordless)
    out.filtered = len(units) - len(keep)
    return out


def length_stats(lengths: np.ndarray) -> dict:
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.size == 0:
        return {"count": 0}
    pct = np.percentile(lengths, [5, 25, 50, 75, 95, 99])
    return {"count": int(lengths.size), "mean": float(lengths.mean()), "variance": float(lengths.var()),
            "std": float(lengths.std()), "min": int(lengths.min()), "max": int(lengths.max()),
            **{f"p{p}": float(v) for p, v in zip((5, 25, 50, 75, 95, 99), pct)}}


def iterate_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, bucket: int = 50) -> list[np.ndarray]:
    """Shuffled batches of indices grouped by similar length, so little compute goes to padding.

    Shuffle, cut into chunks of `bucket` batches, sort each chunk by length, batch it, shuffle the
    batches: every epoch sees a new order, and each batch holds reviews of near-equal length.
    """
    order = rng.permutation(len(lengths))
    chunk = batch_size * bucket
    batches = []
    for s in range(0, len(order), chunk):
        idx = order[s:s + chunk]
        idx = idx[np.argsort(lengths[idx], kind="stable")]
        batches += [idx[b:b + batch_size] for b in range(0, len(idx), batch_size)]
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


# --------------------------------------------------------------------------- a config's data


@dataclass
class Data:
    tokenizer: Tokenizer
    units: dict[str, Units]  # train, val, test
    report: str


def prepare_data(cfg: Config, tokenizer: Tokenizer | None = None, log=print) -> Data:
    """Load, split, clean and tokenise. The tokenizer is trained on the training split only."""
    records, report = load_records(cfg.data.dataset, cfg.data.text_column, cfg.data.label_column)
    splits = split_records(records, cfg.data.val_frac, cfg.data.test_frac)
    if cfg.data.limit:  # quick runs: a deterministic subset of every split
        small = max(20, cfg.data.limit // 10)
        splits = {k: limit_records(v, cfg.data.limit if k == "train" else small) for k, v in splits.items()}
    sents = {k: sentences_of(v, cfg.data.unit, cfg.data.lowercase) for k, v in splits.items()}
    if tokenizer is None:
        tokenizer = Tokenizer.train((" ".join(s) for s in sents["train"]), cfg.data.vocab_size, cfg.data.min_frequency)
    units = {k: make_units(splits[k], sents[k], tokenizer, cfg.data.max_len, cfg.data.unit, cfg.data.spaced_sentences)
             for k in splits}
    if cfg.data.opinion_filter > 0:  # training units only: validation and test stay the real distribution
        units["train"] = opinion_filter(units["train"], splits["train"], cfg.data.opinion_filter)
    train = units["train"]
    msg = (f"{report.summary()}\nunits ({cfg.data.unit}s of <= {cfg.data.max_len} tokens): "
           + ", ".join(f"{k} {len(u)}" for k, u in units.items())
           + f"; training {cfg.data.unit}s dropped: {train.dropped_long} longer than max_len, "
           + f"{train.dropped_wordless} without a word"
           + (f", {train.filtered} not clearly of their review's sentiment" if cfg.data.opinion_filter else ""))
    log(msg)
    if len(train) == 0:
        raise DataError("no training units: the data is empty or every review's first sentence is too long")
    return Data(tokenizer, units, msg)


def pad_batch(units: Units, idx, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> ids (B, T) padded with [PAD] to the batch's own longest unit, lengths (B,), labels (B,)."""
    seqs = [units.ids[i] for i in idx]
    lengths = torch.tensor([len(s) for s in seqs])
    ids = torch.full((len(seqs), int(lengths.max())), PAD, dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(s)
    labels = torch.tensor([units.labels[i] for i in idx])
    return ids.to(device), lengths.to(device), labels.to(device)
