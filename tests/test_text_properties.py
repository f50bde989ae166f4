"""The text path never crashes on any Unicode input (property-based, hypothesis)."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reviewgan.data import Record, clean_text, sentences_of, split_sentences
from reviewgan.units import make_units
from reviewgan.tokenizer import Tokenizer, detokenize

TOK = Tokenizer.train(["the film was great.", "an awful, boring movie!", "i'd watch it again? no."] * 10,
                      vocab_size=120, min_frequency=1)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.text())
def test_clean_and_split_any_text(text):
    cleaned = clean_text(text)
    assert cleaned == cleaned.strip() and cleaned == cleaned.lower() and "  " not in cleaned
    assert all(s.strip() for s in split_sentences(cleaned))
    assert clean_text(cleaned) == cleaned  # idempotent


@SETTINGS
@given(st.text())
def test_tokenize_and_detokenize_any_text(text):
    ids = TOK.encode(clean_text(text))
    assert all(0 <= i < TOK.vocab_size for i in ids)
    out = TOK.decode(ids)
    assert isinstance(out, str) and "##" not in out
    detokenize(text)


@SETTINGS
@given(st.lists(st.integers(min_value=0, max_value=119), max_size=60))
def test_decode_any_ids(ids):
    assert isinstance(TOK.decode(ids), str)


@SETTINGS
@given(st.lists(st.text(), min_size=1, max_size=5), st.sampled_from(["review", "chunk", "sentence"]),
       st.integers(min_value=8, max_value=40))
def test_units_never_exceed_max_len(texts, unit, max_len):
    recs = [Record(t, i % 2) for i, t in enumerate(texts)]
    units = make_units(recs, sentences_of(recs, unit), TOK, max_len, unit)
    assert all(1 < len(u) <= max_len and u[-1] == TOK.end_id for u in units.ids)
