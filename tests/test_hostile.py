"""Hostile but realistic use: folders that are not reviewgan's, readers beside a writer, contradictory
flags. Nothing reviewgan did not write is ever deleted or overwritten; every mistake is one line."""

import json
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reviewgan.checkpoint import ModelError
from reviewgan.cli import main
from reviewgan.model import load_spec

from .conftest import tiny_config

FOREIGN = ["config.json", "tokenizer.json", "metrics.jsonl", "autoencoder.safetensors", "train_state", ".pending",
           "notes.txt", "data.csv"]


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("reviewgan: error:") and len(err.splitlines()) == 1, err
    return err


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.sampled_from(FOREIGN), min_size=1, max_size=5, unique=True), force=st.booleans(),
       payload=st.sampled_from(['{"format": "something-else"}', "not json", '{"stages": ["ae"]}']))
def test_train_and_export_never_touch_a_folder_that_is_not_reviewgans(names, force, payload, tmp_path_factory,
                                                                     tiny_model_dir, capsys):
    folder = tmp_path_factory.mktemp("foreign")
    for name in names:
        if name in ("train_state", ".pending"):
            (folder / name).mkdir()
            (folder / name / "config.json").write_text(payload)
        else:
            (folder / name).write_text(payload)
    before = snapshot(folder)
    argv = ["train", "--preset", "tiny", "--out", str(folder), "--quiet"] + (["--force"] if force else [])
    assert main(argv) == 2
    assert "not a reviewgan model" in one_error_line(capsys)
    argv = ["export", "--model", str(tiny_model_dir), "--out", str(folder)] + (["--force"] if force else [])
    assert main(argv) == 2
    assert "not a reviewgan model" in one_error_line(capsys)
    assert snapshot(folder) == before


def test_force_replaces_a_run_and_only_its_files(corpus_csv, tmp_path, capsys):
    from reviewgan.train import train
    out = tmp_path / "run"
    train(tiny_config(corpus_csv, "gan.steps=2"), out, progress=False, log=lambda m: None)
    (out / "report").mkdir()
    (out / "report" / "notes.md").write_text("mine")
    assert main(["train", "--preset", "tiny", "--data", str(corpus_csv), "--out", str(out), "--quiet",
                 "--set", "gan.steps=3"]) == 2  # a different run: refused without --force
    assert "--force" in one_error_line(capsys)
    assert main(["train", "--preset", "tiny", "--data", str(corpus_csv), "--out", str(out), "--quiet",
                 "--set", "gan.steps=3", "--force"]) == 0
    assert (out / "report" / "notes.md").read_text() == "mine"  # not reviewgan's: kept
    assert json.loads((out / "config.json").read_text())["config"]["gan"]["steps"] == 3


def test_resume_with_force_is_refused_and_keeps_the_run(corpus_csv, tiny_model_dir, tmp_path, capsys):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(tiny_model_dir, out)
    before = snapshot(out)
    assert main(["train", "--preset", "tiny", "--data", str(corpus_csv), "--out", str(out), "--resume", "--force"]) == 2
    assert "give one of them" in one_error_line(capsys)
    assert snapshot(out) == before


