"""Unit tests that would catch every bug of the seed's code that docs/PAPER.md lists."""

import pytest
import torch
import torch.nn.functional as F

from reviewgan.autoencoder import IGNORE, Autoencoder, SoftmaxCrossEntropy, decoder_io, sample_nucleus, sample_top_p
from reviewgan.bench import StraightforwardMLP, straightforward_ae_loss
from reviewgan.config import AEConfig, GANConfig
from reviewgan.gan import (Critic, Generator, ResidualMLP, clip_weights_, critic_loss, gradient_penalty,
                           upgrade_state_dict)
from reviewgan.tokenizer import END, PAD, START

# The paper's autoencoder at toy sizes (the defaults are reviewgan's recipe); each test adds what it checks.
PAPER_AE = dict(enc_bidirectional=False, code_to_input=False, label_to_decoder=False, code_noise=0.0)
AE = AEConfig(emb_dim=8, enc_hidden=8, code_dim=16, dropout=0.0, code_activation="l2", **PAPER_AE)


def batch(seqs):
    lengths = torch.tensor([len(s) for s in seqs])
    ids = torch.full((len(seqs), int(lengths.max())), PAD)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    return ids, lengths


def test_targets_shift_without_wraparound():
    ids, lengths = batch([[5, 6, 7, END], [8, END]])
    inputs, targets, mask = decoder_io(ids, lengths)
    assert inputs.tolist() == [[START, 5, 6, 7], [START, 8, END, PAD]]
    assert targets[:, -1].tolist() == [END, PAD]  # last target is [END] / padding, never [START]
    assert mask.tolist() == [[True] * 4, [True, True, False, False]]


def test_loss_unchanged_by_padding():
    torch.manual_seed(0)
    ae = Autoencoder(50, AE).eval()
    seqs = [[5, 6, 7, END], [8, 9, END]]
    ids, lengths = batch(seqs)
    padded = torch.cat([ids, torch.full((2, 7), PAD)], dim=1)  # same batch, 7 extra pad columns
    a = ae.loss(ids, lengths)
    b = ae.loss(padded, lengths)
    assert torch.allclose(a[0], b[0], atol=1e-6) and a[3] == b[3] == 7
    # and the code of a review does not depend on how much padding sits beside it
    assert torch.allclose(ae.encode(ids, lengths)[0], ae.encode(padded, lengths)[0], atol=1e-6)


def test_variational_option_has_kl_and_samples():
    torch.manual_seed(0)
    ae = Autoencoder(50, AEConfig(emb_dim=8, enc_hidden=8, code_dim=16, variational=True, **PAPER_AE)).train()
    ids, lengths = batch([[5, 6, END], [7, END]])
    c1, kl = ae.encode(ids, lengths, sample=True)
    c2, _ = ae.encode(ids, lengths, sample=True)
    assert kl.item() > 0 and not torch.allclose(c1, c2)
    assert torch.allclose(*[ae.encode(ids, lengths, sample=False)[0] for _ in range(2)])


def test_code_noise_and_squashing():
    torch.manual_seed(0)
    ae = Autoencoder(50, AE)
    ids, lengths = batch([[5, 6, END]])
    code, _ = ae.encode(ids, lengths)
    assert torch.allclose(code.norm(dim=-1), torch.ones(1))  # l2 codes live on the unit sphere
    noisy, _ = ae.encode(ids, lengths, noise_std=0.5)
    assert not torch.allclose(code, noisy)


def test_residual_block_adds_its_own_input():
    torch.manual_seed(0)
    net = ResidualMLP(3, 4, 2, 5)
    with torch.no_grad():
        net.w2.zero_(); net.b2.zero_()
    x = torch.randn(6, 3)
    assert torch.equal(net.features(x), net.inp(x))  # branches are zero -> identity, whatever came before
    with torch.no_grad():
        net.w2.normal_(); net.b2.normal_()
    h = net.inp(x)
    for l in range(2):  # block l adds its own input h, not the first layer's output
        h = h + F.linear(torch.relu(F.linear(h, net.w1[l], net.b1[l])), net.w2[l], net.b2[l])
    assert torch.allclose(net.features(x), h, atol=1e-6)


