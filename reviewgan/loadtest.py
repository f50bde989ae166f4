"""A bounded load test of `reviewgan serve` on loopback only.

    python -m reviewgan.loadtest --model DIR [--requests 500] [--concurrency 16] [--n 5] [--check-alone K]
    python -m reviewgan.loadtest --model DIR --fairness [--max-wait 60]

Starts the server in this process on 127.0.0.1 (a free port), sends a fixed number of seeded
`POST /api/generate` requests with a fixed concurrency, prints throughput, latency percentiles
and the error count, then the same reviews generated offline in one call and the first
`concurrency` requests as one offline batch, with the served rate and p95 over them (--no-offline
skips these). --check-alone K then decodes the first K requests again, each on
its own, and counts those whose reviews differ from what the batched server answered.
--fairness times a lone request for one review alone, and again after 20 clients asked for 50
reviews each and gave up after 2 s; then sends 120 such requests at once and counts the 503s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time

import httpx
import numpy as np
import torch

from .model import ReviewGAN
from .serve import MAX_WAIT, create_app, load_for_serving_threads, running_server


async def _load(url: str, requests: int, concurrency: int, n: int) -> tuple[list[float], int, dict]:
    latencies, errors, answers = [], 0, {}
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60) as client:
        async def one(i: int):
            nonlocal errors
            body = {"sentiment": ("positive", "negative")[i % 2], "n": n, "seed": i}
            async with sem:
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, json=body)
                    ok = r.status_code == 200 and len(r.json()["reviews"]) == n
                    answers[i] = [x["text"] for x in r.json()["reviews"]] if ok else None
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok
        await asyncio.gather(*(one(i) for i in range(requests)))
    return latencies, errors, answers


def run(model_dir, requests: int = 500, concurrency: int = 16, n: int = 5, check_alone: int = 0,
        offline: bool = True, join: bool = True, pack: bool | None = None) -> dict:
    """The load test's figures; with `offline`, beside them the same reviews generated without the
    server, in one call (offline_reviews_per_s; served_over_offline is the served rate over it) and
    the first `concurrency` requests as one batch (offline_batch_s; p95_over_offline_batch). `join`:
    requests join the batch decoding (serve.Batcher's join; False: each batch decodes to its end).
    `pack`: ReviewGAN.from_pretrained's (None: pre-packed weights where this PyTorch can hold them)."""
    threads = load_for_serving_threads()  # as `reviewgan serve` loads it
    try:
        model = ReviewGAN.from_pretrained(model_dir, pack=pack)
        app = create_app(model, threads)
        app.state.batcher.join = join
        with running_server(app) as url:
            t0 = time.perf_counter()
            lat, errors, answers = asyncio.run(_load(f"{url}/api/generate", requests, concurrency, n))
            wall = time.perf_counter() - t0
            health = httpx.get(f"{url}/api/health", timeout=10).json()
    finally:
        torch.set_num_threads(threads)
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    lm = getattr(model.autoencoder, "lm", None)
    out = {"requests": requests, "concurrency": concurrency, "reviews_per_request": n, "join": join,
           "packed": bool(lm is not None and lm.packed), "errors": errors,
           "requests_per_s": requests / wall, "p50_s": p50, "p95_s": p95, "p99_s": p99, "wall_s": wall,
           "requests_per_batch": health["requests"] / max(health["batches"], 1)}
    if offline:  # the same reviews without the server: all in one call, and one client-batch's worth
        def requests_(k: int) -> list:
            return [model.request(("positive", "negative")[i % 2], n, seed=i) for i in range(k)]
        t0 = time.perf_counter()
        model.generate_batch(requests_(requests))
        rate = requests * n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        model.generate_batch(requests_(min(concurrency, requests)))
        batch_s = time.perf_counter() - t0
        out.update(offline_reviews_per_s=rate, served_over_offline=requests * n / wall / rate,
                   offline_batch_s=batch_s, p95_over_offline_batch=p95 / batch_s)
    if check_alone:  # the same seeded requests, each decoded alone
        k = min(check_alone, requests)
        alone = [model.generate(("positive", "negative")[i % 2], n=n, seed=i) for i in range(k)]
        out["checked_alone"] = k
        out["differ_from_alone"] = sum(answers.get(i) != a for i, a in enumerate(alone))
    return out


async def _burst(url: str, requests: int, n: int) -> tuple[list[tuple[int, float, str | None]], dict]:
    """`requests` generate requests at once -> (status, seconds, Retry-After) of each, and the
    health the server reported once the refusals were back (1 s in)."""
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=None)) as client:
        async def one(i: int):
            t0 = time.perf_counter()
            r = await client.post(f"{url}/api/generate", json={"sentiment": "positive", "n": n, "seed": i})
            return r.status_code, time.perf_counter() - t0, r.headers.get("retry-after")

        async def health():
            await asyncio.sleep(1.0)
            return (await client.get(f"{url}/api/health")).json()
        *answers, seen = await asyncio.gather(*(one(i) for i in range(requests)), health())
    return answers, seen


