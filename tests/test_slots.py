"""The token-slot code (ae.code=tokens, slots.py) end to end on the tiny random Llama: the code's shape
and layout, the encoder trained with the decoder, word dropout, both stages, the model folder,
seeded generation with the screen, and the reference a batch's codes are compared with."""

import pytest
import torch

pytest.importorskip("transformers", reason="the pretrained family needs transformers")
pytest.importorskip("sentence_transformers", reason="the pretrained family's encoder needs sentence-transformers")

from reviewgan import ReviewGAN  # noqa: E402
from reviewgan.config import ConfigError  # noqa: E402
from reviewgan.embedder import MiniLM  # noqa: E402
from reviewgan.slots import SlotAutoencoder  # noqa: E402
from reviewgan.train import train  # noqa: E402

from .conftest import tiny_pretrained_config  # noqa: E402

QUIET = dict(progress=False, log=lambda m: None)
K, D = 12, 8
TOKENS = ("ae.code=tokens", f"ae.code_slots={K}", f"ae.slot_dim={D}", f"ae.code_dim={K * D}",
          "ae.code_activation=none", "ae.word_dropout=0.5")


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REVIEWGAN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _tiny_run(tmp_path_factory, cased_corpus_csv, tiny_base, name: str, code: tuple):
    """Both stages of a tiny slot-code model, trained once per session."""
    import os
    os.environ["REVIEWGAN_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    out = tmp_path_factory.mktemp("runs") / name
    train(tiny_pretrained_config(cased_corpus_csv, tiny_base, *code, "gan.steps=10", "ae.epochs=4",
                                 "sample.screen=0.6"), out, **QUIET)
    return out


@pytest.fixture(scope="session")
def slots_dir(tmp_path_factory, cased_corpus_csv, tiny_base):
    return _tiny_run(tmp_path_factory, cased_corpus_csv, tiny_base, "slots", TOKENS)


def test_the_config_refuses_a_code_size_that_is_not_slots_times_dims(cased_corpus_csv, tiny_base):
    with pytest.raises(ConfigError, match="code_slots x slot_dim"):
        tiny_pretrained_config(cased_corpus_csv, tiny_base, *TOKENS, "ae.code_dim=384")


def test_token_states_pool_to_the_sentence_embedding():
    # The slots are read from the same forward pass that gives the screen's sentence embeddings.
    enc = MiniLM()
    texts = ["A fine film.", "The plot was a mess and the acting worse."]
    states, mask = enc.states(texts)
    m = mask[..., None].float()
    pooled = torch.nn.functional.normalize((states * m).sum(1) / m.sum(1), dim=-1)
    assert torch.allclose(pooled.double(), torch.as_tensor(enc.encode(texts)), atol=1e-5)
    assert mask.sum(1).tolist() == [len(e.ids) for e in enc.tokenizer.encode_batch(texts)]
    cut, cut_mask = enc.states(texts, 4)
    assert torch.equal(cut, states[:, :4]) and torch.equal(cut_mask, mask[:, :4])


def test_a_code_is_one_normalised_slot_per_token_then_zeros(slots_dir):
    model = ReviewGAN.from_pretrained(slots_dir)
    ae = model.autoencoder
    assert isinstance(ae, SlotAutoencoder)
    texts = ["Great.", "A long and winding story of a family that never once agrees on anything at all."]
    codes = model.encode(texts).view(2, K, D)
    n_tokens = [len(e.ids) for e in ae.minilm().tokenizer.encode_batch(texts)]
    assert n_tokens[0] < K <= n_tokens[1]
    present = codes.abs().sum(-1) > 0
    assert present[0].tolist() == [i < n_tokens[0] for i in range(K)] and bool(present[1].all())
    real = codes[present]
    assert torch.allclose(real.mean(-1), torch.zeros(len(real)), atol=1e-4)
    assert torch.allclose(real.pow(2).mean(-1), torch.ones(len(real)), atol=1e-2)


def test_a_batch_codes_each_text_as_it_is_coded_alone(slots_dir):
    model = ReviewGAN.from_pretrained(slots_dir)
    model.autoencoder.to(torch.float32)
    model.autoencoder.lm.dtype = torch.float32  # the embedder then runs in float32 too: padding's rounding ~1e-6
    texts = ["Great.", "The story was dull and far too long.", "I loved every minute of it!"]
    together = model.encode(texts)
    alone = torch.cat([model.encode([t]) for t in texts])
    assert torch.allclose(together, alone, atol=1e-3)


def test_the_encoder_is_trained_and_saved_with_the_decoder(slots_dir):
    from safetensors.torch import load_file
    saved = load_file(str(slots_dir / "decoder.safetensors"))
    assert any(k.startswith("slots.") for k in saved) and any(k.startswith("memory.") for k in saved)
    assert all(k.startswith(("slots.", "memory.")) or ".lora_" in k for k in saved)  # no base weights
    assert float(saved["memory.kv.weight"].abs().sum()) > 0  # it moved from its zero start
    assert "slots.ln.weight" in saved and "slots.down.weight" in saved


def test_word_dropout_blanks_inputs_only_while_training(slots_dir):
    model = ReviewGAN.from_pretrained(slots_dir)
    ae = model.autoencoder
    fed = []
    real = ae._teacher_forced
    ae._teacher_forced = lambda ids, given, lengths, codes: fed.append((ids, given)) or real(ids, given, lengths, codes)
    units = type("U", (), {})()
    units.ids = [ae.tokenizer.encode("The film was fine and the cast was good.") + [ae.tokenizer.end_id]] * 8
    units.texts, units.labels = ["The film was fine and the cast was good."] * 8, [1] * 8
    batch = ae.batch(units, list(range(8)), "cpu")
    torch.manual_seed(0)
    ae.train()
    ae.loss(*batch)
    ae.eval()
    ae.loss(*batch)
    (ids, train_fed), (_, eval_fed) = fed
    blanked = float((train_fed != ids).float().mean())
    assert 0.3 < blanked < 0.7 and bool((train_fed[train_fed != ids] == ae.tokenizer.pad_id).all())
    assert torch.equal(eval_fed, ids)


def test_generation_is_seeded_and_screened_by_the_sentence_reader(slots_dir):
    model = ReviewGAN.from_pretrained(slots_dir)
    assert model.reader.linear.in_features == 384  # the screen reads sentence embeddings, not codes
    a = model.generate("positive", n=6, seed=3, records=True)
    assert [r.to_dict() for r in a] == [r.to_dict() for r in model.generate("positive", n=6, seed=3, records=True)]
    fake = model.generator(torch.randn(4, model.cfg.gan.noise_dim), torch.ones(4, dtype=torch.long)).detach()
    assert fake.shape == (4, K * D)
    # each generated slot is a normalised vector times a gate in (0, 1), as the encoder's are (gate 0 or 1),
    # and no slot is more present than the one before it: the encoder's codes have no holes
    slots = fake.view(4, K, D)
    gate = slots.pow(2).mean(-1).sqrt()
    assert bool((gate > 0).all() and (gate < 1).all())
    assert bool((gate[:, 1:] <= gate[:, :-1] + 1e-6).all())
    assert torch.allclose(slots.mean(-1), torch.zeros(4, K), atol=1e-5)


def test_reconstruction_figures_are_measured(slots_dir, capsys):
    import json
    from reviewgan.cli import main
    assert main(["evaluate", "--model", str(slots_dir), "--n", "20", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert 0 <= r["recon_bleu4"] <= 1 and -1 <= r["recon_cos"] <= 1 and r["recon_sentiment_kept"] >= 0


SLOT_GAN = ("gan.arch=slots", "gan.width=16", "gan.heads=2", "gan.n_blocks=2")


def test_the_slot_transformers_need_a_token_slot_code(cased_corpus_csv, tiny_base):
    with pytest.raises(ConfigError, match="gan.arch=slots"):
        tiny_pretrained_config(cased_corpus_csv, tiny_base, *SLOT_GAN)
    with pytest.raises(ConfigError, match="divisible"):
        tiny_pretrained_config(cased_corpus_csv, tiny_base, *TOKENS, *SLOT_GAN, "gan.heads=3")


def _slot_networks(cased_corpus_csv, tiny_base):
    from reviewgan.gan_slots import networks
    cfg = tiny_pretrained_config(cased_corpus_csv, tiny_base, *TOKENS, *SLOT_GAN)
    torch.manual_seed(0)
    return cfg, *networks(cfg.gan, K * D, f"slots{D}")


def test_the_slot_generator_writes_slots_in_a_run_as_the_encoder_does(cased_corpus_csv, tiny_base):
    cfg, gen, _ = _slot_networks(cased_corpus_csv, tiny_base)
    with torch.no_grad():
        gen.out.bias[-1] = 0.0  # gates near 0.5 each: the running product falls along the code
    slots = gen(torch.randn(5, cfg.gan.noise_dim), torch.tensor([0, 1, 0, 1, 1])).view(5, K, D)
    rms = slots.detach().pow(2).mean(-1).sqrt()  # each slot's length: its gate
    assert bool((rms[:, 1:] <= rms[:, :-1] + 1e-6).all())  # never a hole: a slot is no more present than the one before
    assert bool((rms[:, 0] > 0.05).all() and (rms[:, -1] < 0.01).all())
    assert torch.allclose(slots.detach().mean(-1), torch.zeros(5, K), atol=1e-5)
    slots.pow(2).sum().backward()  # the gates learn through the products
    assert float(gen.out.weight.grad[-1].abs().sum()) > 1e-3
    assert not torch.allclose(slots[:, 0], slots[:, 1])  # positions differ: each slot has its own embedding


def test_the_slot_critic_scores_each_code_alone_and_sees_slot_order(cased_corpus_csv, tiny_base):
    # the fused critic pass (gan.critic_loss) needs rows scored independently: no batch statistics
    _, _, critic = _slot_networks(cased_corpus_csv, tiny_base)
    codes, labels = torch.randn(6, K * D), torch.tensor([0, 1, 1, 0, 1, 0])
    score, logit = critic(codes, labels)
    for i in range(6):
        s, l = critic(codes[i:i + 1], labels[i:i + 1])
        assert torch.allclose(s, score[i:i + 1], atol=1e-5) and torch.allclose(l, logit[i:i + 1], atol=1e-5)
    swapped = codes.view(6, K, D)[:, torch.arange(K).roll(1)].flatten(1)  # the same slots in another order
    assert (critic(swapped, labels)[0] - score).abs().max() > 1e-3


def test_a_slot_critic_step_reaches_every_weight_through_the_penalty(cased_corpus_csv, tiny_base):
    from reviewgan.gan import ReferenceSteps
    cfg, gen, critic = _slot_networks(cased_corpus_csv, tiny_base)
    steps = ReferenceSteps(gen, critic, cfg.gan)
    y = torch.tensor([0, 1, 0, 1])
    fake = steps.fake(torch.randn(4, cfg.gan.noise_dim), y)
    parts = steps.critic_step(torch.randn(4, K * D), y, fake, y, torch.rand(4, 1))
    assert float(parts["gp"]) > 0
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in critic.parameters())
    steps.generator_step(torch.randn(4, cfg.gan.noise_dim), y)
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for n, p in gen.named_parameters()
               if not n.startswith("cond"))  # the label's embedding row not drawn this batch may stay zero


def test_a_slot_gan_trains_on_a_finished_autoencoder_and_reloads(slots_dir, tmp_path, cased_corpus_csv, tiny_base):
    cfg = tiny_pretrained_config(cased_corpus_csv, tiny_base, *TOKENS, *SLOT_GAN, "gan.steps=6", "ae.epochs=4",
                                 "sample.screen=0.6")
    model = train(cfg, tmp_path / "slotgan", ae_from=slots_dir, **QUIET)
    assert type(model.generator).__name__ == "SlotGenerator"
    again = ReviewGAN.from_pretrained(tmp_path / "slotgan")
    assert type(again.generator).__name__ == "SlotGenerator"
    assert model.generate("negative", n=3, seed=1) == again.generate("negative", n=3, seed=1)


# The latent code (ae.code=latents): KL learnt queries read all of the text; every slot always present.
KL = 4
LATENTS = ("ae.code=latents", f"ae.code_slots={KL}", f"ae.slot_dim={D}", f"ae.code_dim={KL * D}",
           "ae.code_activation=none", "ae.word_dropout=0.5", "ae.latent_layers=1")


@pytest.fixture(scope="session")
def latents_dir(tmp_path_factory, cased_corpus_csv, tiny_base):
    return _tiny_run(tmp_path_factory, cased_corpus_csv, tiny_base, "latents", LATENTS)


def test_a_latent_code_is_k_normalised_slots_read_from_all_of_the_text(latents_dir):
    from reviewgan.slots import LatentAutoencoder, LatentSlots
    model = ReviewGAN.from_pretrained(latents_dir)
    ae = model.autoencoder
    assert isinstance(ae, LatentAutoencoder) and ae.code_kind == f"latent{D}"
    texts = ["Great.", "A long and winding story of a family that never once agrees on anything at all."]
    codes = model.encode(texts).view(2, KL, D)
    assert torch.allclose(codes.mean(-1), torch.zeros(2, KL), atol=1e-4)  # every slot present, normalised
    assert torch.allclose(codes.pow(2).mean(-1), torch.ones(2, KL), atol=1e-2)

    # every token is read, the last one too (a token-slot code drops those past its K); padding is not
    torch.manual_seed(0)
    reader = LatentSlots(KL, D, 2).eval()  # its per-dimension standardisation: running statistics, text by text
    states, mask = torch.randn(1, 30, 384), torch.ones(1, 30, dtype=torch.bool)
    with torch.no_grad():
        code = reader(states, mask)
        last = states.clone()
        last[:, -1] += 5 * torch.randn(384)
        assert (reader(last, mask) - code).abs().max() > 1e-2
        padded = torch.cat([states, 9 * torch.randn(1, 6, 384)], 1)
        assert torch.allclose(reader(padded, torch.cat([mask, torch.zeros(1, 6, dtype=torch.bool)], 1)), code,
                              atol=1e-4)


def test_a_latent_code_of_a_batch_is_each_text_coded_alone(latents_dir):
    model = ReviewGAN.from_pretrained(latents_dir)
    model.autoencoder.to(torch.float32)
    model.autoencoder.lm.dtype = torch.float32
    texts = ["Great.", "The story was dull and far too long.", "I loved every minute of it!"]
    together = model.encode(texts)
    alone = torch.cat([model.encode([t]) for t in texts])
    assert torch.allclose(together, alone, atol=1e-3)  # padding is masked out of the cross-attention


def test_the_latent_reader_is_trained_and_saved_and_the_generator_writes_its_shape(latents_dir):
    from safetensors.torch import load_file
    saved = load_file(str(latents_dir / "decoder.safetensors"))
    assert "slots.queries" in saved and "slots.blocks.0.kv.weight" in saved
    assert not any(k.startswith("slots.blocks.1.") for k in saved)  # ae.latent_layers=1
    assert all(k.startswith(("slots.", "memory.")) or ".lora_" in k for k in saved)
    model = ReviewGAN.from_pretrained(latents_dir)
    fake = model.generator(torch.randn(5, model.cfg.gan.noise_dim), torch.ones(5, dtype=torch.long)).detach()
    assert model.generator.net.out.out_features == KL * D  # no gates
    slots = fake.view(5, KL, D)
    assert torch.allclose(slots.mean(-1), torch.zeros(5, KL), atol=1e-5)
    assert torch.allclose(slots.pow(2).mean(-1), torch.ones(5, KL), atol=1e-3)
    a = model.generate("negative", n=4, seed=2, records=True)
    assert [r.to_dict() for r in a] == [r.to_dict() for r in model.generate("negative", n=4, seed=2, records=True)]


def test_a_moved_latent_code_is_put_back_slot_by_slot():
    from reviewgan.rewrite import into_space
    moved = into_space(3.0 * torch.randn(2, KL * D) + 1.0, f"latent{D}").view(2, KL, D)
    assert torch.allclose(moved.mean(-1), torch.zeros(2, KL), atol=1e-5)
    assert torch.allclose(moved.pow(2).mean(-1), torch.ones(2, KL), atol=1e-3)


def test_each_latent_starts_out_reading_its_own_stretch_of_the_text():
    from reviewgan.slots import LatentSlots
    reader = LatentSlots(4, D)
    mask = torch.ones(2, 36, dtype=torch.bool)
    mask[1, 18:] = False  # a text half as long, padded
    with torch.no_grad():
        weights = torch.softmax(reader.window_bias(mask), -1)  # (2, 4, 36)
    peak = weights.argmax(-1)  # slot i's centre: token (i + 1/2) / 4 x length - 1/2
    assert peak[0].tolist() == [4, 13, 22, 31] and peak[1].tolist() == [2, 6, 11, 15]  # in order, over each text
    assert float(weights[1, :, 18:].sum()) == 0.0  # none on padding
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4))
