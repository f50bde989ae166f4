"""Shared fixtures: a small synthetic review corpus (made here, no download) and one tiny trained model."""

from __future__ import annotations

import csv
import json
import random

import pytest

from reviewgan.config import apply_overrides, load_preset

POS = ["great", "wonderful", "brilliant", "moving", "superb", "delightful"]
NEG = ["awful", "boring", "terrible", "dull", "horrible", "painful"]
NOUNS = ["movie", "film", "story", "cast", "ending", "script"]


def synthetic_reviews(n: int = 400, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = POS if label else NEG
        sents = [f"the {rng.choice(NOUNS)} was {rng.choice(words)}.",
                 f"i found the {rng.choice(NOUNS)} {rng.choice(words)} and {rng.choice(words)}!",
                 f"review number {i} says it was {rng.choice(words)}."]
        rng.shuffle(sents)
        rows.append((" ".join(sents[: rng.randint(1, 3)]) + f" <br /><br />({i})", label))
    return rows


def write_csv(path, rows, header=("text", "label")) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture(scope="session")
def corpus_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    write_csv(path, synthetic_reviews())
    return path


@pytest.fixture(scope="session")
def cased_corpus_csv(tmp_path_factory):
    """The synthetic corpus with each sentence capitalised, for the cased pretrained family."""
    import re
    path = tmp_path_factory.mktemp("cased") / "reviews.csv"
    cap = lambda t: re.sub(r"(^|[.!?] )([a-z])", lambda m: m.group(1) + m.group(2).upper(), t)  # noqa: E731
    write_csv(path, [(cap(t), label) for t, label in synthetic_reviews()])
    return path


def tiny_config(corpus, *overrides):
    return apply_overrides(load_preset("tiny"), [f"data.dataset={corpus}", *overrides])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, corpus_csv):
    """A model trained once for the whole session (both stages, seconds)."""
    from reviewgan.train import train
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(corpus_csv), out, progress=False, log=lambda m: None)
    return out


TINY_BASE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # SmolLM2's first three: unk, BOS, EOS


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A randomly initialised 2-layer Llama (width 32) with a byte-level BPE trained on the synthetic
    corpus, in Hugging Face's folder layout: the stand-in for SmolLM2 in the tests."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers", reason="the pretrained family needs transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    folder = tmp_path_factory.mktemp("tiny_base")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=TINY_BASE_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([t.title() for t, _ in synthetic_reviews()], trainer)
    tok.save(str(folder / "tokenizer.json"))
    cfg = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_gemma_base(tmp_path_factory, tiny_base):
    """The same tokenizer under a randomly initialised 2-layer Gemma 3 (one local layer, one global):
    the stand-in for Gemma 3 270M."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers", reason="the pretrained family needs transformers")
    folder = tmp_path_factory.mktemp("tiny_gemma_base")
    (folder / "tokenizer.json").write_text((tiny_base / "tokenizer.json").read_text())
    vocab = json.loads((tiny_base / "config.json").read_text())["vocab_size"]
    cfg = transformers.Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                        query_pre_attn_scalar=16, layer_types=["sliding_attention", "full_attention"],
                                        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    transformers.Gemma3ForCausalLM(cfg).save_pretrained(str(folder))
    return folder


def tiny_pretrained_config(corpus, base, *overrides):
    """The tiny preset with the pretrained-decoder family on the tiny base."""
    return tiny_config(corpus, "ae.family=pretrained", "ae.code_dim=384", f"ae.base={base}", "ae.lora_rank=4",
                       "data.lowercase=false", "ae.batch_size=16", "ae.epochs=1", "ae.lr=0.01", "ae.lora_lr=0.01",
                       "ae.grad_clip=1.0", "sample.max_len=20", *overrides)
