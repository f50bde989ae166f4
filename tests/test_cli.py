"""The command line: happy paths, and every bad input a user can cause gets one clear line and exit 2."""

import json
import shutil

import pytest


from reviewgan.cli import main

from .conftest import write_csv


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_text_and_jsonl(capsys, tiny_model_dir):
    code, out, _ = run(capsys, "generate", "--model", str(tiny_model_dir), "--sentiment", "both", "-n", "3",
                       "--seed", "1", "--format", "jsonl")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["sentiment"] for r in rows] == ["positive"] * 3 + ["negative"] * 3
    assert all(set(r) == {"sentiment", "text", "tokens", "ended"} for r in rows)
    code, again, _ = run(capsys, "generate", "--model", str(tiny_model_dir), "--sentiment", "both", "-n", "3",
                         "--seed", "1", "--format", "jsonl")
    assert again == out  # same seed, same output
    code, text, _ = run(capsys, "generate", "--model", str(tiny_model_dir), "-n", "2", "--temperature", "0.7",
                        "--top-p", "0.9", "--seed", "0", "--max-len", "10")
    assert code == 0 and len(text.splitlines()) == 2 and "##" not in text
    # `--n`, as evaluate and the load test spell it, is -n here too, not a prefix of --noise-scale
    code, long_form, _ = run(capsys, "generate", "--model", str(tiny_model_dir), "--sentiment", "both", "--n", "3",
                             "--seed", "1", "--format", "jsonl")
    assert code == 0 and long_form == out


def test_stats(capsys, corpus_csv, tmp_path):
    code, out, _ = run(capsys, "stats", "--preset", "tiny", "--data", str(corpus_csv), "--out", str(tmp_path))
    assert code == 0 and "mean=" in out and "variance=" in out and "median=" in out
    assert (tmp_path / "lengths.png").stat().st_size > 1000


def bad(capsys, *argv, match):
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reviewgan: error:"), err
    assert match in lines[0], lines[0]


def test_bad_generate_inputs(capsys, tiny_model_dir, tmp_path):
    m = str(tiny_model_dir)
    bad(capsys, "generate", "--model", m, "--sentiment", "neutral", match="unknown sentiment")
    bad(capsys, "generate", "--model", m, "-n", "0", match="between 1 and")
    bad(capsys, "generate", "--model", m, "-n", "10000000", match="between 1 and")
    bad(capsys, "generate", "--model", m, "--temperature", "0", match="temperature")
    bad(capsys, "generate", "--model", str(tmp_path / "nope"), match="does not exist")
    bad(capsys, "generate", "--model", str(tmp_path), match="not a reviewgan model directory")


def copy_model(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("train_state"))
    return dst