def test_stacked_blocks_compute_and_load_as_one_module_per_block():
    # The bench's straightforward layout (one nn.Linear pair per block) computes the same function;
    # its state dict, the layout reviewgan 0.2 saved, converts to the stacked one.
    torch.manual_seed(0)
    cfg = GANConfig(noise_dim=8, width=8, n_blocks=3, cond_dim=4)
    gen = Generator(cfg, 16, "l2")
    old = Generator(cfg, 16, "l2")
    old.cond, old.net = gen.cond, StraightforwardMLP(gen.net)
    z, y = torch.randn(5, 8), torch.tensor([0, 1, 1, 0, 1])
    assert torch.allclose(gen(z, y), old(z, y), atol=1e-6)
    saved = old.state_dict()
    assert "net.blocks.2.1.weight" in saved  # ModuleList naming: convert what 0.2 wrote instead
    saved = {k.replace(".0.weight", ".fc1.weight").replace(".0.bias", ".fc1.bias")
             .replace(".1.weight", ".fc2.weight").replace(".1.bias", ".fc2.bias"): v for k, v in saved.items()}
    fresh = Generator(cfg, 16, "l2")
    fresh.load_state_dict(upgrade_state_dict(saved))
    assert torch.equal(fresh(z, y), gen(z, y))
    assert upgrade_state_dict(gen.state_dict()).keys() == gen.state_dict().keys()  # new layout: unchanged


def test_clipping_bounds_every_critic_parameter():
    cfg = GANConfig(width=8, n_blocks=3, cond_dim=4, critic_conditioned=True)
    critic = Critic(cfg, 16)
    with torch.no_grad():
        for p in critic.parameters():
            p.normal_(0, 1)
    clip_weights_(critic, 0.01)
    names = [n for n, _ in critic.named_parameters()]
    assert any("bias" in n for n in names) and any("out" in n for n in names) and any("proj" in n for n in names)
    for n, p in critic.named_parameters():
        assert p.abs().max() <= 0.01 + 1e-9, n


def test_gradient_penalty_is_per_sample():
    class Linear(torch.nn.Module):  # critic D(x) = w_i . x for sample i: per-sample gradient norm is known
        def __init__(self, w):
            super().__init__()
            self.w = w

        def forward(self, x, labels):
            return (x * self.w).sum(-1), x[:, 0]

    w = torch.tensor([[3.0, 4.0], [0.6, 0.8]])  # |grad| = 5 and 1 per sample
    real, fake = torch.randn(2, 2), torch.randn(2, 2)
    gp = gradient_penalty(Linear(w), real, fake, torch.zeros(2, dtype=torch.long))
    assert torch.allclose(gp, torch.tensor(((5 - 1) ** 2 + (1 - 1) ** 2) / 2))  # not (|batch grad| - 1)^2


def test_generator_output_in_code_space_and_condition_matters():
    torch.manual_seed(0)
    cfg = GANConfig(noise_dim=8, width=8, n_blocks=2, cond_dim=4)
    g = Generator(cfg, 16, "sigmoid")
    z = torch.randn(5, 8)
    a = g(z, torch.zeros(5, dtype=torch.long))
    b = g(z, torch.ones(5, dtype=torch.long))
    assert a.min() >= 0 and a.max() <= 1 and not torch.allclose(a, b)


def test_critic_loss_parts():
    torch.manual_seed(0)
    cfg = GANConfig(width=8, n_blocks=1, cond_dim=4, lipschitz="gp", cls_loss="mse", cls_on_fake=True)
    critic = Critic(cfg, 16)
    loss, parts = critic_loss(critic, torch.rand(6, 16), torch.tensor([0, 1] * 3), torch.rand(6, 16),
                              torch.tensor([1, 0] * 3), cfg)
    assert loss.requires_grad and parts["gp"] > 0 and 0 <= parts["c_acc"] <= 1


