"""Hyperparameters as dataclasses, presets as small TOML files, overrides as `section.key=value`.

The dataclass defaults are reviewgan's own recipe: `default.toml` sets nothing else, and every
other preset lists only what differs from them (`paper.toml`: the paper's values, with the section
of the paper each comes from). docs/RESULTS.md and docs/PAPER.md measure the choices.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path


class ConfigError(ValueError):
    """A user-facing configuration problem (bad preset, bad override, bad value)."""


@dataclass
class DataConfig:
    dataset: str = "imdb"  # imdb | rotten_tomatoes | path to aclImdb/, .csv or .jsonl
    unit: str = "chunk"  # chunk: all of a review in runs of whole sentences (9x the text of openings); review: opening whole sentences; sentence
    max_len: int = 40  # tokens per unit, [END] included ([START] is not counted)
    vocab_size: int = 8000
    min_frequency: int = 2  # WordPiece: ignore pieces seen fewer times than this
    val_frac: float = 0.05
    test_frac: float = 0.05
    limit: int = 0  # use at most this many training reviews (0 = all); for quick runs
    opinion_filter: float = 0.9  # keep training units a whole-review classifier gives >= this for their label (0 = off): 44 % of chunks
    lowercase: bool = True  # the LSTM family's WordPiece is uncased; a pretrained decoder's tokenizer keeps case
    spaced_sentences: bool = True  # a unit's later sentences are encoded with the space before them (units.make_units); false: "one.Two", as the bundled model was trained, whose text is re-spaced when decoded
    text_column: str = ""  # CSV/JSONL: name of the text column ("" = guess)
    label_column: str = ""  # CSV/JSONL: name of the label column ("" = guess)


@dataclass
class AEConfig:
    """Stage 1. family lstm: an LSTM encoder and decoder trained from scratch (the paper's design);
    family pretrained: a frozen sentence embedder as encoder and a pretrained LM (the base) as decoder."""
    family: str = "lstm"  # lstm | pretrained
    emb_dim: int = 100  # paper 5.1
    enc_hidden: int = 256  # the paper's 100 holds too little of a 40-token review
    enc_bidirectional: bool = True  # read the review both ways: the code then holds its start as well as its end
    code_dim: int = 600  # = decoder LSTM size, paper 5.1 (s.b.a.)
    dropout: float = 0.5  # decoder output dropout, paper 5.1 (s.b.a.)
    code_activation: str = "l2"  # l2: unit sphere (ARAE), a bounded, isotropic target for the generator | sigmoid (paper) | tanh | none
    variational: bool = False  # VAE: reparameterised code + KL term
    kl_weight: float = 1.0
    kl_anneal_steps: int = 2000  # KL weight ramps linearly from 0 over this many steps
    code_noise: float = 0.01  # std of Gaussian noise added to codes while training (ARAE); small: an l2 code is ~0.04 a dimension
    code_noise_decay: float = 0.5  # noise std is multiplied by this after every epoch
    code_to_input: bool = True  # also feed the code to the decoder at every step, so it cannot forget it and loop
    label_to_decoder: bool = True  # the decoder starts from a sentiment token instead of [START]
    # pretrained family only: the base LM and how the code enters it (pretrained.py)
    base: str = "smollm2-135m"  # a registered base (base.py) or a folder with a Llama model
    memory_slots: int = 1  # key/value memory slots per layer that the code becomes (Optimus: 1)
    code: str = "pooled"  # pooled: the embedder's sentence embedding, frozen | tuned: the same, the embedder tuned with the decoder (tuned.py) | tokens: one learnt slot per embedder token | latents: code_slots learnt queries read all tokens (slots.py)
    encoder_rank: int = 16  # code=tuned: LoRA rank on the embedder's linear layers
    encoder_lr: float = 1e-3  # code=tuned: the embedder's LoRA learning rate
    init: str = ""  # a model folder of the pretrained family whose decoder (code memory, LoRA) stage 1 starts from ("" = the base alone)
    code_slots: int = 48  # code=tokens: the embedder tokens kept, one memory slot each (a chunk has ~40 with [CLS] and [SEP]); code=latents: the latent slots
    slot_dim: int = 64  # code=tokens or latents: dims per slot; the code is code_slots x slot_dim (ae.code_dim must equal it)
    latent_layers: int = 2  # code=latents: cross-attention blocks through which the latents read the token states
    word_dropout: float = 0.0  # share of the decoder's input tokens (not its targets) replaced by padding while training
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj"  # the base's projections LoRA adapts
    lora_lr: float = 5e-4  # LoRA's learning rate (ae.lr is the code memory's)
    max_steps: int = 0  # stop stage 1 after this many steps (0 = all epochs): a time budget
    warmup_steps: int = 0  # learning rates ramp up linearly over this many steps
    epochs: int = 5  # paper 5.3; ~22 min on a 2-core CPU
    batch_size: int = 64
    lr: float = 1e-3  # Adam, paper 5.3 (s.b.a.)
    grad_clip: float = 5.0  # 0 = off


@dataclass
class GANConfig:
    arch: str = "mlp"  # mlp: residual MLPs (paper 5.2) | slots: transformers over a token-slot code's slots (gan_slots.py)
    noise_dim: int = 100
    width: int = 100  # residual block width, paper 5.2 (s.b.a.); the transformers' model width
    n_blocks: int = 40  # paper 5.2 (s.b.a.); the transformers' blocks
    heads: int = 4  # attention heads (arch slots only)
    g_width: int = 0  # arch slots: the generator's own width and blocks (0: width, n_blocks); its passes skip
    g_blocks: int = 0  # the penalty's double backward, so it can be larger than the critic at little cost
    g_dropout: float = 0.0  # dropout inside generator blocks (paper: some; rate unstated)
    c_dropout: float = 0.0  # dropout inside critic blocks
    condition: str = "embed"  # fill: a cond_dim vector filled with the 0/1 label (seed) | embed: learnt embedding
    cond_dim: int = 100
    critic_conditioned: bool = True  # the critic's realness score also judges the label, by projection (Miyato & Koyama 2018)
    lipschitz: str = "gp"  # clip: clamp every critic parameter (paper) | gp: gradient penalty (WGAN-GP)
    clip_value: float = 0.01
    gp_weight: float = 10.0
    cls_loss: str = "ce"  # mse: sigmoid + MSE (paper) | ce: binary cross-entropy
    cls_weight: float = 3.0  # at 1.0 the generator's positive reviews read positive 0.89 of the time, its negative 0.97
    cls_on_fake: bool = False  # critic's sentiment head also trained on generated codes
    optimizer: str = "adam"  # rmsprop (paper) | adam (LaTextGAN)
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)  # Adam only
    n_critic: int = 5  # critic steps per generator step
    steps: int = 3000  # generator steps: ~5 min on a 2-core CPU
    batch_size: int = 64


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | auto
    log_every: int = 50  # steps between progress-bar updates of the logged losses
    ckpt_every: int = 300  # steps between checkpoints (and at every epoch end for the AE)
    eval_every: int = 500  # GAN steps between validations; the AE validates every epoch
    n_samples: int = 2  # fixed-noise samples printed per sentiment at each validation
    threads: int = 0  # torch intra-op threads (0 = torch's default)
    # compute precision of both stages (autocast, the pretrained decoder's weights): auto = bf16 where the
    # matrix units have it natively (AMX, AVX512-BF16, a bf16 GPU), else fp32 (precision.py) | bf16 | fp32
    dtype: str = "auto"


@dataclass
class SampleConfig:
    """The model's default decoding (generate/evaluate use it unless told otherwise)."""
    greedy: bool = False  # greedy decoding of generator codes repeats itself (Self-BLEU-4 ~0.75); the paper decoded greedily
    temperature: float = 0.8  # sampling only; at 0.7 one of three seeds fell to distinct-2 0.543
    top_p: float = 1.0  # sampling only: nucleus size
    max_len: int = 60  # most tokens a review may take before it is cut off, past the training length to reach its own [END] (0 = data.max_len)
    noise_scale: float = 1.0  # sd of the generator's noise at generation; below 1 draws more typical codes (the truncation trick)
    push: float = 0.0  # generated codes move this far along the generator's sentiment direction toward their label (rewrite.push)
    screen: float = 0.0  # redraw a review whose own code (the decoded text re-encoded) the model's reader gives its sentiment with a probability below this (0 = off)
    # with screen: also redraw a review whose own code has cosine below this to the code it was decoded
    # from (it does not say what its code says; readers rate such reviews less coherent) (0 = off)
    screen_cos: float = 0.0
    screen_tries: int = 4  # draws per review at most when screening; the one that passes best is kept
    # the pretrained decoder's code memory (its values and input offset) times this when generating from
    # the generator's codes: below 1 it leans on what it learnt of reviews (1 = as trained; encode/decode,
    # reconstructions and rewrites read codes at full strength)
    code_strength: float = 1.0


@dataclass
class RewriteConfig:
    """The model's default rewriting into the other sentiment (`reviewgan rewrite`; rewrite.py)."""
    method: str = "mean"  # mean: add the generator's sentiment direction | invert: fit the generator's noise, swap its label
    strength: float = 0.4  # how far the code moves: 0 decodes the source's own code, more trades content for transfer
    copy: float = 4.0  # logit bonus of the source's word after the one just written: keeps its phrasing (rewrite.SourceCopy; 0: off)
    invert_steps: int = 200  # Adam steps fitting the noise (method invert)
    greedy: bool = True  # a blind reader found greedy rewrites more fluent and faithful than sampled ones at T=0.6
    temperature: float = 0.6  # sampling only (greedy=false, or a temperature asked for)
    # A source whose sentiment the model reads itself is one it cannot tell (noted; flip refuses it) when
    # the reader's p_positive is within unclear_band of 0.5, or the text has fewer than min_words words,
    # or its distinct words are under min_distinct of its words (rewrite.why_unclear)
    unclear_band: float = 0.15
    min_words: int = 3
    min_distinct: float = 0.5


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    ae: AEConfig = field(default_factory=AEConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    model: str = "gan"  # gan: autoencoder + conditional WGAN | lm: the conditional LSTM LM baseline
    preset: str = "default"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        if not isinstance(d, dict):
            raise ConfigError("a config must be a JSON/TOML table")
        cfg = cls()
        for section, values in d.items():
            if section in ("preset", "model"):
                setattr(cfg, section, str(values))
                continue
            if section not in SECTIONS:
                raise ConfigError(f"unknown config section {section!r}")
            if not isinstance(values, dict):
                raise ConfigError(f"config section {section!r} must be a table")
            for key, value in values.items():
                if (section, key) == ("train", "amp"):  # train.dtype's older name
                    if "dtype" in values:
                        continue
                    key, value = "dtype", _AMP_TO_DTYPE.get(value, value)
                if (section, key) not in RETIRED:
                    _set_field(getattr(cfg, section), section, key, value)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Every field against its allowed values (RANGES, CHOICES), then the rules between fields: a
        config that passes here does not fail later for its values."""
        for section, key, lo, hi in RANGES:
            v = getattr(getattr(self, section), key)
            if not (math.isfinite(v) and lo <= v <= hi):
                raise ConfigError(f"{section}.{key} must be in [{lo:g}, {hi:g}], got {v!r}")
        for section, key, options in CHOICES:
            v = getattr(self, section) if key is None else getattr(getattr(self, section), key)
            if v not in options:
                name = section if key is None else f"{section}.{key}"
                raise ConfigError(f"{name} must be one of {', '.join(options)}, got {v!r}")
        b = self.gan.betas
        if len(b) != 2 or not all(math.isfinite(x) and 0 <= x < 1 for x in b):
            raise ConfigError(f"gan.betas must be two numbers in [0, 1), got {list(b)}")
        targets = [t for t in self.ae.lora_targets.split(",") if t]
        if not targets or any(t not in LORA_TARGETS for t in targets):
            raise ConfigError(f"ae.lora_targets must list some of {', '.join(LORA_TARGETS)}, got {self.ae.lora_targets!r}")
        if self.data.val_frac + self.data.test_frac >= 0.5:
            raise ConfigError("data.val_frac + data.test_frac must be under 0.5")
        if self.sample.screen_cos > 0 and self.sample.screen == 0:
            raise ConfigError("sample.screen_cos is a second test of the screen's: set sample.screen too (0.6 reads "
                              "the sentiment as the bundled model does; 0.01 leaves it to the cosine)")
        if self.sample.code_strength != 1.0 and self.ae.family != "pretrained":
            raise ConfigError("sample.code_strength scales the pretrained decoder's code memory: ae.family=pretrained")
        if self.ae.init and self.ae.family != "pretrained":
            raise ConfigError("ae.init starts the pretrained family's decoder from another model's: ae.family=pretrained")
        if self.gan.arch == "slots":
            if not (self.ae.family == "pretrained" and self.ae.code in ("tokens", "latents")):
                raise ConfigError("gan.arch=slots: the slot transformers need a slot code (ae.code=tokens or latents)")
            if self.gan.width % self.gan.heads or self.gan.g_width % self.gan.heads:
                raise ConfigError(f"gan.width {self.gan.width} and gan.g_width {self.gan.g_width} must be "
                                  f"divisible by gan.heads {self.gan.heads}")
        if self.ae.family == "pretrained" and self.ae.code in ("tokens", "latents"):
            code = self.ae.code
            if self.ae.code_dim != self.ae.code_slots * self.ae.slot_dim or self.ae.code_activation != "none":
                raise ConfigError(f"ae.code={code}: the code is code_slots x slot_dim "
                                  f"(ae.code_dim={self.ae.code_slots * self.ae.slot_dim}, ae.code_activation=none)")
            if self.ae.variational or self.ae.label_to_decoder or self.model != "gan":
                raise ConfigError(f"ae.code={code}: no VAE, the decoder takes no sentiment (ae.label_to_decoder=false), model gan")
        elif self.ae.family == "pretrained" and self.model == "lm":
            pass  # the LM peer: conditioned on the sentiment, no code
        elif self.ae.family == "pretrained" and not (
                self.ae.code_dim == 384 and self.ae.code_activation == "l2" and not self.ae.variational
                and not self.ae.label_to_decoder and self.model == "gan"):
            raise ConfigError("ae.family=pretrained: the code is the embedder's (ae.code_dim=384, "
                              "ae.code_activation=l2, no VAE), the decoder takes no sentiment "
                              "(ae.label_to_decoder=false), model gan")


# Allowed range of every numeric field (inclusive). Floats must also be finite.
RANGES = [
    ("data", "max_len", 8, 1024), ("data", "vocab_size", 100, 200_000), ("data", "min_frequency", 1, 1_000_000),
    ("data", "val_frac", 0.001, 0.49), ("data", "test_frac", 0.001, 0.49), ("data", "limit", 0, 100_000_000),
    ("data", "opinion_filter", 0.0, 0.999),
    ("ae", "emb_dim", 1, 8192), ("ae", "enc_hidden", 1, 8192), ("ae", "code_dim", 1, 8192), ("ae", "dropout", 0.0, 0.99),
    ("ae", "kl_weight", 0.0, 1e6), ("ae", "kl_anneal_steps", 0, 1e9), ("ae", "code_noise", 0.0, 10.0),
    ("ae", "code_noise_decay", 0.0, 1.0), ("ae", "memory_slots", 1, 64),
    ("ae", "encoder_rank", 1, 384), ("ae", "encoder_lr", 0.0, 1.0),
    ("ae", "code_slots", 1, 256), ("ae", "slot_dim", 1, 1024), ("ae", "latent_layers", 1, 8), ("ae", "word_dropout", 0.0, 0.95), ("ae", "lora_rank", 1, 1024),
    ("ae", "lora_alpha", 1e-6, 1e6), ("ae", "lora_lr", 1e-9, 10.0), ("ae", "max_steps", 0, 1e12),
    ("ae", "warmup_steps", 0, 1e9), ("ae", "epochs", 0, 100_000), ("ae", "batch_size", 1, 1_000_000),
    ("ae", "lr", 1e-9, 10.0), ("ae", "grad_clip", 0.0, 1e6),
    ("gan", "noise_dim", 1, 8192), ("gan", "width", 1, 8192), ("gan", "n_blocks", 0, 1000), ("gan", "heads", 1, 64),
    ("gan", "g_width", 0, 8192), ("gan", "g_blocks", 0, 1000), ("gan", "g_dropout", 0.0, 0.99),
    ("gan", "c_dropout", 0.0, 0.99), ("gan", "cond_dim", 1, 8192), ("gan", "clip_value", 1e-9, 1e12),
    ("gan", "gp_weight", 0.0, 1e6), ("gan", "cls_weight", 0.0, 1e6), ("gan", "lr", 1e-9, 10.0),
    ("gan", "n_critic", 1, 1000), ("gan", "steps", 0, 1e12), ("gan", "batch_size", 1, 1_000_000),
    ("train", "seed", 0, 2**63 - 1), ("train", "log_every", 1, 1e12), ("train", "ckpt_every", 1, 1e12),
    ("train", "eval_every", 1, 1e12), ("train", "n_samples", 0, 100), ("train", "threads", 0, 4096),
    ("sample", "temperature", 0.01, 100.0), ("sample", "top_p", 1e-6, 1.0), ("sample", "max_len", 0, 4096), ("sample", "noise_scale", 0.01, 10.0),
    ("sample", "push", 0.0, 10.0), ("sample", "screen", 0.0, 0.99), ("sample", "screen_cos", 0.0, 0.99), ("sample", "screen_tries", 1, 20),
    ("sample", "code_strength", 0.0, 4.0),
    ("rewrite", "strength", 0.0, 10.0), ("rewrite", "copy", 0.0, 100.0),
    ("rewrite", "invert_steps", 1, 10_000),
    ("rewrite", "temperature", 0.01, 100.0), ("rewrite", "unclear_band", 0.0, 0.5), ("rewrite", "min_words", 0, 1000),
    ("rewrite", "min_distinct", 0.0, 1.0),
]
CHOICES = [
    ("model", None, ("gan", "lm")), ("data", "unit", ("review", "chunk", "sentence")),
    ("ae", "family", ("lstm", "pretrained")), ("ae", "code", ("pooled", "tuned", "tokens", "latents")), ("ae", "code_activation", ("sigmoid", "tanh", "l2", "none")),
    ("gan", "arch", ("mlp", "slots")), ("gan", "condition", ("fill", "embed")), ("gan", "lipschitz", ("clip", "gp")), ("gan", "cls_loss", ("mse", "ce")),
    ("gan", "optimizer", ("rmsprop", "adam")), ("train", "dtype", ("auto", "bf16", "fp32")),
    ("train", "device", ("cpu", "cuda", "auto")), ("rewrite", "method", ("mean", "invert")),
]
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# Keys older versions wrote into config.json that no longer exist and never changed results: skipped on load.
RETIRED = {("train", "compile")}
# train.amp (bf16 | none) became train.dtype: bf16 autocast was the only fast path, now auto picks it
# where it is fast; none was float32.
_AMP_TO_DTYPE = {"bf16": "auto", "none": "fp32"}

SECTIONS = {"data": DataConfig, "ae": AEConfig, "gan": GANConfig, "train": TrainConfig, "sample": SampleConfig,
            "rewrite": RewriteConfig}


def _coerce(value, typ: str, name: str):
    """Cast a TOML/JSON/CLI value to a dataclass field's declared type."""
    try:
        if typ == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if not isinstance(value, (bool, int)):
                raise ValueError(value)
            return bool(value)
        if typ == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if typ == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if typ == "str":
            return str(value)
        if typ.startswith("tuple"):
            if isinstance(value, str):
                value = json.loads(value)
            return tuple(float(v) for v in value)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise ConfigError(f"{name}: cannot use {value!r} as {typ}") from None
    raise ConfigError(f"{name}: unsupported type {typ}")


def _set_field(obj, section: str, key: str, value) -> None:
    types = {f.name: f.type for f in fields(obj)}
    if key not in types:
        raise ConfigError(f"unknown config key {section}.{key}")
    setattr(obj, key, _coerce(value, str(types[key]), f"{section}.{key}"))


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("reviewgan.presets").iterdir() if p.name.endswith(".toml"))


def load_preset(name: str, _depth: int = 0) -> Config:
    """A preset is a TOML file in reviewgan/presets/ (or a path to one) that lists what differs from the defaults."""
    path = Path(name)
    if path.suffix == ".toml" and path.is_file():
        text = path.read_text()
    else:
        res = resources.files("reviewgan.presets") / f"{name}.toml"
        if not res.is_file():
            raise ConfigError(f"unknown preset {name!r} (choose from {', '.join(preset_names())})")
        text = res.read_text()
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"preset {name!r} is not valid TOML: {e}") from None
    base = d.pop("base", None)  # a preset may start from another preset and list only what differs
    if base is not None:
        if _depth > 8:
            raise ConfigError(f"preset {name!r}: base presets nest too deeply")
        merged = load_preset(base, _depth + 1).to_dict()
        for section, values in d.items():
            if isinstance(values, dict):
                merged.setdefault(section, {}).update(values)
            else:
                merged[section] = values
        d = merged
    d["preset"] = path.stem if path.suffix == ".toml" else name
    return Config.from_dict(d)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `section.key=value` strings, e.g. `ae.epochs=2` or `gan.betas=[0.5,0.9]`."""
    cfg = Config.from_dict(cfg.to_dict())  # deep copy: never mutate the caller's config
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        lhs, value = item.split("=", 1)
        section, key = lhs.strip().split(".", 1)
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section {section!r} in {item!r}")
        _set_field(getattr(cfg, section), section, key, value.strip())
    cfg.validate()
    return cfg
