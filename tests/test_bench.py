import json

import pytest

from reviewgan.bench import peak_rss_mb
from reviewgan.cli import main
from reviewgan.config import load_preset

KEYS = ["ae_tokens_per_s", "ae_baseline_tokens_per_s", "ae_speedup", "padding_frac", "matmul_gflops", "mfu",
        "matmul_gflops_bf16", "matmul_gflops_fp32", "compute_dtype",
        "gan_iters_per_s", "gan_speedup", "gen_1000_s", "gen_speedup", "gen_flops_per_token", "gen_floor_s",
        "gen_over_floor", "train_peak_rss_mb", "gen_peak_rss_mb", "device"]


def test_bench_quick_reports_every_figure(capsys):
    assert main(["bench", "--quick", "--json", "--preset", "tiny"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(KEYS) <= set(r)
    assert all(r[k] > 0 for k in KEYS if k not in ("device", "padding_frac", "compute_dtype"))
    # the ceiling is the machine's best precision, whichever the run computes in
    assert r["matmul_gflops"] == max(r["matmul_gflops_bf16"], r["matmul_gflops_fp32"])
    assert r["compute_dtype"] in ("bf16", "fp32")
    # the floor: 1,000 reviews of the measured length, one decode each, at the best ceiling
    floor = 1000 * (r["gen_mean_tokens"] + 1) * r["gen_flops_per_token"] / (r["matmul_gflops"] * 1e9)
    assert r["gen_floor_s"] == pytest.approx(floor, rel=1e-4)
    assert r["gen_over_floor"] == pytest.approx(r["gen_1000_s"] / r["gen_floor_s"], rel=1e-4)
    # bucketing: the optimised path computes far fewer padding positions than padding to max_len
    assert r["padding_frac"] < r["baseline_padding_frac"]
    assert r["train_peak_rss_mb"] > 50 and r["gen_peak_rss_mb"] > 50


def test_bench_runs_in_the_precision_asked_for(capsys):
    assert main(["bench", "--quick", "--json", "--preset", "tiny", "--dtype", "fp32"]) == 0
    assert json.loads(capsys.readouterr().out)["compute_dtype"] == "fp32"


def test_bench_measures_a_variant_of_the_recipe(capsys):
    # A batch larger than the memory measurement's units once covered: its process died, unseen.
    assert main(["bench", "--quick", "--json", "--preset", "tiny", "--set", "ae.batch_size=160"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["overrides"] == ["ae.batch_size=160"] and r["ae_tokens_per_s"] > 0 and r["train_peak_rss_mb"] > 50
    assert main(["bench", "--quick", "--preset", "tiny", "--set", "ae.no_such_field=1"]) != 0  # a typo is an error


def test_a_failed_memory_measurement_raises_instead_of_waiting():
    with pytest.raises(RuntimeError, match="exit code"):
        peak_rss_mb("neither", load_preset("tiny"))


def test_smollm2_decodes_at_0_269_gflop_per_token():
    # 134.5 M weights in matmuls (the tied output layer included), 2 FLOPs each per token.
    from types import SimpleNamespace

    from reviewgan.bench import gen_flops_per_token
    from reviewgan.config import apply_overrides
    from reviewgan.llama import LlamaShape
    cfg = apply_overrides(load_preset("pretrained"), [])
    model = SimpleNamespace(is_lm=False, cfg=cfg, autoencoder=SimpleNamespace(lm=SimpleNamespace(shape=LlamaShape())))
    assert gen_flops_per_token(model) == 2 * 134_479_872
