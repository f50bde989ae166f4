"""Metrics on hand-made inputs with known answers; BLEU checked against a brute-force NLTK-style reference."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import numpy as np
import pytest
import torch

from reviewgan.metrics import (
    LSTMLanguageModel,
    SentenceEmbedder,
    SentimentJudge,
    bleu,
    copy_frac,
    train_ngram_frac,
    distinct_n,
    embedder_available,
    frechet_distance,
    perplexity,
    rep_ngram_frac,
    self_bleu,
    train_lm,
    unique_frac,
    words,
)
from reviewgan.tokenizer import END

SENTENCES = [
    "the movie was great and the cast was great .",
    "the film was great !",
    "i found the story dull and the ending dull .",
    "the movie was great and the cast was great .",  # a duplicate: its twin is a reference
    "good good good good good",  # owns the top count of "good" alone: exercises the top-2 exclusion
    "good film",
    "awful",  # shorter than every n-gram order above 1
]


# ------------------------------------------------------------------ brute force, as NLTK sentence_bleu

def _ref_ngrams(toks, n):
    return Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


def _ref_sentence_bleu(refs, hyp, n=4, eps=0.1):
    """NLTK sentence_bleu(refs, hyp, weights=(1/n,)*n, smoothing_function=SmoothingFunction().method1)."""
    nums, dens = [], []
    for k in range(1, n + 1):
        counts = _ref_ngrams(hyp, k)
        max_counts = {g: max(_ref_ngrams(r, k)[g] for r in refs) for g in counts}
        nums.append(sum(min(c, max_counts[g]) for g, c in counts.items()))
        dens.append(max(1, sum(counts.values())))
    if nums[0] == 0:
        return 0.0
    p = [(num + eps) / den if num == 0 else num / den for num, den in zip(nums, dens)]
    c = len(hyp)
    r = min((len(ref) for ref in refs), key=lambda rl: (abs(rl - c), rl))
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(math.fsum(math.log(pi) / n for pi in p))


def _ref_self_bleu(texts, n=4):
    toks = [words(t) for t in texts]
    return float(np.mean([_ref_sentence_bleu(toks[:i] + toks[i + 1:], toks[i], n) for i in range(len(toks))]))


# ---------------------------------------------------------------------------------------------- tests

def test_words_tokenizer():
    assert words("It's GREAT, isn't it?!") == ["it's", "great", ",", "isn't", "it", "?", "!"]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_self_bleu_matches_brute_force(n):
    assert self_bleu(SENTENCES, n=n) == pytest.approx(_ref_self_bleu(SENTENCES, n), abs=1e-9)
    six = SENTENCES[:6]
    assert self_bleu(six, n=n) == pytest.approx(_ref_self_bleu(six, n), abs=1e-9)


def test_bleu_matches_brute_force():
    hyps, refs = SENTENCES[:3] + ["a film nobody saw", "good good"], SENTENCES[3:]
    want = np.mean([_ref_sentence_bleu([words(r) for r in refs], words(h)) for h in hyps])
    assert bleu(hyps, refs) == pytest.approx(want, abs=1e-9)


def test_self_bleu_identical_and_disjoint():
    assert self_bleu(["the film was a quiet and moving triumph ."] * 100) == pytest.approx(1.0)
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    distinct = [" ".join(rng.sample(vocab, 8)) for _ in range(50)]
    assert self_bleu(distinct) < 0.05
    disjoint = [" ".join(f"w{10 * i + j}" for j in range(10)) for i in range(20)]
    assert self_bleu(disjoint) == 0.0  # not one unigram in common: exactly 0, as in NLTK


def test_self_bleu_samples_deterministically():
    rng = random.Random(1)
    texts = [" ".join(rng.choice(["good", "bad", "film", "plot", "the", "was"]) for _ in range(6)) for _ in range(40)]
    a = self_bleu(texts, max_samples=10, seed=3)
    assert a == self_bleu(texts, max_samples=10, seed=3)
    assert 0.0 < a < 1.0
    with pytest.raises(ValueError):
        self_bleu(["only one"])


def test_bleu_hypothesis_in_references_is_one():
    refs = ["the cast was superb .", "an awful , boring script .", "i loved every minute of it !"]
    assert bleu(["an awful , boring script ."], refs) == pytest.approx(1.0)
    assert bleu(["zebra quantum"], refs) == 0.0


def test_distinct_n():
    one = ["the film was great and the cast was great"] * 100
    # 6 unique words among 900; 7 unique bigrams among 800
    assert distinct_n(one, 1) == pytest.approx(6 / 900)
    assert distinct_n(one, 2) == pytest.approx(7 / 800)
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(100_000)]
    assert distinct_n([" ".join(rng.sample(vocab, 10)) for _ in range(50)], 1) > 0.99
    assert distinct_n(["a b"], 3) == 0.0


def test_unique_rep_copy():
    assert unique_frac(["a", "b", "a", "c"]) == 0.75
    assert rep_ngram_frac(["a b c d a b c d"]) == 1.0
    assert rep_ngram_frac(["a b c d a b c d", "a b c d e f g h", "a b c a b c"], n=4) == pytest.approx(1 / 3)
    assert rep_ngram_frac(["a b c a b c"], n=3) == 1.0
    train = ["The movie was   GREAT .", "i hated it ."]
    assert copy_frac(["the movie was great .", "the movie  was great!", "  I hated it .  "], train) == pytest.approx(2 / 3)


def test_near_copies_share_the_training_texts_ngrams():
    train = ["The cast of this film was great and the story moved me to tears.", "I hated it."]
    near = "The cast of this film was great and the story moved me."  # 7 of its 8 word 6-grams seen
    assert train_ngram_frac([near], train, 6) == pytest.approx(7 / 8)
    assert train_ngram_frac(["Nothing in this sentence comes from the training texts at all."], train, 6) == 0.0
    assert train_ngram_frac(["Too short."], train, 6) == 0.0
    assert train_ngram_frac([near, "I hated it."], train, 6) == pytest.approx(7 / 16)  # 4 words: 0


def test_frechet_distance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 8))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    d = np.array([1.0, -2.0, 0.5, 0, 0, 0, 0, 3.0])
    # Same sample shifted: identical covariances, so the distance is exactly |d|^2.
    assert frechet_distance(x, x + d) == pytest.approx(float(d @ d), rel=1e-9)
    # Independent samples of N(0, I) and N(d, I): |d|^2 up to sampling noise (sd about 0.18 here).
    y = rng.normal(size=(20000, 8)) + d
    assert frechet_distance(x, y) == pytest.approx(float(d @ d), abs=0.6)
    # Known answer in 1-D: (m1 - m2)^2 + (s1 - s2)^2, with s the standard deviations.
    z = rng.normal(size=(500, 1))
    s, m = z.std(ddof=1), z.mean()
    assert frechet_distance(z, 3 * z) == pytest.approx((3 * m - m) ** 2 + (3 * s - s) ** 2, rel=1e-9)
    with pytest.raises(ValueError):
        frechet_distance(x, x[:, :3])


def _toy_sentiment(n=200, seed=0):
    rng = random.Random(seed)
    pos, neg = ["great", "wonderful", "superb", "moving"], ["awful", "boring", "dull", "terrible"]
    nouns = ["movie", "film", "plot", "cast"]
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        adj = pos if label else neg
        texts.append(f"the {rng.choice(nouns)} was {rng.choice(adj)} and {rng.choice(adj)} .")
        labels.append(label)
    return texts, labels


def test_sentiment_judge_and_json_round_trip(tmp_path):
    texts, labels = _toy_sentiment()
    judge = SentimentJudge().fit(texts, labels)
    held_out = ["a wonderful , moving cast", "what a boring and dull plot", "great great great", "terrible"]
    assert judge.predict(held_out).tolist() == [1, 0, 1, 0]
    assert judge.accuracy(texts, labels) == 1.0
    path = tmp_path / "judge.json"
    judge.save(path)
    again = SentimentJudge.load(path)
    probe = held_out + texts[:50] + ["unseen words only", ""]
    assert np.array_equal(again.predict(probe), judge.predict(probe))
    assert again.predict(probe).dtype.kind == "i"
    assert set(json.loads(path.read_text())) >= {"vocabulary", "idf", "coef", "intercept"}  # plain JSON, no pickle
    with pytest.raises(ValueError):
        SentimentJudge.from_json('{"format": "something else"}')


# ------------------------------------------------------------------------------------------------ LM

V = 40  # ids 0..3 special, 4..39 words


def _lm_corpus(n, seed):
    """A strongly patterned language: each sequence counts upward from a random start (mod 36)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start, length = rng.randrange(36), rng.randint(4, 10)
        out.append([4 + (start + k) % 36 for k in range(length)] + [END])
    return out


