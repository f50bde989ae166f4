"""The model directory: one self-describing folder that everything reads and `train` writes.

    config.json               format, version, the full Config, vocabulary size, which stages are trained
    tokenizer.json            the HF `tokenizers` file
    autoencoder.safetensors   encoder + decoder
    generator.safetensors     (after the GAN stage)
    critic.safetensors        (after the GAN stage)
    train_state/              optimiser states, RNG states and loop counters: only needed to resume

No pickle anywhere: weights are safetensors, everything else is JSON. Loading runs no code from the
folder and checks every tensor's name and shape against the model the config describes.

Writes are crash-safe: a checkpoint is first written completely into `.pending/`, then a COMMIT
marker is written, then the files are moved into place. A kill before COMMIT leaves the old
checkpoint untouched; a kill after it is rolled forward by `recover()`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import __version__, dist
from .config import Config, ConfigError, apply_overrides

FORMAT = "reviewgan-model"
FORMAT_VERSION = 1
MAX_JSON_BYTES = 10_000_000


# Every file a run directory may hold: what `--force` replaces, and nothing else.
MODEL_FILES = ("config.json", "tokenizer.json", "autoencoder.safetensors", "decoder.safetensors", "lm.safetensors",
               "generator.safetensors", "critic.safetensors", "metrics.jsonl", "train_state", ".pending")


class ModelError(ValueError):
    """A user-facing model-directory problem: missing, corrupt, or incompatible."""


def stage1_file(cfg) -> str:
    """The stage-1 weights' file name: the LSTM autoencoder, the pretrained decoder's trained parts
    (its LoRA and code memory), or the LM baseline."""
    if cfg.model == "lm":
        return "lm.safetensors"
    return "decoder.safetensors" if cfg.ae.family == "pretrained" else "autoencoder.safetensors"


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Drop torch.compile's "_orig_mod." prefix so weights load into a plain module anywhere.
    return {k.replace("_orig_mod.", ""): v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


READER_FILE = "reader.safetensors"  # stage 2's sentiment reader of codes (gan.Reader), fit when the stage ends


class CheckpointWriter:
    """Collect files for one checkpoint, then `commit()` them into `root` atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.pending = self.root / ".pending"
        if self.pending.exists():
            shutil.rmtree(self.pending)
        self.pending.mkdir(parents=True)
        self.names: list[str] = []

    def _target(self, name: str) -> Path:
        p = self.pending / name
        p.parent.mkdir(parents=True, exist_ok=True)
        self.names.append(name)
        return p

    def tensors(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(self._target(name)),
                  metadata={k: str(v) for k, v in (metadata or {}).items()})

    def json(self, name: str, obj) -> None:
        _fsync_write(self._target(name), json.dumps(obj, indent=2).encode())

    def text(self, name: str, text: str) -> None:
        _fsync_write(self._target(name), text.encode())

    def commit(self) -> None:
        _fsync_write(self.pending / "COMMIT", "\n".join(self.names).encode())
        recover(self.root)


def recover(root: Path) -> None:
    """Finish a checkpoint whose COMMIT marker was written, or discard one that never got there."""
    pending = Path(root) / ".pending"
    if not pending.exists():
        return
    marker = pending / "COMMIT"
    if marker.exists():
        for name in marker.read_text().split("\n"):
            src = pending / name
            if name and src.exists():
                dst = Path(root) / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)  # atomic per file on POSIX
    shutil.rmtree(pending, ignore_errors=True)


def is_model_dir(path: Path) -> bool:
    """Whether `path` holds a reviewgan model or run: its config.json (or, for a run killed during
    its first checkpoint, the one in .pending/) says so."""
    for config in (Path(path) / "config.json", Path(path) / ".pending" / "config.json"):
        try:
            if read_json(config).get("format") == FORMAT:
                return True
        except (ModelError, OSError):
            continue
    return False


