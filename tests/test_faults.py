"""Training survives faults: SIGKILL at any moment, unwritable output; loading refuses hostile folders."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from reviewgan import ReviewGAN
from reviewgan.checkpoint import ModelError
from reviewgan.train import TrainingError, train

from .conftest import tiny_config
from .test_train import QUIET, same_weights

LONG = ["gan.steps=150", "train.ckpt_every=10", "train.eval_every=1000"]


def gan_step(out) -> int:
    try:
        return json.loads((out / "train_state" / "state.json").read_text())["gan"]["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(corpus_csv, tmp_path):
    reference = tmp_path / "reference"
    train(tiny_config(corpus_csv, *LONG), reference, **QUIET)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "reviewgan.cli", "train", "--preset", "tiny", "--data", str(corpus_csv),
           "--out", str(out), "--quiet"] + [a for s in LONG for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while gan_step(out) < 30 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 30 <= gan_step(out) < 150
    ReviewGAN.from_pretrained(out)  # a killed run always leaves a loadable model
    train(tiny_config(corpus_csv, *LONG), out, resume=True, **QUIET)
    assert same_weights(reference, out)


def test_unwritable_output_is_a_clear_error(corpus_csv, tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"  # root ignores permissions: use a path under a regular file instead
        blocker.write_text("x")
        target = blocker / "run"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "run"
    with pytest.raises((TrainingError, OSError)):
        train(tiny_config(corpus_csv), target, **QUIET)


def test_hostile_model_directories(tiny_model_dir, tmp_path):
    import shutil
    d = tmp_path / "hostile"
    shutil.copytree(tiny_model_dir, d, ignore=shutil.ignore_patterns("train_state"))
    (d / "evil.py").write_text("raise SystemExit('code from the model folder ran')")
    (d / "weights.pt").write_bytes(b"\x80\x04not a pickle we would ever load")
    ReviewGAN.from_pretrained(d)  # extra files are ignored, never executed or unpickled
    meta = json.loads((d / "config.json").read_text())
    for bad in ({"format": "something-else"}, {"config": {"ae": {"code_dim": "lots"}}},
                {"config": {"gan": {"n_blocks": 10**9}}}, {"config": "not a dict"}):
        m = json.loads(json.dumps(meta))
        for k, v in bad.items():
            if isinstance(v, dict) and isinstance(m.get(k), dict):
                for sec, vals in v.items():
                    m[k][sec].update(vals)
            else:
                m[k] = v
        (d / "config.json").write_text(json.dumps(m))
        with pytest.raises(ModelError):
            ReviewGAN.from_pretrained(d)
    (d / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(ModelError):
        ReviewGAN.from_pretrained(d)


def test_diverging_gan_is_reported(corpus_csv, tmp_path):
    """A critic without a working Lipschitz constraint and a huge step size blows up: stop, say so."""
    cfg = tiny_config(corpus_csv, "gan.lipschitz=clip", "gan.clip_value=1e9", "gan.optimizer=rmsprop", "gan.lr=10",
                      "gan.steps=200", "train.log_every=1")
    with pytest.raises(TrainingError, match=r"diverged at GAN step \d+|became (nan|inf) at step \d+"):
        train(cfg, tmp_path / "diverge", **QUIET)
    ReviewGAN.from_pretrained(tmp_path / "diverge")  # the last good checkpoint is still there