def test_fused_critic_pass_matches_separate_passes():
    # One pass over [real; fake; interpolates] must give the loss and the gradients of three passes.
    torch.manual_seed(0)
    cfg = GANConfig(width=8, n_blocks=3, cond_dim=4, lipschitz="gp", critic_conditioned=True)
    critic = Critic(cfg, 16)
    torch.nn.init.normal_(critic.proj.weight)  # a non-zero projection, so the labels matter
    real, fake, eps = torch.rand(5, 16), torch.rand(5, 16), torch.rand(5, 1)
    yr, yf = torch.tensor([0, 1, 1, 0, 1]), torch.tensor([1, 0, 0, 0, 1])
    grads = []
    for fused in (True, False):
        critic.zero_grad()
        loss, parts = critic_loss(critic, real, yr, fake, yf, cfg, eps, fused=fused)
        loss.backward()
        grads.append((loss.detach(), parts["gp"], [p.grad.clone() for p in critic.parameters()]))
    (l1, gp1, g1), (l2, gp2, g2) = grads
    assert torch.allclose(l1, l2, atol=1e-6) and torch.allclose(gp1, gp2, atol=1e-6) and gp1 > 0
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g1, g2))


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_top_p(logits, 1.0, 0.5, g)) for _ in range(50)}
    assert draws == {0}
    draws = {int(sample_top_p(logits, 1.0, 0.85, g)) for _ in range(200)}
    assert draws == {0, 1}


def test_nucleus_sampling_draws_what_top_p_sampling_draws():
    """The top-k fast path against the full sort, row for row: peaked and flat rows (whose nucleus
    is larger than k, so they fall back), top_p = 1 and tiny top_p, per-row temperatures, and logits
    rounded to bf16 as a decoder's are, where equal probabilities straddle the nucleus's edge."""
    torch.manual_seed(0)
    for V, k in [(50, 8), (3000, 16), (3000, 256)]:
        B = 64
        logits = torch.randn(B, V) * torch.linspace(0.1, 6, B)[:, None]
        temp = torch.rand(B, 1) * 1.5 + 0.3
        p = torch.rand(B, 1)
        p[::7], p[::5] = 1.0, 0.01
        u = torch.rand(B, 1)
        for x in (logits, (logits * 3).bfloat16().float()):
            assert torch.equal(sample_nucleus(x, temp, p, u=u, k=k), sample_top_p(x, temp, p, u=u))
            assert torch.equal(sample_nucleus(x, 0.8, 0.9, u=u, k=k), sample_top_p(x, 0.8, 0.9, u=u))
    # five tokens of one probability, the nucleus ending among them: the reference keeps the lowest ids
    row = torch.full((1, 40), -30.0)
    row[0, [3, 9, 17, 25, 31]] = 0.0
    for p in (0.3, 0.5, 0.7):
        for u in torch.linspace(0.01, 0.99, 25):
            u = u.view(1, 1)
            assert torch.equal(sample_nucleus(row, 1.0, p, u=u, k=4), sample_top_p(row, 1.0, p, u=u))
            assert torch.equal(sample_nucleus(row, 1.0, p, u=u, k=8), sample_top_p(row, 1.0, p, u=u))
    draws = {int(sample_top_p(row, 1.0, 0.5, u=torch.tensor([[x]]))) for x in torch.linspace(0.01, 0.99, 50)}
    assert draws == {3, 9, 17}


def test_generation_stops_at_end_and_is_batched():
    torch.manual_seed(0)
    ae = Autoencoder(20, AE).eval()
    with torch.no_grad():  # make [END] the argmax after the first step for every code
        ae.decoder.out.weight.zero_(); ae.decoder.out.bias.zero_(); ae.decoder.out.bias[END] = 5
    rows, ended = ae.generate(torch.randn(4, 16), max_len=10)
    assert rows == [[]] * 4 and ended == [True] * 4
    with torch.no_grad():
        ae.decoder.out.bias[END] = -5; ae.decoder.out.bias[7] = 5
    rows, ended = ae.generate(torch.randn(3, 16), max_len=6)
    assert rows == [[7] * 6] * 3 and ended == [False] * 3