def claim_folder(path: Path, replace: bool, what: str = "--out") -> bool:
    """Make `path` ready for a command that writes a model folder. -> whether it already holds a
    reviewgan run or model (to be continued by the caller).

    A new or empty folder is used as it is. A reviewgan model folder is kept, or with `replace` its
    reviewgan files (MODEL_FILES, nothing else) are removed. A folder holding anything else is
    refused, `replace` or not: nothing that reviewgan did not write is ever deleted or overwritten.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ModelError(f"{what} {path} exists and is not a folder")
    if not path.exists() or not any(path.iterdir()):
        path.mkdir(parents=True, exist_ok=True)
        return False
    if not is_model_dir(path):
        names = sorted(p.name for p in path.iterdir())[:3]
        raise ModelError(f"{what} {path} holds files that are not a reviewgan model ({', '.join(names)}...): "
                         "use a new or empty folder")
    if replace:
        for name in MODEL_FILES:
            p = path / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        return False
    return True


def read_json(path: Path) -> dict:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ModelError(f"{path}: file too large to be a reviewgan config")
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path.parent}: not a reviewgan model directory (no {path.name})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"{path}: not valid JSON") from None
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return obj


def read_model_config(model_dir: Path) -> dict:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"model directory {str(model_dir)!r} does not exist")
    meta = read_json(model_dir / "config.json")
    if meta.get("format") != FORMAT:
        raise ModelError(f"{model_dir}: config.json is not a reviewgan model config")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{model_dir}: model format version {meta.get('format_version')!r} is not supported "
                         f"by this reviewgan (expects {FORMAT_VERSION}); retrain or use a matching version")
    cfg = meta.get("config")
    if isinstance(cfg, dict) and isinstance(cfg.get("data"), dict) and "spaced_sentences" not in cfg["data"] \
            and (cfg.get("ae") or {}).get("family") == "pretrained":
        # A config written before data.spaced_sentences existed: that decoder learnt units whose
        # sentences were encoded without the space between them, so it is decoded as such.
        meta = {**meta, "config": {**cfg, "data": {**cfg["data"], "spaced_sentences": False}}}
    return meta


def _check(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The tensors (converted from an older layout if need be) must be exactly the module's: names,
    shapes, floats where it has floats. -> the converted tensors."""
    if hasattr(module, "upgrade_state_dict"):  # an older layout of the same weights, converted in code
        tensors = module.upgrade_state_dict(tensors)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ModelError(f"{path}: tensors do not match the model in config.json "
                         f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in expected.items():
        if tensors[k].shape != v.shape:
            raise ModelError(f"{path}: {k} has shape {tuple(tensors[k].shape)}, config.json implies {tuple(v.shape)}")
        if not tensors[k].is_floating_point() and v.is_floating_point():
            raise ModelError(f"{path}: {k} has dtype {tensors[k].dtype}, expected a float")
    return tensors


def _read_safetensors(path: Path, read):
    """read(str path) on a weights file, with a missing or unreadable file as one ModelError line."""
    if not path.exists():
        raise ModelError(f"{path.parent}: missing {path.name}")
    try:
        return read(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"{path}: corrupt or truncated safetensors file ({str(e).splitlines()[0][:120]})") from None


def _header(path: str) -> dict[str, tuple[list[int], str]]:
    """name -> (shape, dtype name) of every tensor in a safetensors file, from its header alone."""
    with safe_open(path, framework="pt") as f:
        return {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()}


def check_header(module: torch.nn.Module, path: Path) -> None:
    """Check a weights file against a module from its header alone (no tensor is read): done with the
    module built on the meta device, before a config that promises a huge model allocates anything."""
    float_kinds = ("F16", "BF16", "F32", "F64")
    _check(module, {k: torch.empty(shape, device="meta", dtype=torch.float32 if kind in float_kinds else torch.int64)
                    for k, (shape, kind) in _read_safetensors(path, _header).items()}, path)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (on the CPU), a missing or unreadable file as one ModelError line."""
    return _read_safetensors(path, lambda p: load_file(p, device="cpu"))


def refuse_nonfinite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A diverged run's weights load fine and write garbage: refuse them here."""
    for k, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelError(f"{path}: tensor {k} holds NaN or infinite values")


def load_weights(module: torch.nn.Module, path: Path, device="cpu") -> dict:
    """Load safetensors into `module`, insisting on exactly the expected names, shapes and dtypes' kinds."""
    tensors = _check(module, read_weights(path), path)
    refuse_nonfinite(tensors, path)
    expected = module.state_dict()
    module.load_state_dict({k: tensors[k].to(v.dtype) for k, v in expected.items()})
    module.to(device)
    with safe_open(str(path), framework="pt") as f:  # metadata: not needed to load, useful for checks
        return f.metadata() or {}


# --------------------------------------------------------------------------- the run directory while training


class Run:
    """A run directory: the model files, train_state/, metrics.jsonl; resumable and crash-safe."""

    def __init__(self, out: Path, cfg: Config, device: torch.device, log=print):
        self.out, self.cfg, self.device, self.log = Path(out), cfg, device, log
        self.state: dict = {"ae": {"epoch": 0, "batch": 0, "step": 0, "done": False},
                            "gan": {"step": 0, "done": False}, "ckpt": 0}

    def metric(self, record: dict) -> None:
        if not dist.is_main():
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def save(self, tokenizer, ae, gen=None, critic=None, optims: dict | None = None, rng: dict | None = None,
             metrics: dict | None = None) -> None:
        """Write one checkpoint atomically: weights, config, tokenizer and the training state."""
        self.state["ckpt"] += 1
        if not dist.is_main():  # one writer; the others wait until the checkpoint is complete
            dist.barrier()
            return
        w = CheckpointWriter(self.out)
        stages = [self.cfg.model if self.cfg.model == "lm" else "ae"] + (["gan"] if gen is not None else [])
        tag = {"ckpt": self.state["ckpt"], "reviewgan": __version__}
        w.tensors(stage1_file(self.cfg), state_tensors(ae), tag)
        if gen is not None:
            w.tensors("generator.safetensors", state_tensors(gen), tag)
            w.tensors("critic.safetensors", state_tensors(critic), tag)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "reviewgan": __version__, "stages": stages,
                "vocab_size": tokenizer.vocab_size, "config": self.cfg.to_dict(), "metrics": metrics or {}}
        base = getattr(ae, "base_info", None)
        if base is not None:  # the pretrained family: the base model (and its tokenizer) named, not copied
            meta["base"] = base
        else:
            w.text("tokenizer.json", tokenizer.to_str())
        w.json("config.json", meta)
        for name, opt in (optims or {}).items():
            tensors, meta = optimizer_tensors(opt)
            w.tensors(f"train_state/{name}.safetensors", tensors)
            self.state[f"{name}_meta"] = meta
        w.tensors("train_state/rng.safetensors", rng or {"torch": torch.get_rng_state()})
        w.json("train_state/state.json", self.state)
        w.commit()
        dist.barrier()

    def load_state(self) -> dict:
        recover(self.out)
        path = self.out / "train_state" / "state.json"
        if path.exists():
            self.state = read_json(path)
        return self.state

    def load_optimizer(self, name: str, opt) -> None:
        p = self.out / "train_state" / f"{name}.safetensors"
        if p.exists() and f"{name}_meta" in self.state:
            load_optimizer(opt, load_file(str(p)), self.state[f"{name}_meta"])
        elif f"{name}_meta" in self.state:  # e.g. a run copied between machines without its optimiser state
            self.log(f"warning: {p} is missing: {name} continues with fresh moment estimates")

    def save_reader(self, reader: torch.nn.Module) -> None:
        """Write stage 2's sentiment reader (gan.Reader) beside the generator, atomically."""
        if dist.is_main():
            w = CheckpointWriter(self.out)
            w.tensors(READER_FILE, state_tensors(reader), {"reviewgan": __version__})
            w.commit()
        dist.barrier()

    def rng(self) -> dict:
        p = self.out / "train_state" / "rng.safetensors"
        return load_file(str(p)) if p.exists() else {}


