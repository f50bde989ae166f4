import json

import numpy as np
import pytest

from reviewgan.data import (DataError, Record, clean_text, load_records, respace, sentences_of, split_records,
                            split_sentences)
from reviewgan.tokenizer import Tokenizer
from reviewgan.units import Units, iterate_batches, make_units, opinion_filter

from .conftest import write_csv


def test_clean_text_strips_html_and_specials_keeps_punctuation():
    text = 'Great <br /><br />Film!! Costs $5 & "stars": 10/10… Café'
    out = clean_text(text)
    assert "<br" not in out and "$" not in out and '"' not in out and "&" not in out
    assert out == out.lower()
    assert "great film!!" in out and "10 10" in out and "cafe" in out
    assert clean_text("Wow!!!!!!") == "wow!!"


def test_split_sentences():
    assert split_sentences("one. two! three? four") == ["one.", "two!", "three?", "four"]


def make_tok(texts):
    return Tokenizer.train(texts, vocab_size=200, min_frequency=1)


def test_units_cut_at_sentence_boundary_and_drop_long_first_sentence():
    recs = [Record("a b c. d e f. g h i j k l m n.", 1), Record("a b c d e f g h i j k l m n o p.", 0)]
    sents = sentences_of(recs)
    tok = make_tok([" ".join(s) for s in sents])
    units = make_units(recs, sents, tok, max_len=10)
    # Review 1: "a b c." (4 tokens) + "d e f." (4) fit in 9 (+[END]); adding the third would cut it.
    assert len(units) == 1 and units.texts[0] == "a b c. d e f."
    assert units.ids[0][-1] == tok.end_id and len(units.ids[0]) == 9
    assert units.dropped_long == 1
    per_sentence = make_units(recs, sentences_of(recs, "sentence"), tok, max_len=10, unit="sentence")
    assert per_sentence.texts == ["a b c.", "d e f.", "g h i j k l m n."] and per_sentence.dropped_long == 1


def test_split_is_deterministic_and_per_review():
    recs = [Record(f"review {i} text", i % 2) for i in range(2000)]
    a = split_records(recs, 0.1, 0.1)
    b = split_records(list(reversed(recs))[:1000], 0.1, 0.1)  # other reviews, other order
    side = {r.text: k for k, rs in a.items() for r in rs}
    assert all(side[r.text] == k for k, rs in b.items() for r in rs)
    for k, frac in (("test", 0.1), ("val", 0.1)):
        pos = sum(r.label for r in a[k]) / len(a[k])
        assert abs(len(a[k]) / 2000 - frac) < 0.03 and abs(pos - 0.5) < 0.1  # stratified in expectation


def test_load_csv_counts_duplicates_and_bad_rows(tmp_path):
    p = tmp_path / "d.csv"
    write_csv(p, [("good", "positive"), ("good", "positive"), ("", 1), ("meh", "maybe"), ("bad", "0")],
              header=("review", "sentiment"))
    recs, rep = load_records(str(p))
    assert [(r.text, r.label) for r in recs] == [("good", 1), ("bad", 0)]
    assert (rep.rows, rep.duplicates, rep.empty, rep.bad_label, rep.kept) == (5, 1, 1, 1, 2)


def test_load_jsonl_and_aclimdb(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"text": t, "label": l}) for t, l in [("fine", 1), ("poor", 0)]))
    assert [r.label for r in load_records(str(p))[0]] == [1, 0]
    for split, lab, name, text in [("train", "pos", "1_9.txt", "loved it"), ("test", "neg", "2_2.txt", "hated it")]:
        d = tmp_path / "aclImdb" / split / lab
        d.mkdir(parents=True)
        (d / name).write_text(text)
    recs, _ = load_records(str(tmp_path / "aclImdb"))
    assert sorted((r.text, r.label, r.rating) for r in recs) == [("hated it", 0, 2), ("loved it", 1, 9)]