def test_decoder_can_be_conditioned_on_the_sentiment():
    torch.manual_seed(0)
    cfg = AEConfig(emb_dim=8, enc_hidden=8, code_dim=16, dropout=0.0, **{**PAPER_AE, "label_to_decoder": True})
    ae = Autoencoder(30, cfg).eval()
    ids, lengths = batch([[5, 6, END], [7, END]])
    pos = ae.loss(ids, lengths, torch.tensor([1, 1]))[0]
    neg = ae.loss(ids, lengths, torch.tensor([0, 0]))[0]
    assert not torch.allclose(pos, neg)
    code = torch.randn(2, 16)
    a = ae.generate(code, 8, labels=torch.tensor([0, 0]))
    b = ae.generate(code, 8, labels=torch.tensor([1, 1]))
    assert a != b


def test_critic_sentiment_head_cannot_read_the_label():
    """The conditioned critic's realness score depends on the label; its sentiment prediction must not."""
    torch.manual_seed(0)
    critic = Critic(GANConfig(width=8, n_blocks=2, critic_conditioned=True), 16)
    torch.nn.init.normal_(critic.proj.weight)
    code = torch.randn(5, 16)
    s0, l0 = critic(code, torch.zeros(5, dtype=torch.long))
    s1, l1 = critic(code, torch.ones(5, dtype=torch.long))
    assert torch.equal(l0, l1) and not torch.allclose(s0, s1)


def test_decoding_step_matches_the_full_sequence_pass():
    torch.manual_seed(0)
    ae = Autoencoder(30, AEConfig(emb_dim=8, enc_hidden=8, code_dim=16, dropout=0.0, code_to_input=True,
                                  label_to_decoder=True)).eval()
    code, labels = torch.randn(3, 16), torch.tensor([0, 1, 1])
    tokens = torch.tensor([[START, 5, 6, 7]] * 3)
    full = ae.decoder(tokens, code, labels)  # (3, 4, V) through nn.LSTM
    state = ae.decoder.initial_state(code)
    for t in range(4):
        logits, state = ae.decoder.step(tokens[:, t], code, state, labels)
        assert torch.allclose(logits, full[:, t], atol=1e-5)


def _grads(module):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("lengths", [[5, 5, 5, 5], [7, 5, 7, 3, 5, 2], [1, 6, 6, 2, 6], [4]])
def test_encoder_runs_between_lengths_match_packing(lengths, bidirectional):
    torch.manual_seed(0)
    cfg = AEConfig(emb_dim=8, enc_hidden=8, code_dim=16, dropout=0.0, **{**PAPER_AE, "enc_bidirectional": bidirectional})
    enc = Autoencoder(30, cfg).encoder
    ids, lens = batch([torch.randint(4, 30, (n,)).tolist() for n in lengths])
    enc(ids, lens).pow(2).sum().backward()
    out, grads = enc(ids, lens), _grads(enc)
    enc.zero_grad()
    ref = enc(ids, lens, pack=True)
    ref.pow(2).sum().backward()
    assert torch.allclose(out, ref, atol=1e-6)
    for a, b in zip(grads, _grads(enc), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_encoder_runs_between_lengths_under_bf16_autocast():
    # Under autocast the fused runs compute in bf16 (packing kept float32): close, not equal.
    torch.manual_seed(0)
    enc = Autoencoder(30, AEConfig(emb_dim=8, enc_hidden=8, code_dim=16, **{**PAPER_AE, "enc_bidirectional": True})).encoder
    ids, lens = batch([torch.randint(4, 30, (n,)).tolist() for n in [7, 5, 7, 3]])
    ref = enc(ids, lens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(ids, lens)
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), ref, atol=0.05)


def _reference_ce(logits, bias, target):
    """F.cross_entropy on float32 logits + bias, its gradients, and the count of right real rows."""
    x, b = logits.detach().float().requires_grad_(), bias.detach().clone().requires_grad_()
    z = x + b
    loss = F.cross_entropy(z, target, ignore_index=IGNORE)
    real = target != IGNORE
    right = int((z.argmax(-1) == target)[real].sum())
    return loss, x, b, right


