"""Evaluation metrics for generated reviews: n-gram overlap, diversity, copying, embeddings, judges, LM perplexity.

Every function takes plain lists of (detokenized, lowercase) review strings, so the metrics are the same
whatever model produced the text. Self-BLEU and BLEU follow Texygen (Zhu et al. 2018), which scores with
NLTK's sentence_bleu and SmoothingFunction().method1; it is reimplemented here (no nltk dependency) and
checked against a brute-force NLTK-style reference in the tests.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .embedder import SentenceEmbedder, embedder_available  # noqa: F401  (re-exported: the FED embedder)
from .tokenizer import END, PAD, START

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[.,!?;:-]")


def words(text: str) -> list[str]:
    """The metrics' own word tokenizer, independent of the model's WordPiece vocabulary."""
    return _WORD.findall(text.lower())


def _ngrams(toks: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]


# --------------------------------------------------------------------------------------------- BLEU

_EPSILON = 0.1  # NLTK SmoothingFunction().method1: a zero-match precision becomes epsilon / total


class _References:
    """Per n-gram order, the largest count of each n-gram over the references, and who owns it.

    Clipping a hypothesis against a reference *set* needs max_j count_j(g). Computing that afresh for
    each of 500 hypotheses x 499 references is quadratic; instead keep, per n-gram, the top count, the
    index of one reference that has it, and the second-largest count over the rest. Excluding reference
    i then costs nothing: the max over j != i is the second count when i owns the top one, else the top.
    """

    def __init__(self, token_lists: list[list[str]], n: int):
        self.n = n
        # order k -> {ngram: [top count, owner, second count]}
        self.tables: list[dict[tuple[str, ...], list[int]]] = []
        for k in range(1, n + 1):
            table: dict[tuple[str, ...], list[int]] = {}
            for j, toks in enumerate(token_lists):
                for g, c in Counter(_ngrams(toks, k)).items():
                    e = table.get(g)
                    if e is None:
                        table[g] = [c, j, 0]
                    elif c > e[0]:
                        e[2], e[0], e[1] = e[0], c, j
                    elif c > e[2]:
                        e[2] = c
            self.tables.append(table)
        self.ref_lengths = [len(t) for t in token_lists]
        self.length_counts = Counter(self.ref_lengths)
        self.lengths = sorted(self.length_counts)

    def _max_count(self, k: int, g: tuple[str, ...], exclude: int | None) -> int:
        e = self.tables[k - 1].get(g)
        if e is None:
            return 0
        return e[2] if e[1] == exclude else e[0]

    def _closest_length(self, hyp_len: int, exclude: int | None) -> int:
        # NLTK: the reference length closest to the hypothesis length, the shorter one on a tie.
        exclude_len = None if exclude is None else self.ref_lengths[exclude]
        best = None
        for r in self.lengths:
            if r == exclude_len and self.length_counts[r] == 1:
                continue
            key = (abs(r - hyp_len), r)
            if best is None or key < best:
                best = key
        assert best is not None
        return best[1]

    def sentence_bleu(self, hyp: list[str], exclude: int | None = None) -> float:
        """BLEU-n of `hyp` against every reference except the one at index `exclude`."""
        log_sum = 0.0
        for k in range(1, self.n + 1):
            counts = Counter(_ngrams(hyp, k))
            matched = sum(min(c, self._max_count(k, g, exclude)) for g, c in counts.items())
            total = max(1, sum(counts.values()))
            if k == 1 and matched == 0:
                return 0.0  # NLTK returns 0 outright when not even one unigram matches
            log_sum += math.log((matched if matched else _EPSILON) / total) / self.n
        c = len(hyp)
        r = self._closest_length(c, exclude)
        bp = 1.0 if c > r else math.exp(1 - r / c)
        return bp * math.exp(log_sum)


def _pick(count: int, max_samples: int | None, seed: int) -> list[int]:
    """Deterministic subset of indices (sorted), so repeated evaluations score the same samples."""
    if max_samples is None or count <= max_samples:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(count), max_samples))


def self_bleu(texts: list[str], n: int = 4, max_samples: int | None = 500, seed: int = 0) -> float:
    """Texygen Self-BLEU-n: mean BLEU of each sampled text against all *other* texts. Higher = less diverse."""
    if len(texts) < 2:
        raise ValueError("self_bleu needs at least two texts")
    toks = [words(t) for t in texts]
    refs = _References(toks, n)
    idx = _pick(len(toks), max_samples, seed)
    return float(np.mean([refs.sentence_bleu(toks[i], exclude=i) for i in idx]))


def bleu(hypotheses: list[str], references: list[str], n: int = 4, max_samples: int | None = 500,
         seed: int = 0) -> float:
    """Test-BLEU-n: mean BLEU of each sampled hypothesis against the whole reference set. Higher = more fluent."""
    if not hypotheses or not references:
        raise ValueError("bleu needs at least one hypothesis and one reference")
    refs = _References([words(t) for t in references], n)
    hyps = [words(hypotheses[i]) for i in _pick(len(hypotheses), max_samples, seed)]
    return float(np.mean([refs.sentence_bleu(h) for h in hyps]))


def corpus_bleu(hypotheses: list[str], references: list[str], n: int = 4) -> float:
    """Corpus BLEU-n of paired texts, hypothesis i against reference i alone (Papineni et al.; what
    multi-bleu.perl reports, lowercased): clipped n-gram matches and lengths summed over the corpus,
    then the geometric mean of the n precisions times the brevity penalty. No smoothing: 0 when some
    order has no match at all. Style transfer's content score: a rewrite against its source."""
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError("corpus_bleu needs as many references as hypotheses, at least one")
    matched, total = [0] * n, [0] * n
    hyp_len = ref_len = 0
    for h, r in zip(hypotheses, references):
        h, r = words(h), words(r)
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for k in range(1, n + 1):
            hc, rc = Counter(_ngrams(h, k)), Counter(_ngrams(r, k))
            matched[k - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[k - 1] += max(0, len(h) - k + 1)
    if hyp_len == 0 or min(matched) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matched, total)) / n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(log_p)


