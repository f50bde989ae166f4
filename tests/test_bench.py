import json

from reviewgan.cli import main

KEYS = ["ae_tokens_per_s", "ae_baseline_tokens_per_s", "ae_speedup", "padding_frac", "matmul_gflops", "mfu",
        "gan_iters_per_s", "gan_speedup", "gen_1000_s", "gen_speedup", "train_peak_rss_mb", "gen_peak_rss_mb", "device"]


def test_bench_quick_reports_every_figure(capsys):
    assert main(["bench", "--quick", "--json", "--preset", "tiny"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(KEYS) <= set(r)
    assert all(r[k] > 0 for k in KEYS if k != "device" and k != "padding_frac")
    # bucketing: the optimised path computes far fewer padding positions than padding to max_len
    assert r["padding_frac"] < r["baseline_padding_frac"]
    assert r["train_peak_rss_mb"] > 50 and r["gen_peak_rss_mb"] > 50