def test_softmax_cross_entropy_in_bf16_and_once_differentiable():
    torch.manual_seed(0)
    logits = (3 * torch.randn(6, 2, 9)).bfloat16()[:, 0].requires_grad_()  # non-contiguous rows
    bias = torch.randn(9, requires_grad=True)
    target = torch.tensor([1, 2, IGNORE, 4, 5, 8])
    loss, correct = SoftmaxCrossEntropy.apply(logits, bias, target)
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16 and bias.grad.dtype == torch.float32
    ref, ref_logits, ref_bias, right = _reference_ce(logits, bias, target)
    ref.backward()
    assert torch.allclose(loss, ref, atol=1e-5) and int(correct) == right
    assert torch.allclose(logits.grad.float(), ref_logits.grad, atol=2e-3)
    assert torch.allclose(bias.grad, ref_bias.grad, atol=1e-6)
    with pytest.raises(RuntimeError):  # the stored gradient is not differentiable again
        g, = torch.autograd.grad(SoftmaxCrossEntropy.apply(logits, bias, target)[0], logits, create_graph=True)
        g.sum().backward()


def test_softmax_cross_entropy_matches_torch_across_blocks(monkeypatch):
    monkeypatch.setattr(SoftmaxCrossEntropy, "BLOCK", 4)  # 10 rows: two full blocks and a partial one
    torch.manual_seed(0)
    logits, bias = (3 * torch.randn(10, 7)).requires_grad_(), torch.randn(7, requires_grad=True)
    target = torch.randint(0, 7, (10,))
    target[[1, 8]] = IGNORE
    with torch.no_grad():  # an ignored row whose top logit is class 0, where its target is clamped to
        logits[1, 0] = 50
    before = logits.detach().clone()
    loss, correct = SoftmaxCrossEntropy.apply(logits, bias, target)
    (2 * loss).backward()  # a scaled loss: the stored gradients are scaled on the way back
    assert torch.equal(logits, before)  # float32 logits are read, not overwritten
    ref, ref_logits, ref_bias, right = _reference_ce(logits, bias, target)
    (2 * ref).backward()
    assert torch.allclose(loss, ref, atol=1e-6) and int(correct) == right
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-6)
    assert torch.allclose(bias.grad, ref_bias.grad, atol=1e-6)
    assert logits.grad[[1, 8]].abs().sum() == 0  # ignored rows get no gradient


def test_softmax_cross_entropy_scales_bf16_gradients_by_the_exact_factor():
    torch.manual_seed(0)
    logits = (3 * torch.randn(5, 9)).bfloat16().requires_grad_()
    bias, target = torch.randn(9, requires_grad=True), torch.tensor([1, 2, IGNORE, 4, 5])
    SoftmaxCrossEntropy.apply(logits, bias, target)[0].backward()
    g1, b1 = logits.grad.float(), bias.grad.clone()
    logits.grad = bias.grad = None
    (SoftmaxCrossEntropy.apply(logits, bias, target)[0] / 3).backward()  # bf16 would round 1/3 up 0.2 %
    assert torch.allclose(logits.grad.float(), (g1 / 3).bfloat16().float(), rtol=0, atol=0)
    assert torch.allclose(bias.grad, b1 / 3, atol=1e-7)


def test_output_loss_of_a_layer_without_bias():
    from reviewgan.autoencoder import output_loss
    torch.manual_seed(0)
    out, h = torch.nn.Linear(4, 7, bias=False), torch.randn(2, 3, 4, requires_grad=True)
    targets, mask = torch.randint(0, 7, (2, 3)), torch.tensor([[True, True, False], [True, True, True]])
    ce, _ = output_loss(h, out, targets, mask)
    assert torch.allclose(ce, F.cross_entropy(out(h)[mask], targets[mask]), atol=1e-6)


