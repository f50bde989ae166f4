"""End-to-end: train the tiny config on a synthetic corpus, generate, reload, resume, determinism."""

import json

import pytest
import torch
from safetensors.torch import load_file

from reviewgan import ReviewGAN
from reviewgan.train import TrainingError, train

from .conftest import tiny_config

QUIET = {"progress": False, "log": lambda m: None}
WEIGHTS = ("autoencoder.safetensors", "generator.safetensors", "critic.safetensors", "reader.safetensors")


def weights(d):
    return {f: load_file(str(d / f)) for f in WEIGHTS}


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return all(torch.equal(wa[f][k], wb[f][k]) for f in WEIGHTS for k in wa[f])


def test_model_directory_is_self_describing(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "tokenizer.json", *WEIGHTS, "train_state", "metrics.jsonl"} <= names
    meta = json.loads((tiny_model_dir / "config.json").read_text())
    assert meta["format"] == "reviewgan-model" and meta["stages"] == ["ae", "gan"]
    assert meta["config"]["preset"] == "tiny"
    assert not list(tiny_model_dir.rglob("*.pt")) and not list(tiny_model_dir.rglob("*.pkl"))
    metrics = [json.loads(l) for l in (tiny_model_dir / "metrics.jsonl").read_text().splitlines()]
    assert {m["stage"] for m in metrics} == {"ae", "gan", "reader"}
    assert all(0 <= m.get("val_token_acc", 0.5) <= 1 for m in metrics)


def test_generate_reload_generate(tiny_model_dir, tmp_path):
    model = ReviewGAN.from_pretrained(tiny_model_dir)
    a = model.generate("positive", n=6, seed=3, records=True)
    assert len(a) == 6 and all(r.sentiment == "positive" for r in a)
    assert all("##" not in r.text and "[END]" not in r.text and "[PAD]" not in r.text for r in a)
    assert all(r.tokens <= model.cfg.data.max_len for r in a)
    # A released copy without the training state loads anywhere and says the same.
    released = tmp_path / "released"
    released.mkdir()
    for f in ("config.json", "tokenizer.json", "autoencoder.safetensors", "generator.safetensors"):
        (released / f).write_bytes((tiny_model_dir / f).read_bytes())
    again = ReviewGAN.from_pretrained(released)
    assert [r.text for r in again.generate("positive", n=6, seed=3, records=True)] == [r.text for r in a]
    assert again.critic is None
    assert model.generate("negative", n=6, seed=3) != model.generate("negative", n=6, seed=4)
    sampled = model.generate("negative", n=4, seed=1, greedy=False, temperature=0.8, top_p=0.9)
    assert sampled == model.generate("negative", n=4, seed=1, greedy=False, temperature=0.8, top_p=0.9)


def test_encode_decode_api(tiny_model_dir):
    model = ReviewGAN.from_pretrained(tiny_model_dir)
    codes = model.encode(["the movie was great.", "the film was awful!"])
    assert codes.shape == (2, model.cfg.ae.code_dim)
    assert len(model.decode(codes)) == 2


def test_same_seed_same_weights(corpus_csv, tiny_model_dir, tmp_path):
    train(tiny_config(corpus_csv), tmp_path / "again", **QUIET)
    assert same_weights(tiny_model_dir, tmp_path / "again")
    train(tiny_config(corpus_csv, "train.seed=1"), tmp_path / "other", **QUIET)
    assert not same_weights(tiny_model_dir, tmp_path / "other")


@pytest.mark.parametrize("crash_at", ["ae", "gan"])
def test_resume_equals_uninterrupted(corpus_csv, tiny_model_dir, tmp_path, monkeypatch, crash_at):
    """Crash mid-stage (after a checkpoint, before the next), resume, and end with the same weights."""
    import reviewgan.train as T
    out = tmp_path / "crashed"
    calls = {"n": 0}
    original = T.Run.save

    def crashing_save(self, *a, **k):
        original(self, *a, **k)
        stage_ok = self.state["gan"]["step"] > 0 if crash_at == "gan" else self.state["ae"]["step"] > 0
        if stage_ok:
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyboardInterrupt("simulated kill right after a checkpoint")

    monkeypatch.setattr(T.Run, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(corpus_csv), out, **QUIET)
    monkeypatch.setattr(T.Run, "save", original)
    with pytest.raises(TrainingError, match="--resume"):
        train(tiny_config(corpus_csv), out, **QUIET)
    train(tiny_config(corpus_csv), out, resume=True, **QUIET)
    assert same_weights(tiny_model_dir, out)


def test_stages_can_run_separately(corpus_csv, tiny_model_dir, tmp_path):
    out = tmp_path / "staged"
    m = train(tiny_config(corpus_csv), out, stage="ae", **QUIET)
    assert m.generator is None and json.loads((out / "config.json").read_text())["stages"] == ["ae"]
    train(tiny_config(corpus_csv), out, stage="gan", **QUIET)
    assert same_weights(tiny_model_dir, out)