def fairness(model_dir, max_wait: float = MAX_WAIT, clients: int = 20, give_up_s: float = 2.0, burst: int = 120,
             n: int = 50) -> dict:
    threads = load_for_serving_threads()
    try:
        model = ReviewGAN.from_pretrained(model_dir)
        with running_server(model, threads, max_wait) as url:
            def lone() -> float:
                t0 = time.perf_counter()
                httpx.post(f"{url}/api/generate", json={"sentiment": "positive", "n": 1, "seed": 0}, timeout=600)
                return time.perf_counter() - t0
            lone()  # the first decode of a process is slower
            alone = lone()
            host, port = url.removeprefix("http://").split(":")
            body = json.dumps({"sentiment": "negative", "n": n}).encode()
            socks = [socket.create_connection((host, int(port))) for _ in range(clients)]
            for s in socks:  # clients that never read their answer, and hang up after give_up_s
                s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            time.sleep(give_up_s)
            for s in socks:
                s.close()
            after = lone()
            abandoned = httpx.get(f"{url}/api/health", timeout=10).json()
            t0 = time.perf_counter()
            answers, during = asyncio.run(_burst(url, burst, n))
            wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    refused = [(t, int(ra)) for code, t, ra in answers if code == 503]
    served = [t for code, t, _ in answers if code == 200]
    return {"lone_alone_s": alone, "lone_after_abandoned_s": after,
            "abandoned": {k: abandoned[k] for k in ("refused", "cancelled", "reviews_decoded")},
            "burst": burst, "burst_503": len(refused), "burst_200": len(served),
            "burst_other": burst - len(refused) - len(served),
            "slowest_503_s": max((t for t, _ in refused), default=None),
            "retry_after_s": sorted({ra for _, ra in refused}), "slowest_200_s": max(served, default=None),
            "burst_wall_s": wall, "health_1s_in": during}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model directory (default: the bundled model)")
    p.add_argument("--requests", type=int, default=500, help="total requests (bounded)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight at once")
    p.add_argument("--n", type=int, default=5, help="reviews per request")
    p.add_argument("--check-alone", type=int, default=0, metavar="K",
                   help="then decode the first K requests alone and count those that differ from the batched answers")
    p.add_argument("--fairness", action="store_true",
                   help="instead: a lone request before and after abandoned ones, then a burst of 120 x 50 (503s)")
    p.add_argument("--max-wait", type=float, default=MAX_WAIT, help="the server's bound for --fairness (seconds)")
    p.add_argument("--no-offline", action="store_true", help="skip the offline generation of the same reviews")
    p.add_argument("--no-join", action="store_true",
                   help="requests do not join a batch decoding: each batch decodes to its end (to compare)")
    p.add_argument("--no-pack", action="store_true",
                   help="the decoder's weights are not pre-packed: every product through F.linear (to compare)")
    args = p.parse_args()
    if args.fairness:
        print(json.dumps(fairness(args.model, args.max_wait), indent=2))
        return
    if not (1 <= args.requests <= 100_000 and 1 <= args.concurrency <= 256):
        p.error("requests must be in 1..100000 and concurrency in 1..256")
    print(json.dumps(run(args.model, args.requests, args.concurrency, args.n, args.check_alone,
                         not args.no_offline, not args.no_join, False if args.no_pack else None), indent=2))


if __name__ == "__main__":
    main()