def test_lm_loss_equals_cross_entropy_of_its_logits():
    # The LM baseline's training loss (bias added inside the blockwise loss) against F.cross_entropy
    # on its forward pass's logits: same loss, gradients and count of right tokens.
    from reviewgan.lm import ConditionalLM
    torch.manual_seed(0)
    lm = ConditionalLM(30, AEConfig(emb_dim=8, code_dim=16, dropout=0.0, **PAPER_AE))
    with torch.no_grad():
        lm.out.bias[7] = 5  # token 7 predicted everywhere: right twice
    ids, lens = batch([[5, 6, 7, END], [8, 9, END], [7, END]])
    labels = torch.tensor([0, 1, 1])
    ce, _, correct, n = lm.loss(ids, lens, labels)
    ce.backward()
    grads = _grads(lm)
    lm.zero_grad()
    inputs, targets, mask = decoder_io(ids, lens)
    logits = lm(inputs, labels)[0][mask]
    ref = F.cross_entropy(logits, targets[mask])
    ref.backward()
    right = int((logits.argmax(-1) == targets[mask]).sum())
    assert torch.allclose(ce, ref, atol=1e-6) and int(n) == 9 and int(correct) == right == 2
    for a, b in zip(grads, _grads(lm), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    with torch.no_grad():  # evaluation's path: the whole output layer and F.cross_entropy
        ce_eval, _, correct_eval, _ = lm.loss(ids, lens, labels)
    assert torch.allclose(ce_eval, ref, atol=1e-6) and int(correct_eval) == right


def test_dropout_draws_a_fresh_scaled_mask_in_training_only():
    from reviewgan.autoencoder import dropout
    torch.manual_seed(0)
    x = torch.ones(200, 500, requires_grad=True)
    y = dropout(x, 0.3, True)
    kept = y != 0
    assert abs(kept.float().mean() - 0.7) < 0.01 and torch.allclose(y[kept], torch.tensor(1 / 0.7))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient passes where the mask kept, scaled alike
    assert not torch.equal(kept, dropout(x, 0.3, True) != 0)  # a new mask every call
    assert dropout(x, 0.3, False) is x and dropout(x, 0.0, True) is x


def test_autoencoder_loss_equals_the_straightforward_loss():
    # The optimised loss (runs between lengths, ignore_index, blockwise softmax with the bias and the
    # count of right tokens inside) against the obvious one the benchmark's baseline uses, and against
    # evaluation's path (no gradient): same loss, gradients and count of right tokens.
    torch.manual_seed(0)
    cfg = AEConfig(emb_dim=8, enc_hidden=8, code_dim=16, dropout=0.0, code_to_input=True,
                   label_to_decoder=True, enc_bidirectional=True)
    ae = Autoencoder(30, cfg)
    with torch.no_grad():
        ae.decoder.out.bias[6] = 5  # token 6 predicted everywhere: right four times
    ids, lens = batch([[5, 6, 7, END], [8, 9, END], [6, 6, 6, END], [7, END]])
    labels = torch.tensor([0, 1, 1, 0])
    ce, _, correct, n = ae.loss(ids, lens, labels)
    ce.backward()
    grads = _grads(ae)
    ae.zero_grad()
    ref, ref_correct, ref_n = straightforward_ae_loss(ae, ids, lens, labels)
    ref.backward()
    assert torch.allclose(ce, ref, atol=1e-6) and int(n) == int(ref_n) == 13
    assert int(correct) == int(ref_correct) == 4
    for a, b in zip(grads, _grads(ae), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    with torch.no_grad():
        ce_eval, _, correct_eval, _ = ae.loss(ids, lens, labels)
    assert torch.allclose(ce_eval, ref, atol=1e-6) and int(correct_eval) == 4


def _gan_pair(cfg, seed=0):
    torch.manual_seed(seed)
    gen, critic = Generator(cfg, 16, "l2"), Critic(cfg, 16)
    if critic.proj is not None:
        torch.nn.init.normal_(critic.proj.weight)  # a non-zero projection, so the labels matter
    return gen, critic


def _step_grads(steps, gen, critic, real, yr, fake, yf, eps, z, yz):
    for p in [*critic.parameters(), *gen.parameters()]:  # a gradient left over must not leak into the step
        p.grad = torch.full_like(p, float("nan")) if p.grad is None else p.grad.fill_(float("nan"))
    c_parts = steps.critic_step(real, yr, fake, yf, eps, scale=0.5)
    c_grads = [p.grad.clone() for p in critic.parameters()]
    g_parts = steps.generator_step(z, yz, scale=0.5)
    g_grads = [p.grad.clone() for p in gen.parameters()]
    # plain gradients: no autograd graph kept alive from one step to the next
    assert not any(p.grad.requires_grad for p in [*critic.parameters(), *gen.parameters()] if p.grad is not None)
    assert all(p.requires_grad for p in critic.parameters())  # the critic trains again after the generator's step
    return c_parts, c_grads, g_parts, g_grads, steps.fake(z, yz)


def _gan_inputs():
    torch.manual_seed(1)
    real = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    return (real, torch.tensor([0, 1, 1, 0, 1, 0]), torch.nn.functional.normalize(torch.randn(6, 16), dim=-1),
            torch.tensor([1, 0, 0, 0, 1, 1]), torch.rand(6, 1), torch.randn(6, 8), torch.tensor([1, 0, 1, 1, 0, 0]))


GAN_OPTIONS = [{"lipschitz": "gp"},
               {"lipschitz": "gp", "cls_loss": "mse", "cls_on_fake": True, "critic_conditioned": False,
                "condition": "fill"},
               {"lipschitz": "clip"}]


@pytest.mark.parametrize("opts", GAN_OPTIONS)
def test_hand_derived_gan_steps_match_autograd(opts):
    # gan_fast's gradients (what training runs) must be gan.py's autograd ones, the penalty's
    # gradient-of-a-gradient included, for every critic option, with the gradients scaled alike.
    from reviewgan.gan import ReferenceSteps
    from reviewgan.gan_fast import FastSteps
    cfg = GANConfig(noise_dim=8, width=8, n_blocks=3, cond_dim=4, **opts)
    results = []
    for Steps in (ReferenceSteps, FastSteps):
        gen, critic = _gan_pair(cfg)
        results.append(_step_grads(Steps(gen, critic, cfg), gen, critic, *_gan_inputs()))
    (ca, gca, ga, gga, fa), (cb, gcb, gb, ggb, fb) = results
    for k in ("c_loss", "wdist", "c_cls", "gp"):
        assert torch.allclose(ca[k], cb[k], atol=1e-5), k
    assert torch.allclose(ga["g_loss"], gb["g_loss"], atol=1e-5) and torch.allclose(fa, fb, atol=1e-6)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(gca, gcb, strict=True))
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(gga, ggb, strict=True))
    assert any(x.abs().sum() > 0 for x in gca) and any(x.abs().sum() > 0 for x in gga)
    assert (ca["gp"] > 0) == (opts["lipschitz"] == "gp")