def test_gan_noise_is_gaussian_and_fresh_every_step(corpus_csv, tmp_path, monkeypatch):
    import reviewgan.gan_fast as F
    seen = []
    for name in ("fake", "generator_step"):  # the only two ways the training loop runs the generator
        def spy(self, z, labels, *a, _original=getattr(F.FastSteps, name), **k):
            seen.append(z.detach().clone())
            return _original(self, z, labels, *a, **k)

        monkeypatch.setattr(F.FastSteps, name, spy)
    train(tiny_config(corpus_csv, "gan.steps=3", "train.eval_every=100", "train.n_samples=0"), tmp_path / "n", **QUIET)
    # per step: one generator pass for the n_critic = 2 critic batches, one for the generator's batch
    assert [z.size(0) for z in seen] == [64, 32] * 3
    batches = [b for z in seen for b in z.split(32)]
    assert len(batches) == 3 * (2 + 1)  # n_critic + 1 draws per step
    assert all(not torch.equal(a, b) for i, a in enumerate(batches) for b in batches[i + 1:])
    allz = torch.cat(batches)
    assert (allz < 0).any() and abs(allz.mean()) < 0.1 and abs(allz.std() - 1) < 0.1


def test_nan_loss_stops_with_clear_message(corpus_csv, tmp_path, monkeypatch):
    import reviewgan.autoencoder as A
    original = A.Autoencoder.loss

    def poisoned(self, *a, **k):
        ce, kl, correct, n = original(self, *a, **k)
        return ce * float("nan"), kl, correct, n

    monkeypatch.setattr(A.Autoencoder, "loss", poisoned)
    with pytest.raises(TrainingError, match=r"autoencoder loss became nan at step 1;"):
        train(tiny_config(corpus_csv, "train.log_every=1"), tmp_path / "nan", **QUIET)


def test_lm_baseline_trains_and_generates(corpus_csv, tmp_path):
    from reviewgan.config import apply_overrides, load_preset
    cfg = apply_overrides(load_preset("lm"), [f"data.dataset={corpus_csv}", "data.limit=400", "data.max_len=24",
                                              "data.vocab_size=300", "data.min_frequency=1", "ae.epochs=2",
                                              "ae.code_dim=32", "ae.emb_dim=16"])
    model = train(cfg, tmp_path / "lm", **QUIET)
    assert model.is_lm and (tmp_path / "lm" / "lm.safetensors").exists()
    again = ReviewGAN.from_pretrained(tmp_path / "lm")
    a = again.generate("positive", n=4, seed=0, records=True)
    assert a == model.generate("positive", n=4, seed=0, records=True) and all(r.sentiment == "positive" for r in a)
    assert len({r.text for r in a}) > 1  # sampled, not greedy


def test_gan_variant_on_another_runs_autoencoder(corpus_csv, tiny_model_dir, tmp_path):
    # --ae-from: the autoencoder is the source run's, bit for bit; only the GAN is trained anew.
    cfg = tiny_config(corpus_csv, "gan.n_critic=1", "gan.condition=fill")
    model = train(cfg, tmp_path / "variant", ae_from=tiny_model_dir, progress=False, log=lambda m: None)
    src, new = load_file(str(tiny_model_dir / "autoencoder.safetensors")), load_file(str(tmp_path / "variant" / "autoencoder.safetensors"))
    assert src.keys() == new.keys() and all(torch.equal(src[k], new[k]) for k in src)
    gen_src = load_file(str(tiny_model_dir / "generator.safetensors"))
    gen_new = load_file(str(tmp_path / "variant" / "generator.safetensors"))
    assert not all(torch.equal(gen_src[k], gen_new[k]) for k in gen_src if k in gen_new)
    assert model.cfg.gan.condition == "fill" and len(model.generate("positive", n=2, seed=0)) == 2
    with pytest.raises(TrainingError, match=r"\[ae\] config differs"):
        train(tiny_config(corpus_csv, "ae.code_dim=24"), tmp_path / "bad", ae_from=tiny_model_dir, progress=False,
              log=lambda m: None)


def test_a_batch_of_requests_equals_each_request_alone(tiny_model_dir):
    model = ReviewGAN.from_pretrained(tiny_model_dir)
    reqs = [dict(sentiment="positive", n=3, seed=1, temperature=0.7), dict(sentiment="negative", n=2, seed=2, greedy=True),
            dict(sentiment="negative", n=4, seed=3, temperature=1.3, top_p=0.8), dict(sentiment="positive", n=1, seed=4,
            temperature=1.0, max_len=5)]
    together = model.generate_batch([model.request(**r) for r in reqs])
    assert together == [model.generate(**r, records=True) for r in reqs]
    assert all(r.tokens <= 5 for r in together[3]) and together[0] != together[2]