def test_bad_data_sources(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_records(str(tmp_path / "missing.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text('text,label\n"unterminated,1\n')
    with pytest.raises(DataError):
        load_records(str(bad))
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("a,b\nx,1\n")
    with pytest.raises(DataError, match="text column"):
        load_records(str(nocol))
    badjson = tmp_path / "b.jsonl"
    badjson.write_text("{not json}\n")
    with pytest.raises(DataError, match="JSON"):
        load_records(str(badjson))


def test_builtin_datasets_read_offline():
    imdb, rep = load_records("imdb")
    assert rep.rows == 25000 and rep.duplicates == 96 and len(imdb) == 24904
    assert sum(r.label for r in imdb) in range(12400, 12501)
    rt, _ = load_records("rotten_tomatoes")
    assert len(rt) > 8000


def test_length_bucketed_batches_cover_everything_once():
    lengths = np.random.default_rng(0).integers(3, 40, size=1000)
    batches = iterate_batches(lengths, 64, np.random.default_rng(1))
    allidx = np.concatenate(batches)
    assert sorted(allidx.tolist()) == list(range(1000))
    # Within a batch lengths are close: far less padding than random batching would give.
    waste = sum(int(lengths[b].max() * len(b) - lengths[b].sum()) for b in batches) / lengths.sum()
    assert waste < 0.1  # random batches of 64 would waste ~80 % here


def test_chunk_mode_uses_the_whole_review_in_whole_sentences():
    recs = [Record("a b c. d e f. g h i j k l m n. o p.", 1)]
    sents = sentences_of(recs, "chunk")
    tok = make_tok([" ".join(s) for s in sents])
    units = make_units(recs, sents, tok, max_len=10, unit="chunk")
    assert units.texts == ["a b c. d e f.", "g h i j k l m n.", "o p."] and units.dropped_long == 0


def test_a_units_later_sentences_keep_the_space_before_them_in_a_byte_level_bpe(tiny_base):
    from reviewgan.base import load_base
    tok = load_base(str(tiny_base)).tokenizer  # byte-level BPE: a space is part of the next token
    recs = [Record("The film was good. It was long! Was it? Yes.", 1)]
    sents = sentences_of(recs, "chunk", lowercase=False)
    spaced = make_units(recs, sents, tok, max_len=40, unit="chunk")
    assert tok.decode(spaced.ids[0]) == spaced.texts[0] == "The film was good. It was long! Was it? Yes."
    glued = make_units(recs, sents, tok, max_len=40, unit="chunk", spaced=False)
    assert tok.decode(glued.ids[0]) == "The film was good.It was long!Was it?Yes."
    n = len(spaced.ids[0])  # [END] included: the budget counts the spaced ids
    assert len(make_units(recs, sents, tok, max_len=n, unit="chunk")) == 1
    assert len(make_units(recs, sents, tok, max_len=n - 1, unit="chunk")) == 2
    tok.respace = True  # how a decoder trained on glued units is decoded
    assert tok.decode(glued.ids[0]) == spaced.texts[0]
    from reviewgan.units import encode_unit  # a rewrite's source, as the units of either kind
    assert encode_unit(tok, spaced.texts[0]) == spaced.ids[0][:-1]
    assert encode_unit(tok, spaced.texts[0], spaced=False) == glued.ids[0][:-1]


def test_wordpiece_units_are_the_same_spaced_or_not():
    recs = [Record("a b c. d e f. g h i j k l m n. o p.", 1), Record("q r. s t u! v w?", 0)]
    sents = sentences_of(recs, "chunk")
    tok = make_tok([" ".join(s) for s in sents])
    a, b = (make_units(recs, sents, tok, max_len=10, unit="chunk", spaced=x) for x in (True, False))
    assert a.ids == b.ids and a.texts == b.texts


def test_respace_splits_glued_sentences_only():
    assert respace("It was rich.James tries! What a mess!Truly.I can't.") == \
        "It was rich. James tries! What a mess! Truly. I can't."
    assert respace('Mrs.Crowell and the "Road".The end (really).Then') == \
        'Mrs. Crowell and the "Road". The end (really). Then'
    for kept in ("U.S.A. is big", "a Ph.D. thesis", "3.5 stars", "www.IMDb.com", "A.I. and O.K.", "end. The",
                 "e.g. this", ".NET"):
        assert respace(kept) == kept


def test_units_without_a_word_are_dropped_and_counted():
    recs = [Record("a b c. . ! d e f.", 1), Record("... !!", 0), Record("? . 10 out of 10.", 1)]
    tok = make_tok(["a b c. . ! d e f. ... !! ? . 10 out of 10."])
    for unit in ("sentence", "chunk", "review"):
        units = make_units(recs, sentences_of(recs, unit), tok, max_len=5, unit=unit)
        assert units.texts and all(any(c.isalnum() for c in t) for t in units.texts), unit
        assert units.dropped_wordless >= 1, unit
    per_sentence = make_units(recs, sentences_of(recs, "sentence"), tok, max_len=5, unit="sentence")
    assert per_sentence.texts == ["a b c.", "d e f."] and per_sentence.dropped_wordless == 6


def test_opinion_filter_keeps_clearly_opinionated_units():
    recs = [Record(f"a great, wonderful, superb film {i}. the plot follows a man.", 1) for i in range(30)]
    recs += [Record(f"an awful, dull, boring film {i}. the plot follows a man.", 0) for i in range(30)]
    units = Units()
    for text, label in [("a great and superb film.", 1), ("the plot follows a man.", 1),
                        ("a dull and awful film.", 0), ("the plot follows a man.", 0), ("a superb film.", 0)]:
        units.add([5, 3], label, text)
    kept = opinion_filter(units, recs, 0.8)
    assert kept.texts == ["a great and superb film.", "a dull and awful film."] and kept.filtered == 3