# ----------------------------------------------------------------------------------------- diversity

def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n: unique n-grams / all n-grams, pooled over the texts."""
    grams = [g for t in texts for g in _ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def unique_frac(texts: list[str]) -> float:
    """Fraction of distinct strings: 1.0 means no sample was generated twice."""
    return len(set(texts)) / len(texts) if texts else 0.0


def rep_ngram_frac(texts: list[str], n: int = 4) -> float:
    """Fraction of texts that repeat some word n-gram within themselves (the decoder looping)."""
    if not texts:
        return 0.0
    looping = sum(any(c > 1 for c in Counter(_ngrams(words(t), n)).values()) for t in texts)
    return looping / len(texts)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def copy_frac(texts: list[str], train_texts: list[str]) -> float:
    """Fraction of generated texts that occur verbatim (up to case and whitespace) in the training texts."""
    if not texts:
        return 0.0
    seen = {_norm(t) for t in train_texts}
    return sum(_norm(t) in seen for t in texts) / len(texts)


def train_ngram_frac(texts: list[str], train_texts: list[str], n: int = 6) -> float:
    """Mean share of each text's word n-grams that occur in some training text: a near-copy shows as a
    share near 1 where copy_frac sees nothing (a word changed, or a chunk's end left off). Texts of
    fewer than n words count as 0. Real held-out text gives the level of phrases reviews share."""
    if not texts:
        return 0.0
    seen = {g for t in train_texts for g in _ngrams(words(t), n)}
    shares = []
    for t in texts:
        grams = _ngrams(words(t), n)
        shares.append(sum(g in seen for g in grams) / len(grams) if grams else 0.0)
    return float(np.mean(shares))


# ---------------------------------------------------------------------------------------- embeddings

def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two embedding sets (N x D each), as in FID.

    |mu1 - mu2|^2 + tr C1 + tr C2 - 2 tr sqrt(C1^1/2 C2 C1^1/2). The inner matrix is symmetric PSD, so
    eigh gives its square root stably, with no scipy and no complex round-off from sqrtm(C1 C2).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(f"frechet_distance needs two (N>=2, D) arrays of one width, got {x.shape} and {y.shape}")
    c1 = np.atleast_2d(np.cov(x, rowvar=False))
    c2 = np.atleast_2d(np.cov(y, rowvar=False))
    s1 = _psd_sqrt(c1)
    m = s1 @ c2 @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    d = float(np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt)
    return max(d, 0.0)  # round-off can leave identical sets a hair below zero


# ------------------------------------------------------------------------------------ sentiment judge

class SentimentJudge:
    """An independent sentiment classifier (TF-IDF 1-2 grams + logistic regression) to score conditioning.

    Independent of the GAN's own critic, so "the generator fools its critic" can't pass for "the text
    carries the asked-for sentiment". Persisted as plain JSON (no pickle: loading a model directory must
    not execute code).
    """

    VECTORIZER = dict(ngram_range=(1, 2), min_df=2, sublinear_tf=True)

    def __init__(self, c: float = 4.0, max_iter: int = 1000):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        self.vectorizer = TfidfVectorizer(**self.VECTORIZER)
        self.classifier = LogisticRegression(C=c, max_iter=max_iter)

    def fit(self, texts: list[str], labels) -> SentimentJudge:
        self.classifier.fit(self.vectorizer.fit_transform(list(texts)), np.asarray(labels, dtype=int))
        return self

    def predict(self, texts: list[str]) -> np.ndarray:
        return self.classifier.predict(self.vectorizer.transform(list(texts))).astype(int)

    def accuracy(self, texts: list[str], labels) -> float:
        return float(np.mean(self.predict(texts) == np.asarray(labels, dtype=int)))

    def to_json(self) -> str:
        v, c = self.vectorizer, self.classifier
        return json.dumps({
            "format": "reviewgan-sentiment-judge/1",
            "C": c.C, "max_iter": c.max_iter,
            "vocabulary": {term: int(i) for term, i in v.vocabulary_.items()},
            "idf": v.idf_.tolist(),
            "coef": c.coef_.tolist(), "intercept": c.intercept_.tolist(), "classes": c.classes_.tolist(),
        })

    @classmethod
    def from_json(cls, text: str) -> SentimentJudge:
        d = json.loads(text)
        if d.get("format") != "reviewgan-sentiment-judge/1":
            raise ValueError(f"not a sentiment judge: format {d.get('format')!r}")
        judge = cls(c=d["C"], max_iter=d["max_iter"])
        judge.vectorizer.vocabulary_ = d["vocabulary"]
        judge.vectorizer.idf_ = np.asarray(d["idf"], dtype=np.float64)
        judge.classifier.coef_ = np.asarray(d["coef"], dtype=np.float64)
        judge.classifier.intercept_ = np.asarray(d["intercept"], dtype=np.float64)
        judge.classifier.classes_ = np.asarray(d["classes"], dtype=int)
        return judge

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> SentimentJudge:
        return cls.from_json(Path(path).read_text())


# ------------------------------------------------------------------------------------ LM perplexity

def default_cutoffs(vocab_size: int) -> list[int]:
    """Adaptive-softmax clusters: the most frequent 1/8 of the vocabulary, the next 3/8, the rest."""
    if vocab_size < 8:
        raise ValueError(f"vocab_size must be at least 8, got {vocab_size}")
    return [vocab_size // 8, vocab_size // 2]


class LSTMLanguageModel(nn.Module):
    """Word-level LSTM LM over the model's token ids, for forward and reverse perplexity.

    The softmax over an 8000-token vocabulary costs several times the LSTM on the CPU, so the output is
    an adaptive softmax (Grave et al. 2017): exact, normalised log-probabilities, with rare tokens in
    cheaper tail clusters. It wants ids ordered by frequency, so `rank` maps each token id to its place in
    the training frequency order (train_lm fills it in; identity until then).
    """

    def __init__(self, vocab_size: int, emb_dim: int = 64, hidden: int = 256, layers: int = 1):
        super().__init__()
        self.vocab_size = vocab_size
        self.emb = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD)
        self.lstm = nn.LSTM(emb_dim, hidden, num_layers=layers, batch_first=True)
        self.proj = nn.Linear(hidden, emb_dim)
        cutoffs = default_cutoffs(vocab_size)
        self.out = nn.AdaptiveLogSoftmaxWithLoss(emb_dim, vocab_size, cutoffs, div_value=2.0, head_bias=True)
        self.register_buffer("rank", torch.arange(vocab_size))
        # Start near uniform over the whole vocabulary, not over the head's entries: each cluster's head
        # logit begins at log(cluster size), and small input weights keep the logits themselves small.
        nn.init.uniform_(self.emb.weight, -0.1, 0.1)
        sizes = [b - a for a, b in zip(cutoffs, cutoffs[1:] + [vocab_size])]
        with torch.no_grad():
            self.emb.weight[PAD].zero_()
            self.out.head.bias.zero_()
            self.out.head.bias[cutoffs[0]:] = torch.log(torch.tensor(sizes, dtype=torch.float))

    def set_frequencies(self, counts: torch.Tensor) -> None:
        """Order the output classes by these token counts (most frequent first; ties by id)."""
        order = sorted(range(self.vocab_size), key=lambda i: (-int(counts[i]), i))
        self.rank[torch.tensor(order)] = torch.arange(self.vocab_size)

    def _states(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(self.lstm(self.emb(tokens))[0])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token log-probabilities (B, T, V), indexed by token id."""
        h = self._states(tokens)
        return self.out.log_prob(h.reshape(-1, h.size(-1)))[:, self.rank].reshape(*tokens.shape, -1)

    def nll(self, inp: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Per-token NLL (N,) of the non-PAD targets, computed only at those positions."""
        mask = tgt != PAD
        return -self.out(self._states(inp)[mask], self.rank[tgt[mask]]).output


def _lm_batch(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Input [START] + ids[:-1], target ids, both padded with PAD (the target's PAD is masked out)."""
    t = max(len(s) for s in seqs)
    inp = torch.full((len(seqs), t), PAD, dtype=torch.long)
    tgt = torch.full((len(seqs), t), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        inp[i, 0] = START
        inp[i, 1:len(s)] = torch.tensor(s[:-1], dtype=torch.long)
        tgt[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return inp, tgt


def _clean(token_id_lists) -> list[list[int]]:
    # Every sequence must end with [END] (the LM learns where reviews stop); empty ones carry nothing.
    out = []
    for s in token_id_lists:
        s = [int(i) for i in s]
        if s and s[-1] != END:
            s.append(END)
        if s:
            out.append(s)
    return out


def train_lm(token_id_lists, vocab_size: int, epochs: int = 3, *, emb_dim: int = 64, hidden: int = 256,
             layers: int = 1, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
             log=None) -> LSTMLanguageModel:
    """Train an LSTM LM on token id lists; deterministic under `seed`, and leaves the global RNG alone."""
    seqs = _clean(token_id_lists)
    if not seqs:
        raise ValueError("train_lm needs at least one non-empty sequence")
    counts = torch.bincount(torch.tensor([i for s in seqs for i in s]), minlength=vocab_size)
    # Sort into length buckets once so batches carry little padding; the bucket order is shuffled.
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    batches = [[seqs[i] for i in order[b:b + batch_size]] for b in range(0, len(order), batch_size)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LSTMLanguageModel(vocab_size, emb_dim, hidden, layers)
        model.set_frequencies(counts)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for epoch in range(epochs):
            total, count = 0.0, 0
            for b in torch.randperm(len(batches), generator=gen).tolist():
                losses = model.nll(*_lm_batch(batches[b]))
                opt.zero_grad()
                losses.mean().backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                total, count = total + losses.sum().item(), count + len(losses)
            if log is not None:
                log(f"lm epoch {epoch + 1}/{epochs}: train ppl {math.exp(total / count):.2f}")
    model.eval()
    return model


@torch.no_grad()
def perplexity(model: LSTMLanguageModel, token_id_lists, batch_size: int = 128) -> float:
    """exp(total NLL / total target tokens), [END] included, padding excluded."""
    seqs = _clean(token_id_lists)
    if not seqs:
        raise ValueError("perplexity needs at least one non-empty sequence")
    was_training = model.training
    model.eval()
    seqs = sorted(seqs, key=len)
    nll, count = 0.0, 0
    for b in range(0, len(seqs), batch_size):
        losses = model.nll(*_lm_batch(seqs[b:b + batch_size])).double()  # float64 sum: no drift
        nll, count = nll + float(losses.sum()), count + len(losses)
    model.train(was_training)
    return math.exp(nll / count)


# ------------------------------------------------------------------------------------ MAUVE

def mauve_score(p_features: np.ndarray, q_features: np.ndarray, seed: int = 0) -> float:
    """MAUVE (Pillutla et al. 2021) between two sets of precomputed features (N x D each), by the
    PyPI package mauve-text: the area under the divergence curve of their quantised distributions;
    1 = indistinguishable. Raises ImportError when the package is missing."""
    import mauve
    out = mauve.compute_mauve(p_features=np.asarray(p_features, dtype=np.float32),
                              q_features=np.asarray(q_features, dtype=np.float32), seed=seed, verbose=False)
    return float(out.mauve)


# ------------------------------------------------------------------------------------ a pretrained LM's perplexity

class BaseLMScorer:
    """Perplexity of texts under a pretrained LM (the pretrained family's base, unconditioned, no LoRA):
    each text scored from its base's BOS, its EOS included. Fluency as a model trained on far more
    English than IMDB sees it; it favours text written by a decoder built on the same LM."""

    def __init__(self, base):
        from .llama import Llama
        self.tokenizer = base.tokenizer
        self.lm = Llama(base.shape)
        self.lm.load_state_dict(base.weights)
        self.lm.eval()
        self.name = base.info["name"]

    @torch.no_grad()
    def perplexity(self, texts: list[str], batch_size: int = 32) -> float:
        tok = self.tokenizer
        seqs = sorted(([tok.start_id] + ids + [tok.end_id] for ids in tok.encode_batch(list(texts))), key=len)
        nll, count = 0.0, 0
        for b in range(0, len(seqs), batch_size):
            chunk = seqs[b:b + batch_size]
            T = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), T), tok.end_id, dtype=torch.long)
            mask = torch.zeros(len(chunk), T, dtype=torch.bool)
            for i, s in enumerate(chunk):
                ids[i, :len(s)] = torch.tensor(s)
                mask[i, 1:len(s)] = True
            logits = self.lm.logits(self.lm.hidden(self.lm.embed(ids[:, :-1]))).float()  # (B, T-1, V)
            losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
            m = mask[:, 1:].flatten()
            nll += float(losses[m].double().sum())
            count += int(m.sum())
        return math.exp(nll / max(count, 1))