def test_hand_derived_steps_only_without_dropout_and_follow_moved_weights():
    from reviewgan.gan_fast import FastSteps, supported
    assert supported(GANConfig(n_blocks=2)) and not supported(GANConfig(c_dropout=0.1))
    assert not supported(GANConfig(n_blocks=0))
    # The steps keep per-block views of the weights: after .double() moves them, the views follow.
    cfg = GANConfig(noise_dim=8, width=8, n_blocks=3, cond_dim=4)
    gen, critic = _gan_pair(cfg)
    steps = FastSteps(gen, critic, cfg)
    steps.critic_step(*_gan_inputs()[:5])
    gen.double(), critic.double()
    real, yr, fake, yf, eps, z, yz = (t.double() if t.is_floating_point() else t for t in _gan_inputs())
    c_parts = steps.critic_step(real, yr, fake, yf, eps)
    assert c_parts["c_loss"].dtype == torch.float64 and critic.net.w1.grad.dtype == torch.float64


def test_sampling_follows_the_distribution_and_skips_impossible_tokens():
    probs = torch.tensor([0.0, 0.2, 0.0, 0.8])
    logits = torch.log(probs).expand(4000, 4).clone()
    draws = sample_top_p(logits, 1.0, 1.0, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=4).float() / 4000
    assert counts[0] == 0 and counts[2] == 0 and abs(counts[3] - 0.8) < 0.03