def test_the_reader_is_the_logistic_regression_of_the_codes():
    from sklearn.linear_model import LogisticRegression
    from reviewgan.gan import fit_reader
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (400,), generator=g)
    codes = torch.randn(400, 6, generator=g) + 0.8 * (2 * labels[:, None] - 1) * torch.tensor([1., -1, 0, 0, 0, 0])
    reader = fit_reader(codes, labels)
    ref = LogisticRegression(max_iter=2000).fit(codes.double().numpy(), labels.numpy()).predict_proba(codes.double().numpy())
    assert torch.allclose(reader(codes).detach().double(), torch.as_tensor(ref[:, 1]), atol=1e-5)
    assert float(((reader(codes) > 0.5).long() == labels).float().mean()) > 0.7


def test_stage_2_ends_with_a_reader_and_resume_fits_a_missing_one(tiny_model_dir, tmp_path):
    import shutil
    assert (tiny_model_dir / "reader.safetensors").exists()
    rows = [json.loads(x) for x in (tiny_model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows][-1] == "reader" and 0.5 < rows[-1]["reader_acc_val"] <= 1
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run)
    (run / "reader.safetensors").unlink()
    cfg = ReviewGAN.from_pretrained(run).cfg
    model = train(cfg, run, resume=True, progress=False, log=lambda m: None)  # nothing left to train but the reader
    assert model.reader is not None
    before, after = load_file(str(tiny_model_dir / "reader.safetensors")), load_file(str(run / "reader.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def screened(model, screen, tries=4):
    from reviewgan.config import apply_overrides
    model.cfg = apply_overrides(model.cfg, [f"sample.screen={screen}", f"sample.screen_tries={tries}"])
    return model


def reads(model, reviews, label):
    texts = [r.text for r in reviews]
    p = model.reader(model.autoencoder.encode_texts(texts, model.tokenizer, model.cfg.data.max_len, "cpu"))
    return (p if label else 1 - p).detach()


def test_the_screen_keeps_the_draw_read_most_clearly(tiny_model_dir):
    model = ReviewGAN.from_pretrained(tiny_model_dir)
    plain = model.generate("negative", n=12, seed=5, temperature=1.0, records=True)
    assert screened(model, 0.0).generate("negative", n=12, seed=5, temperature=1.0, records=True) == plain  # off
    assert screened(model, 0.99, tries=1).generate("negative", n=12, seed=5, temperature=1.0, records=True) == plain
    low = reads(model, plain, 0)
    redo = low < 0.99
    assert redo.any()  # the tiny model's reader is far from sure of most reviews
    kept = screened(model, 0.99, tries=4).generate("negative", n=12, seed=5, temperature=1.0, records=True)
    high = reads(model, kept, 0)
    # a review read clearly enough on its first draw stays; every other one is read at least as clearly
    assert all(k == p for k, p, r in zip(kept, plain, redo) if not r)
    assert (high >= low - 1e-6).all() and (high > low + 1e-6).any()
    assert kept == screened(model, 0.99, tries=4).generate("negative", n=12, seed=5, temperature=1.0, records=True)


def test_a_screened_batch_of_requests_equals_each_request_alone(tiny_model_dir):
    model = screened(ReviewGAN.from_pretrained(tiny_model_dir), 0.99, tries=3)
    reqs = [dict(sentiment="positive", n=3, seed=1, temperature=0.7), dict(sentiment="negative", n=2, seed=2, greedy=True),
            dict(sentiment="positive", n=4, seed=4, temperature=1.0, max_len=5)]
    together = model.generate_batch([model.request(**r) for r in reqs])
    assert together == [model.generate(**r, records=True) for r in reqs]
    assert all(r.tokens <= 5 for r in together[2])


def test_screening_a_model_without_a_reader_is_one_clear_error(tiny_model_dir, tmp_path):
    import shutil
    from reviewgan.checkpoint import ModelError
    shutil.copytree(tiny_model_dir, tmp_path / "old")
    (tmp_path / "old" / "reader.safetensors").unlink()
    model = ReviewGAN.from_pretrained(tmp_path / "old")
    assert model.reader is None and len(model.generate("positive", n=2, seed=0)) == 2  # unscreened: fine
    with pytest.raises(ModelError, match="sample.screen needs the model's sentiment reader"):
        screened(model, 0.5).generate("positive", n=2, seed=0)


def test_sample_max_len_is_the_default_budget(tiny_model_dir):
    model = ReviewGAN.from_pretrained(tiny_model_dir)
    model.cfg.sample.max_len = 4
    assert all(r.tokens <= 4 for r in model.generate("negative", n=8, seed=0, records=True))
    assert any(r.tokens > 4 for r in model.generate("negative", n=8, seed=0, max_len=24, records=True))