def _shuffled(seqs, seed):
    rng = random.Random(seed)
    out = []
    for s in seqs:
        body = s[:-1]
        rng.shuffle(body)
        out.append(body + [END])
    return out


TOY_LM = dict(epochs=6, emb_dim=16, hidden=64, batch_size=16, lr=1e-2, seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models: a second intra-op thread only adds overhead, and on a busy 2-core machine
    # oversubscription made the same training take 0.4 s or 20 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy_lm():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    model = train_lm(_lm_corpus(600, 0), V, **TOY_LM)
    assert torch.equal(torch.rand(1), before), "train_lm must leave the global RNG alone"
    return model


def test_lm_learns_its_distribution(toy_lm):
    real = perplexity(toy_lm, _lm_corpus(200, 1))
    shuffled = perplexity(toy_lm, _shuffled(_lm_corpus(200, 1), 2))
    assert real < 3.0 < shuffled
    assert real < shuffled / 3


def test_lm_is_deterministic(toy_lm):
    again = train_lm(_lm_corpus(600, 0), V, **TOY_LM)
    for (k, a), (_, b) in zip(toy_lm.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert perplexity(toy_lm, _lm_corpus(50, 5)) == perplexity(again, _lm_corpus(50, 5))


def test_lm_log_probs_are_normalised_and_match_nll(toy_lm):
    from reviewgan.metrics import _lm_batch
    inp, tgt = _lm_batch(_lm_corpus(8, 7))
    with torch.no_grad():
        logp = toy_lm(inp)  # (B, T, V), by token id: checks the frequency-rank mapping both ways
        assert torch.allclose(logp.exp().sum(-1), torch.ones(inp.shape), atol=1e-5)
        mask = tgt != 0
        picked = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)[mask]
        assert torch.allclose(-picked, toy_lm.nll(inp, tgt), atol=1e-5)
    assert not torch.equal(toy_lm.rank, torch.arange(V))  # train_lm ordered the classes by frequency


def test_untrained_lm_perplexity_is_about_vocab_size():
    seqs = _lm_corpus(100, 3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LSTMLanguageModel(1000, emb_dim=16, hidden=32)
    assert perplexity(model, [[5 + i for i in s[:-1]] + [END] for s in seqs]) == pytest.approx(1000, rel=0.15)
    with torch.no_grad():  # an exactly uniform model: every logit zero
        model.proj.weight.zero_()
        model.proj.bias.zero_()
    assert perplexity(model, seqs) == pytest.approx(1000, rel=1e-5)


def test_lm_appends_missing_end_and_rejects_empty():
    model = LSTMLanguageModel(V, emb_dim=8, hidden=8)
    assert perplexity(model, [[4, 5, 6]]) == pytest.approx(perplexity(model, [[4, 5, 6, END]]))
    with pytest.raises(ValueError):
        perplexity(model, [[]])


# ------------------------------------------------------------------------------------------ embedder

_EMBEDDER_OK, _EMBEDDER_WHY = embedder_available()


def test_embedder_available_reports_a_reason():
    ok, why = embedder_available()
    assert isinstance(ok, bool) and isinstance(why, str)
    assert ok or why


@pytest.mark.skipif(not _EMBEDDER_OK, reason=f"optional sentence embedder not installed: {_EMBEDDER_WHY}")
def test_sentence_embedder_offline():
    emb = SentenceEmbedder().encode(["the movie was great", "the film was wonderful", "i hated every minute"])
    assert emb.shape == (3, 384)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2]


@pytest.mark.skipif(not _EMBEDDER_OK, reason=f"optional sentence embedder not installed: {_EMBEDDER_WHY}")
def test_the_written_out_embedder_matches_sentence_transformers():
    from reviewgan.embedder import MiniLM
    texts = ["The movie was great.", "", "a", "I hated every minute of it.Really.",
             "Ünïcödé, “quotes” and 🎬 emoji", "word " * 400,  # past the 256-token limit: cut, as the reference cuts
             "Short.", "A much longer sentence about the cast, the plot, the score and the ending of this film."]
    ref = SentenceEmbedder().encode(texts)
    assert np.abs(MiniLM(batch_size=3).encode(texts) - ref).max() < 1e-5  # batches of rows sorted by length
    fast = MiniLM(bf16=True).encode(texts)
    assert ((fast * ref).sum(-1) > 0.9999).all() and np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-6)
