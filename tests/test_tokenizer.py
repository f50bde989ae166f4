import json

import pytest

from reviewgan.tokenizer import END, PAD, SPECIALS, START, UNK, Tokenizer, detokenize

TEXTS = ["the movie was great.", "the film was awful!", "i didn't like the ending, really."] * 20


def test_special_ids_are_distinct_and_fixed(tmp_path):
    tok = Tokenizer.train(TEXTS, vocab_size=120, min_frequency=1)
    # The trained vocabulary itself holds the four specials at 0..3, and no word takes their ids.
    assert [tok.hf.token_to_id(t) for t in SPECIALS] == [PAD, UNK, START, END] == [0, 1, 2, 3]
    assert [tok.hf.id_to_token(i) for i in range(4)] == SPECIALS
    assert min(tok.encode("the movie was great.")) > END
    # A tokenizer file whose [END] shares padding's id (the seed's bug) is refused.
    d = json.loads(tok.to_str())
    vocab = d["model"]["vocab"]
    vocab["[END]"], vocab["[PAD]"] = vocab["[PAD]"], vocab["[END]"]
    for t in d["added_tokens"]:
        t["id"] = vocab[t["content"]]
    with pytest.raises(ValueError, match=r"\[PAD\] must have id 0"):
        Tokenizer.from_str(json.dumps(d))
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    again = Tokenizer.from_file(path)
    assert again.encode("the movie was awful.") == tok.encode("the movie was awful.")


def test_decode_is_readable():
    tok = Tokenizer.train(TEXTS, vocab_size=120, min_frequency=1)
    ids = tok.encode("i didn't like the ending, really.")
    text = tok.decode([START] + ids + [END, 7, 8] + [PAD] * 3)
    assert text == "i didn't like the ending, really."
    assert "##" not in tok.decode(tok.encode("endingly wonderfully"))


def test_detokenize():
    assert detokenize("it ' s a well - made film , isn ' t it ?") == "it's a well-made film, isn't it?"


def test_training_is_deterministic():
    texts = [f"word{i % 37} piece{i % 11}s and ##odd endings{i % 5}." for i in range(300)] + TEXTS
    a = Tokenizer.train(texts, vocab_size=150, min_frequency=1)
    b = Tokenizer.train(list(texts), vocab_size=150, min_frequency=1)
    assert a.hf.get_vocab() == b.hf.get_vocab()
    assert [t for t, i in a.hf.get_vocab().items() if i < 4] and a.vocab_size <= 150
