"""Data-parallel training: 2 CPU processes (gloo) reach the weights of 1 process on the same global batch."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from reviewgan.train import train

from .conftest import tiny_config

EXACT = ["ae.dropout=0", "ae.code_noise=0", "gan.g_dropout=0", "train.dtype=fp32", "ae.epochs=1", "gan.steps=6",
         "train.ckpt_every=3", "train.eval_every=1000", "train.n_samples=0"]


def _worker(rank: int, world: int, port: int, corpus: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    train(tiny_config(corpus, *EXACT), out, progress=False, log=lambda m: None)
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(corpus_csv, tmp_path):
    one = tmp_path / "one"
    train(tiny_config(corpus_csv, *EXACT), one, progress=False, log=lambda m: None)
    two = tmp_path / "two"
    mp.spawn(_worker, args=(2, free_port(), str(corpus_csv), str(two)), nprocs=2, join=True)
    for f in ("autoencoder.safetensors", "generator.safetensors", "critic.safetensors"):
        a, b = load_file(str(one / f)), load_file(str(two / f))
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-4), (f, k, (a[k] - b[k]).abs().max())
    assert not list(two.glob(".pending"))  # one writer, complete checkpoints
