"""`reviewgan evaluate` end to end on the tiny model, and the report/sweep plumbing."""

import json

import pytest

from reviewgan.cli import main

KEYS = ["sentiment_acc_positive", "sentiment_acc_negative", "judge_acc_real", "self_bleu4", "distinct1", "distinct2",
        "distinct3", "unique_frac", "test_bleu4", "fed", "fed_real_floor", "forward_ppl", "reverse_ppl", "end_frac",
        "rep4_frac", "copy_frac", "train_6gram_frac", "mean_tokens", "recon_token_acc", "recon_bleu4", "recon_cos", "recon_sentiment_kept"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REVIEWGAN_CACHE", str(tmp_path_factory.getbasetemp() / "evalcache"))


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_evaluate_json_has_every_metric(capsys, tiny_model_dir, tmp_path):
    r = run_json(capsys, "evaluate", "--model", str(tiny_model_dir), "--n", "60", "--json")
    assert set(KEYS) <= set(r) and r["n"] == 60
    for k in KEYS:
        assert r[k] is None or isinstance(r[k], (int, float)), k
    assert r["fed"] is None or r["fed"] >= 0
    if r["fed"] is None:
        assert "fed" in r["notes"]  # a metric that could not be computed says why
    assert 0 <= r["sentiment_acc_positive"] <= 1 and 0 <= r["self_bleu4"] <= 1 and r["forward_ppl"] > 1
    assert r["recon_token_acc"] is not None and -1 <= r["recon_cos"] <= 1 and r["recon_sentiment_kept"] >= 0
    # the same judge and LM are reused (cached) and the same seed gives the same figures
    again = run_json(capsys, "evaluate", "--model", str(tiny_model_dir), "--n", "60", "--json")
    assert {k: again[k] for k in KEYS} == {k: r[k] for k in KEYS}


def test_a_perfect_reconstruction_scores_one(capsys, tiny_model_dir, monkeypatch):
    # An autoencoder that gives every source back word for word: BLEU-4 1, the same code, the same
    # sentiment as the judge reads in the sources.
    from reviewgan.autoencoder import Autoencoder
    codes = Autoencoder.codes

    def remember(self, batch):
        self._sources = [ids[:n - 1].tolist() for ids, n in zip(batch[0], batch[1])]  # without [END]
        return codes(self, batch)

    generate = Autoencoder.generate

    def give_back(self, code, max_len, **kw):  # the reconstructions; generation as it is
        sources = self.__dict__.pop("_sources", None)
        return (sources, [True] * len(code)) if sources is not None else generate(self, code, max_len, **kw)

    monkeypatch.setattr(Autoencoder, "codes", remember)
    monkeypatch.setattr(Autoencoder, "generate", give_back)
    r = run_json(capsys, "evaluate", "--model", str(tiny_model_dir), "--n", "20", "--json")
    assert r["recon_bleu4"] > 0.99 and r["recon_cos"] > 0.999 and r["recon_sentiment_kept"] == pytest.approx(1.0)


def test_saved_reviews_measure_the_same_elsewhere(capsys, tiny_model_dir, tmp_path):
    # --save-samples on one machine, --samples on another that holds only config.json + tokenizer.json
    saved = tmp_path / "reviews.jsonl"
    a = run_json(capsys, "evaluate", "--model", str(tiny_model_dir), "--n", "40", "--json", "--save-samples", str(saved))
    assert len(saved.read_text().splitlines()) == 40
    spec = tmp_path / "spec"
    spec.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (spec / name).write_bytes((tiny_model_dir / name).read_bytes())
    b = run_json(capsys, "evaluate", "--model", str(spec), "--samples", str(saved), "--json")
    text_keys = [k for k in KEYS if not k.startswith("recon_")]
    assert {k: b[k] for k in text_keys} == {k: a[k] for k in text_keys}
    assert b["recon_token_acc"] is None and "weights" in b["notes"]["recon_token_acc"]
    saved.write_text('{"sentiment": "neutral", "text": "x"}\n')
    assert main(["evaluate", "--model", str(spec), "--samples", str(saved)]) == 2


def test_real_reviews_row_is_the_target(capsys, tiny_model_dir):
    r = run_json(capsys, "evaluate", "--model", str(tiny_model_dir), "--n", "40", "--json", "--real")
    # the synthetic corpus is trivially separable: the judge reads real reviews right, and they all end
    assert r["sentiment_acc_positive"] == 1.0 and r["sentiment_acc_negative"] == 1.0
    assert r["end_frac"] == 1.0 and r["unique_frac"] == 1.0 and r["recon_token_acc"] is None


def test_real_reviews_can_be_saved_and_measured_again(capsys, tiny_model_dir, tmp_path):
    saved = tmp_path / "real.jsonl"
    r = run_json(capsys, "evaluate", "--model", str(tiny_model_dir), "--n", "40", "--json", "--real",
                 "--save-samples", str(saved))
    records = [json.loads(line) for line in saved.read_text().splitlines()]
    assert len(records) == r["n"] and 2 <= r["n"] <= 40 and {x["sentiment"] for x in records} == {"positive", "negative"}
    assert all(x["ended"] and x["text"] for x in records)
    again = run_json(capsys, "evaluate", "--model", str(tiny_model_dir), "--samples", str(saved), "--json")
    same = ["sentiment_acc_positive", "sentiment_acc_negative", "self_bleu4", "distinct2", "unique_frac", "end_frac"]
    assert {k: again[k] for k in same} == {k: r[k] for k in same}


def test_report_and_comparison_table(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "report"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--n", "40", "--out", str(out)]) == 0
    capsys.readouterr()
    text = (out / "report.md").read_text()
    assert "Self-BLEU-4" in text and "real reviews" in text and "## Samples" in text
    for png in ("lengths.png", "codes.png", "training_curves.png"):
        assert (out / png).stat().st_size > 1000, png
    assert main(["report", f"tiny={out / 'metrics.json'}", f"tiny={out / 'metrics.json'}"]) == 0
    table = capsys.readouterr().out
    assert "| tiny |" in table and "± 0.000" in table and table.strip().endswith("| 2 |")


def test_sweep_draws_quality_diversity(capsys, tiny_model_dir, tmp_path):
    assert main(["evaluate", "--model", str(tiny_model_dir), "--n", "20", "--sweep", "--out", str(tmp_path)]) == 0
    curves = json.loads((tmp_path / "sweep.json").read_text())
    (points,) = curves.values()
    assert [p["temperature"] for p in points] == [0.5, 0.7, 0.9, 1.0, 1.2]
    assert (tmp_path / "quality_diversity.png").stat().st_size > 1000