def test_export_refuses_to_overwrite_a_model_unless_forced(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "release"
    assert main(["export", "--model", str(tiny_model_dir), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["export", "--model", str(tiny_model_dir), "--out", str(out)]) == 2
    assert "--force" in one_error_line(capsys)
    assert main(["export", "--model", str(tiny_model_dir), "--out", str(out), "--force"]) == 0
    capsys.readouterr()
    assert main(["export", "--model", str(out), "--out", str(out), "--force"]) == 2  # onto itself
    assert "itself" in one_error_line(capsys)


def test_reading_a_folder_never_changes_it(tiny_model_dir, tmp_path):
    # A checkpoint committed but not yet moved into place: a reader sees the folder as it is and
    # leaves the roll-forward to the writer.
    import shutil
    out = tmp_path / "run"
    shutil.copytree(tiny_model_dir, out)
    (out / ".pending").mkdir()
    (out / ".pending" / "config.json").write_text((out / "config.json").read_text())
    (out / ".pending" / "COMMIT").write_text("config.json")
    before = snapshot(out)
    load_spec(out)
    from reviewgan import ReviewGAN
    ReviewGAN.from_pretrained(out).generate("positive", n=1, seed=0)
    assert snapshot(out) == before


@pytest.mark.slow
def test_readers_beside_a_training_run_neither_kill_it_nor_crash(corpus_csv, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "reviewgan.cli", "train", "--preset", "tiny", "--data", str(corpus_csv), "--out",
           str(out), "--quiet", "--set", "ae.epochs=4", "--set", "gan.steps=150", "--set", "train.ckpt_every=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reads, refused = 0, 0
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        try:
            load_spec(out)
            reads += 1
        except ModelError:  # not written yet, or a file between two writes: a clear refusal, never a crash
            refused += 1
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert reads > 10
    assert not (out / ".pending").exists()


# --------------------------------------------------------------------------- every config value, checked at load

def test_every_numeric_field_is_bounded_and_finite():
    from reviewgan.config import RANGES, ConfigError, apply_overrides, load_preset
    cfg = load_preset("tiny")
    for section, key, lo, hi in RANGES:
        is_int = isinstance(getattr(getattr(cfg, section), key), int)
        for bad in ([lo - 1, hi + 1] if is_int else [lo - abs(lo) - 1e-3, hi * 2 + 1, "nan", "inf"]):
            with pytest.raises(ConfigError, match=f"{section}.{key}"):
                apply_overrides(cfg, [f"{section}.{key}={bad}"])


@pytest.mark.parametrize("override", ["gan.betas=[0.5]", "gan.betas=[0.5,1.5]", "train.threads=-3",
                                      "data.min_frequency=-1", "data.val_frac=0", "data.limit=-1",
                                      "sample.max_len=100000", "ae.lora_targets=qproj", "sample.temperature=1e-45",
                                      "data.val_frac=0.3", "ae.family=pretrained",
                                      "sample.screen_cos=0.5"])  # (tiny's screen is off: nothing to add it to)
def test_bad_config_values_are_one_line_before_any_work(override, corpus_csv, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--data", str(corpus_csv), "--out", str(out), "--quiet", "--set", override]
    if override == "data.val_frac=0.3":
        argv += ["--set", "data.test_frac=0.3"]
    t0 = time.perf_counter()
    assert main(argv) == 2
    one_error_line(capsys)
    assert time.perf_counter() - t0 < 5 and not out.exists()


# --------------------------------------------------------------------------- the Python API refuses what it cannot mean

@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from reviewgan import ReviewGAN
    return ReviewGAN.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("kwargs", [{"n": 2.7}, {"n": "3"}, {"n": True}, {"n": 0}, {"greedy": "no"}, {"greedy": 1},
                                    {"temperature": float("nan")}, {"temperature": float("inf")},
                                    {"temperature": 1e308}, {"temperature": 1e-45}, {"temperature": -1},
                                    {"top_p": float("nan")}, {"top_p": 0}, {"top_p": 1.5}, {"max_len": 10_000},
                                    {"max_len": 0}, {"max_len": 3.5}, {"seed": -1}, {"seed": "x"}])
def test_generate_refuses_values_it_cannot_mean(tiny, kwargs):
    with pytest.raises(ValueError):
        tiny.generate("positive", **kwargs)


def test_cli_refuses_non_finite_and_extreme_temperatures(tiny_model_dir, capsys):
    for t in ("nan", "inf", "1e308", "1e-45"):
        assert main(["generate", "--model", str(tiny_model_dir), "--temperature", t, "-n", "1"]) == 2
        assert "temperature" in one_error_line(capsys)


def test_encode_and_decode_take_what_a_user_passes_or_say_why_not(tiny):
    import numpy as np
    import torch
    one = tiny.encode("a great film.")
    assert one.shape == (1, tiny.cfg.ae.code_dim)  # one string is one text, not its characters
    with pytest.raises(ValueError, match="non-empty list"):
        tiny.encode([])
    with pytest.raises(ValueError, match="non-empty list"):
        tiny.encode([1, 2])
    code = one[0]
    for form in (code, code.numpy(), code.tolist(), code.double(), np.asarray(code, dtype=np.float64)[None]):
        assert len(tiny.decode(form, max_len=5)) == 1  # 1-D, numpy, list, float64: one code each
    for bad, why in ((torch.zeros(3), "shape"), (torch.zeros(2, 3), "shape"), (torch.zeros(0, one.size(1)), "shape"),
                     (torch.full_like(one, float("nan")), "finite"), ("codes", "numbers"), ([[1, "x"]], "numbers")):
        with pytest.raises(ValueError, match=why):
            tiny.decode(bad)
    for kwargs in ({"temperature": float("nan")}, {"top_p": 2.0}, {"max_len": 10_000}):
        with pytest.raises(ValueError):
            tiny.decode(one, greedy=False, **kwargs)


def test_unknown_device_is_a_clear_error(tiny_model_dir):
    from reviewgan import ReviewGAN
    from reviewgan.config import ConfigError
    for device in ("tpu", "mps:0", 3):
        with pytest.raises(ConfigError, match="device"):
            ReviewGAN.from_pretrained(tiny_model_dir, device=device)


# --------------------------------------------------------------------------- the server: one error shape, no tracebacks

def test_every_http_refusal_has_one_shape(tiny_model_dir):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from reviewgan import ReviewGAN
    from reviewgan.serve import create_app
    client = TestClient(create_app(ReviewGAN.from_pretrained(tiny_model_dir)))
    answers = [client.get("/nope"), client.get("/api/generate"), client.delete("/api/health"),
               client.post("/api/generate", content=b'{"sentiment": "positive",', headers={"content-type": "application/json"}),
               client.post("/api/generate", content=b"\xff\xfe", headers={"content-type": "application/json"}),
               client.post("/api/generate", json=[1, 2]), client.post("/api/generate", json={"sentiment": "meh"}),
               client.post("/api/generate", json={"sentiment": "positive", "temperature": 1e-45})]
    for a in answers:
        assert 400 <= a.status_code < 500 and set(a.json()) == {"error"}, (a.status_code, a.text)


def _raw_request(port: int, head: bytes, body: bytes, close_after: bool):
    import socket
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(head + body)
    if close_after:
        s.close()
        return b""
    data = s.recv(65536)
    s.close()
    return data


def test_stalled_and_abandoned_bodies_neither_hang_nor_log_tracebacks(tiny_model_dir, monkeypatch, caplog):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    import httpx

    import reviewgan.serve as S
    from reviewgan import ReviewGAN
    monkeypatch.setattr(S, "BODY_TIMEOUT", 0.5)
    with S.running_server(ReviewGAN.from_pretrained(tiny_model_dir)) as url:
        port = int(url.rsplit(":", 1)[1])
        head = b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        t0 = time.perf_counter()
        answer = _raw_request(port, head, b'{"sentiment":', close_after=False)  # 13 of 100 bytes, then silence
        assert b" 408 " in answer.split(b"\r\n")[0] and time.perf_counter() - t0 < 10
        for _ in range(3):
            _raw_request(port, head, b'{"sent', close_after=True)  # hangs up mid-body
        time.sleep(0.5)
        assert httpx.get(url + "/api/health").json()["status"] == "ok"
    assert "Traceback" not in caplog.text and "Exception in ASGI" not in caplog.text


def test_serve_refuses_bad_ports_in_one_line(tiny_model_dir, capsys):
    import socket
    for port in ("99999", "0", "-1"):
        assert main(["serve", "--model", str(tiny_model_dir), "--port", port]) == 2
        assert "port" in one_error_line(capsys)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", "--model", str(tiny_model_dir), "--port", str(busy.getsockname()[1])]) == 2
        assert "cannot listen" in one_error_line(capsys)


def test_a_config_promising_a_huge_model_is_refused_before_anything_is_allocated(tiny_model_dir, tmp_path):
    import resource
    import shutil

    from reviewgan import ReviewGAN
    out = tmp_path / "huge"
    shutil.copytree(tiny_model_dir, out)
    meta = json.loads((out / "config.json").read_text())
    # Within every bound, yet ~40 G parameters: an output layer of 8192 x 200,000 and 1,000 blocks of 8192^2.
    meta["config"]["ae"].update(code_dim=8192, emb_dim=8192, enc_hidden=8192)
    meta["config"]["data"]["vocab_size"] = 200_000
    meta["config"]["gan"].update(width=8192, n_blocks=1000)
    (out / "config.json").write_text(json.dumps(meta))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match="shape|do not match"):
        ReviewGAN.from_pretrained(out)
    assert time.perf_counter() - t0 < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB: no GBs were touched


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_weights_that_are_not_finite_are_refused_at_load_naming_file_and_tensor(tiny_model_dir, tmp_path, capsys,
                                                                               bad):
    import shutil

    from safetensors.torch import load_file, save_file

    from reviewgan import ReviewGAN
    files = sorted(p.name for p in tiny_model_dir.glob("*.safetensors"))
    assert len(files) >= 2  # every stage's file is checked, not only the first
    for name in files:
        out = tmp_path / f"{name}-{bad}"
        shutil.copytree(tiny_model_dir, out, ignore=shutil.ignore_patterns("train_state"))
        tensors = load_file(str(out / name))
        key = sorted(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)[-1]
        tensors[key].view(-1)[1] = bad  # one value of one tensor
        save_file(tensors, str(out / name))
        with pytest.raises(ModelError, match=f"{name}: tensor {key} holds NaN or infinite values"):
            ReviewGAN.from_pretrained(out)
        assert main(["generate", "--model", str(out), "-n", "1"]) == 2
        assert name in one_error_line(capsys)


def test_a_request_draws_the_same_random_numbers_alone_or_batched(tiny):
    # The part of batch independence that holds bit for bit: what each request's reviews depend on.
    seen = []
    original = tiny.autoencoder.generate

    def spy(codes, max_len, **kw):
        seen.append((codes.clone(), kw["uniforms"].clone()))
        return original(codes, max_len, **kw)

    tiny.autoencoder.generate = spy
    try:
        mk = lambda s, n, seed, **kw: tiny.request(s, n=n, seed=seed, **kw)  # noqa: E731
        tiny.generate_batch([mk("negative", 3, 7, temperature=0.9)])
        tiny.generate_batch([mk("positive", 2, 1), mk("negative", 3, 7, temperature=0.9), mk("positive", 4, 2, greedy=True)])
    finally:
        tiny.autoencoder.generate = original
    (codes_alone, u_alone), (codes_batch, u_batch) = seen
    assert torch_equal_rows(u_alone, u_batch[2:5]) and torch_equal_rows(codes_alone, codes_batch[2:5], atol=1e-6)


def torch_equal_rows(a, b, atol=0.0):
    import torch
    w = min(a.size(1), b.size(1))
    return bool(torch.allclose(a[:, :w], b[:, :w], atol=atol, rtol=0)) if atol else bool(torch.equal(a[:, :w], b[:, :w]))


def test_report_refuses_files_that_are_not_metrics(tmp_path, capsys):
    for content in ("[1, 2]", "not json", "\\xff", '"text"'):
        f = tmp_path / "m.json"
        f.write_text(content)
        assert main(["report", str(f)]) == 2
        one_error_line(capsys)
    f.write_text('{"self_bleu4": "high", "fed": null, "distinct2": 0.5}')  # odd values: shown as n/a, not a crash
    assert main(["report", f"x={f}"]) == 0
    assert "| x |" in capsys.readouterr().out


def test_noise_scale_sets_the_sd_of_the_generators_noise(tiny):
    seen = []
    forward = tiny.generator.forward
    tiny.generator.forward = lambda z, y: (seen.append(z), forward(z, y))[1]
    try:
        for scale in (1.0, 0.25):
            tiny.cfg.sample.noise_scale = scale
            tiny.generate("positive", n=200, seed=0)
    finally:
        tiny.cfg.sample.noise_scale = 1.0
        del tiny.generator.forward
    assert torch_std(seen[0]) == pytest.approx(1.0, abs=0.05)
    assert torch_std(seen[1]) == pytest.approx(0.25, abs=0.0125)
    assert (seen[1] * 4 - seen[0]).abs().max() < 1e-5  # the same draws, scaled


def torch_std(z) -> float:
    return float(z.std())


@pytest.mark.parametrize("flag, key, bad_values, values, differ", [
    ("--noise-scale", "noise_scale", ("nan", "0", "1e9"), ("1.0", "0.01"),
     lambda a, b: len(set(b)) < len(set(a))),  # nearly noise-free codes: nearly one review
    ("--push", "push", ("nan", "-1", "11"), ("0", "3"), lambda a, b: a != b),
    ("--screen", "screen", ("nan", "-0.1", "1"), ("0", "0.99"), lambda a, b: a != b),
])
def test_cli_generation_options_are_range_checked_and_used(tiny_model_dir, capsys, flag, key, bad_values, values,
                                                          differ):
    for bad in bad_values:
        assert main(["generate", "--model", str(tiny_model_dir), flag, bad, "-n", "1"]) == 2
        assert key in one_error_line(capsys)
    outs = []
    for v in values:
        assert main(["generate", "--model", str(tiny_model_dir), flag, v, "-n", "8", "--seed", "0", "--greedy"]) == 0
        outs.append(capsys.readouterr().out.splitlines())
    assert differ(*outs)