def test_corrupt_and_incompatible_models(capsys, tiny_model_dir, tmp_path):
    trunc = copy_model(tiny_model_dir, tmp_path / "trunc")
    data = (trunc / "generator.safetensors").read_bytes()
    (trunc / "generator.safetensors").write_bytes(data[: len(data) // 2])
    bad(capsys, "generate", "--model", str(trunc), match="corrupt or truncated")

    old = copy_model(tiny_model_dir, tmp_path / "old")
    meta = json.loads((old / "config.json").read_text())
    meta["format_version"] = 99
    (old / "config.json").write_text(json.dumps(meta))
    bad(capsys, "generate", "--model", str(old), match="format version 99")

    shapes = copy_model(tiny_model_dir, tmp_path / "shapes")  # config and weights disagree
    meta = json.loads((shapes / "config.json").read_text())
    meta["config"]["gan"]["width"] = 17
    (shapes / "config.json").write_text(json.dumps(meta))
    bad(capsys, "generate", "--model", str(shapes), match="shape")

    huge = copy_model(tiny_model_dir, tmp_path / "huge")  # absurd sizes are refused before allocating
    meta = json.loads((huge / "config.json").read_text())
    meta["config"]["ae"]["code_dim"] = 10**9
    (huge / "config.json").write_text(json.dumps(meta))
    bad(capsys, "generate", "--model", str(huge), match="invalid config")


def test_bad_train_inputs(capsys, corpus_csv, tiny_model_dir, tmp_path):
    bad(capsys, "train", "--preset", "nope", "--out", str(tmp_path / "x"), match="unknown preset")
    bad(capsys, "train", "--preset", "tiny", "--out", str(tmp_path / "x"), "--set", "ae.epochs=many", match="ae.epochs")
    bad(capsys, "train", "--preset", "tiny", "--out", str(tmp_path / "x"), "--set", "ae.nope=1", match="unknown config key")
    bad(capsys, "train", "--preset", "tiny", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x"),
        match="no such file")
    malformed = tmp_path / "bad.csv"
    malformed.write_text("text,label\nfine,1,extra,fields\n")
    bad(capsys, "train", "--preset", "tiny", "--data", str(malformed), "--out", str(tmp_path / "x"), match="malformed CSV")
    # An --out that already holds a different run is left untouched.
    before = {p.name: p.stat().st_mtime_ns for p in tiny_model_dir.iterdir()}
    bad(capsys, "train", "--preset", "tiny", "--data", str(corpus_csv), "--set", "ae.epochs=3",
        "--out", str(tiny_model_dir), match="different run")
    assert {p.name: p.stat().st_mtime_ns for p in tiny_model_dir.iterdir()} == before


def test_train_command_end_to_end(capsys, tmp_path):
    data = tmp_path / "small.csv"
    write_csv(data, [(f"the film number {i} was {'great' if i % 2 else 'awful'}.", i % 2) for i in range(120)])
    out = tmp_path / "run"
    code, stdout, _ = run(capsys, "train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--quiet",
                          "--set", "gan.steps=10")
    assert code == 0 and "[positive]" in stdout and "[negative]" in stdout
    code, _, _ = run(capsys, "train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--quiet",
                     "--set", "gan.steps=12", "--force")
    assert code == 0 and json.loads((out / "config.json").read_text())["config"]["gan"]["steps"] == 12


def test_export_fp16_release(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "release"
    code, stdout, _ = run(capsys, "export", "--model", str(tiny_model_dir), "--out", str(out))
    assert code == 0 and "exported" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["autoencoder.safetensors", "config.json", "generator.safetensors",
                                                     "reader.safetensors", "tokenizer.json"]
    from safetensors.torch import load_file

    from reviewgan import ReviewGAN
    import torch
    assert all(t.dtype == torch.float16 for t in load_file(str(out / "generator.safetensors")).values())
    full, half = ReviewGAN.from_pretrained(tiny_model_dir), ReviewGAN.from_pretrained(out)
    assert half.critic is None and half.reader is not None and len(half.generate("positive", n=3, seed=0)) == 3
    assert full.generate("positive", n=3, seed=0) == half.generate("positive", n=3, seed=0)  # fp16 rounding is harmless here
    code, _, _ = run(capsys, "export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "sampled"),
                     "--set", "sample.greedy=false", "--set", "sample.temperature=0.7")
    assert code == 0 and ReviewGAN.from_pretrained(tmp_path / "sampled").cfg.sample.temperature == 0.7
    bad(capsys, "export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x"), "--set", "ae.epochs=3",
        match="only changes the decoding")


def test_every_seed_is_its_own_stream(capsys, tiny_model_dir):
    # torch's CPU generator keeps a seed's low 32 bits: 0 and 2**32 would draw the same reviews.
    import torch

    from reviewgan.model import ReviewGAN, seeded_generator
    draws = {s: torch.rand(8, generator=seeded_generator(s)).tolist() for s in (0, 1, 2**32, 2**32 + 1, 2**63 - 1)}
    assert len({tuple(d) for d in draws.values()}) == len(draws)
    assert draws[2**32] == torch.rand(8, generator=seeded_generator(2**32)).tolist()  # a seed is repeatable
    assert draws[1] == torch.rand(8, generator=torch.Generator().manual_seed(1)).tolist()  # below 2**32: manual_seed
    model = ReviewGAN.from_pretrained(tiny_model_dir)
    kw = dict(n=6, temperature=1.5, greedy=False)
    texts = {s: model.generate("positive", seed=s, **kw) for s in (0, 2**32, 2**62 + 5)}
    assert texts[0] != texts[2**32] and texts[2**32] != texts[2**62 + 5]
    assert model.generate("positive", seed=2**32, **kw) == texts[2**32]
    args = ["generate", "--model", str(tiny_model_dir), "-n", "6", "--temperature", "1.5", "--seed"]
    _, low, _ = run(capsys, *args, "0")
    _, high, _ = run(capsys, *args, str(2**32))
    assert low.splitlines() == texts[0] and high.splitlines() == texts[2**32]
    bad(capsys, *args, str(2**63), match="between 0 and")
    bad(capsys, *args, "-1", match="between 0 and")
    # rewrite and interpolate take the same seeds
    src = "the movie was great and the cast was wonderful."
    rw = {s: model.rewrite(src, to="negative", seed=s, temperature=1.5)[0].text for s in (0, 2**32)}
    assert rw[0] != rw[2**32]
    assert model.rewrite(src, to="negative", seed=2**32, temperature=1.5)[0].text == rw[2**32]
    with pytest.raises(ValueError, match="between 0 and"):
        model.interpolate(src, "the film was dull.", steps=3, seed=2**63)
