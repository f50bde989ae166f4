"""The compute precision: chosen per machine from its capabilities, overridable, and a model's weights
and results independent of it."""

import pytest
import torch

from reviewgan import precision
from reviewgan.cli import main
from reviewgan.config import Config, ConfigError, apply_overrides

from .conftest import tiny_config

AMX = {"avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "amx_tile"}
ZEN4 = {"avx512f", "avx512bw", "avx512_bf16", "avx512_vnni"}
XEON_NO_BF16 = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}  # emulates bf16 at a fifth of fp32's speed


@pytest.mark.parametrize("flags, cap, native", [
    (AMX, None, True), (ZEN4, None, True), (XEON_NO_BF16, None, False), ({"avx2", "fma"}, None, False), (set(), None, False),
    (AMX, "AVX512_CORE", False), (ZEN4, "avx512_core", False), (AMX, "AVX512_CORE_BF16", True), (AMX, "AVX512_CORE_AMX", True),
    (XEON_NO_BF16, "AVX512_CORE_AMX", False),  # a cap cannot add what the CPU lacks
])
def test_native_bf16_from_the_cpus_flags_within_onednns_cap(flags, cap, native):
    assert precision.has_native_bf16(flags, cap) is native


@pytest.mark.parametrize("flags, expected", [(AMX, torch.bfloat16), (ZEN4, torch.bfloat16), (XEON_NO_BF16, torch.float32)])
def test_auto_picks_bf16_only_where_it_is_native(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    precision._auto.cache_clear()
    try:
        assert precision.compute_dtype("auto") == precision.compute_dtype(None) == expected
        assert precision.compute_dtype("bf16") == torch.bfloat16 and precision.compute_dtype("fp32") == torch.float32
        precision.prefer("fp32")  # what the CLI's --dtype does: every "auto" of the process follows it
        assert precision.compute_dtype("auto") == torch.float32 and precision.compute_dtype("bf16") == torch.bfloat16
    finally:
        precision.prefer("auto")
        precision._auto.cache_clear()
    with pytest.raises(ValueError, match="unknown dtype"):
        precision.compute_dtype("fp16")


def test_the_config_names_the_precision_and_reads_the_older_amp_key():
    assert Config().train.dtype == "auto"
    assert Config.from_dict({"train": {"amp": "none"}}).train.dtype == "fp32"
    assert Config.from_dict({"train": {"amp": "bf16"}}).train.dtype == "auto"
    with pytest.raises(ConfigError):
        apply_overrides(Config(), ["train.dtype=fp16"])


def test_a_model_trained_in_one_precision_resumes_and_generates_in_the_other(corpus_csv, tmp_path, capsys):
    from reviewgan import ReviewGAN
    from reviewgan.train import train
    out = tmp_path / "run"
    train(tiny_config(corpus_csv, "train.dtype=bf16"), out, stage="ae", progress=False, log=lambda m: None)
    assert main(["train", "--preset", "tiny", "--data", str(corpus_csv), "--out", str(out), "--resume",
                 "--dtype", "fp32", "--quiet"]) == 0
    capsys.readouterr()
    for dtype in ("bf16", "fp32"):
        assert len(ReviewGAN.from_pretrained(out, dtype=dtype).generate("positive", n=2, seed=0)) == 2
        assert main(["generate", "--model", str(out), "-n", "2", "--seed", "0", "--dtype", dtype]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 2
