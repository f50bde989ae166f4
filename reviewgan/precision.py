"""The compute precision of a device: bfloat16 where its matrix units have it natively, float32 elsewhere.

Every part that runs a model asks here (`compute_dtype`): the pretrained decoder's weights, LoRA and
KV cache, the sentence reader, autocast in both training stages, `bench` and the server. A model's
weights do not depend on it: they are stored in float16/float32 and cast on load.

Why it matters on a CPU: bf16 products run on AMX tiles or AVX512-BF16 dot products at about twice
float32's speed; without them oneDNN emulates bf16 by converting each operand to float32 first, at a
fifth of float32's speed (2-core Intel Xeon with AVX-512 but neither: 60 against 310 GFLOP/s).

The choice is read from the CPU's flags (`/proc/cpuinfo`: `amx_bf16`, `avx512_bf16`), within any cap
the user put on oneDNN's instruction set (`ONEDNN_MAX_CPU_ISA=AVX512_CORE` makes a CPU with native
bf16 emulate it, as one without does). `reviewgan bench` measures both ceilings, so the choice can be
checked against a measurement on any machine; `--dtype` (or `train.dtype`) overrides it.
"""

from __future__ import annotations

import functools
import os

import torch

CHOICES = ("auto", "bf16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}

# oneDNN instruction-set caps that leave out native bf16 (its names; a cap at or above
# AVX512_CORE_BF16 keeps it). Capping there makes oneDNN emulate bf16, as a CPU without it does.
_CAPS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def has_native_bf16(flags: set[str], isa_cap: str | None = None) -> bool:
    """Whether a CPU with these /proc/cpuinfo flags multiplies bf16 natively, under oneDNN's cap (if any)."""
    if isa_cap and isa_cap.strip().upper() in _CAPS_WITHOUT_BF16:
        return False
    return bool(flags & _NATIVE_BF16_FLAGS)


def cpu_flags() -> set[str]:
    """The first CPU's flags from /proc/cpuinfo (empty where there is none: then float32 is chosen)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def _auto(device_type: str) -> torch.dtype:
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return torch.bfloat16 if has_native_bf16(cpu_flags(), cap) else torch.float32


_preferred = "auto"  # what "auto" means in this process: the CLI's --dtype sets it (prefer)


def _checked(choice) -> str:
    choice = "auto" if choice is None else str(choice).lower()
    if choice not in CHOICES:
        raise ValueError(f"unknown dtype {choice!r} (use {', '.join(CHOICES)})")
    return choice


def prefer(choice: str) -> None:
    """Make every "auto" of this process mean `choice` (auto | bf16 | fp32): the CLI's --dtype, which
    then reaches each part (evaluation's several loads, the server) without being passed along."""
    global _preferred
    _preferred = _checked(choice)


def compute_dtype(choice: str | None = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """auto | bf16 | fp32 (None: auto) -> the dtype the models compute in on `device`."""
    choice = _checked(choice)
    if choice == "auto":
        choice = _preferred
    if choice != "auto":
        return DTYPES[choice]
    return _auto(torch.device(device).type)


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]