def export_model(src: Path, dst: Path, half: bool = True, keep_critic: bool = False,
                 sample: list[str] | None = None, replace: bool = False) -> list[Path]:
    """A release copy of a model directory: config, tokenizer and weights (fp16 by default), no training
    state. `sample` overrides the default decoding and rewriting (`sample.key=value`, `rewrite.key=value`):
    nothing that training produced."""
    src, dst = Path(src), Path(dst)
    meta = read_model_config(src)
    if src.resolve() == dst.resolve():
        raise ModelError(f"export --out {dst} is the model folder itself: choose another")
    if sample:
        if any(not s.startswith(("sample.", "rewrite.")) for s in sample):
            raise ConfigError("export only changes the decoding defaults: use --set sample.KEY=VALUE or "
                              "rewrite.KEY=VALUE")
        meta = {**meta, "config": apply_overrides(Config.from_dict(meta["config"]), sample).to_dict()}
    if claim_folder(dst, replace, "export --out"):
        raise ModelError(f"export --out {dst} already holds a reviewgan model: add --force to replace it")
    w = CheckpointWriter(dst)
    if "base" not in meta:  # the pretrained family's tokenizer is its base model's
        w.text("tokenizer.json", (src / "tokenizer.json").read_text())
    weights = [stage1_file(Config.from_dict(meta["config"]))]
    if "gan" in meta.get("stages", []):
        weights += ["generator.safetensors"] + (["critic.safetensors"] if keep_critic else [])
        weights += [READER_FILE] if (src / READER_FILE).exists() else []
    for name in weights:
        try:
            tensors = load_file(str(src / name))
        except (SafetensorError, OSError) as e:
            raise ModelError(f"{src / name}: cannot read ({e})") from None
        if half:
            tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        w.tensors(name, tensors, {"released_from": str(src.name), "dtype": "float16" if half else "float32"})
    w.json("config.json", {**meta, "released": True})
    w.commit()
    return [dst / n for n in ["config.json", *(["tokenizer.json"] if "base" not in meta else []), *weights]]


# --------------------------------------------------------------------------- optimiser state, no pickle


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state dict into flat tensors (safetensors) and JSON (hyperparameters, scalars)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
