"""HTTP API: happy path, determinism under a seed, concurrency, and every kind of bad input gets a 4xx JSON."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from reviewgan import ReviewGAN  # noqa: E402
from reviewgan.serve import MAX_BODY, create_app, free_port  # noqa: E402


@pytest.fixture(scope="module")
def client(tiny_model_dir):
    return TestClient(create_app(ReviewGAN.from_pretrained(tiny_model_dir)))


def test_page_health_and_schema(client):
    page = client.get("/")
    assert page.status_code == 200 and "<form" in page.text and "/api/generate" in page.text
    assert client.get("/api/health").json()["status"] == "ok"
    schema = client.get("/openapi.json").json()
    assert "/api/generate" in schema["paths"]


def test_generate_and_seed(client):
    body = {"sentiment": "negative", "n": 4, "temperature": 0.9, "top_p": 0.95, "seed": 7}
    a = client.post("/api/generate", json=body)
    assert a.status_code == 200
    reviews = a.json()["reviews"]
    assert len(reviews) == 4 and all(r["sentiment"] == "negative" for r in reviews)
    assert all(set(r) == {"sentiment", "text", "tokens", "ended"} for r in reviews)
    assert client.post("/api/generate", json=body).json() == a.json()
    assert client.post("/api/generate", json={"sentiment": "positive"}).status_code == 200


def test_every_seed_up_to_2_63_is_its_own_stream(client):
    body = {"sentiment": "positive", "n": 4, "temperature": 1.5}
    texts = {s: [r["text"] for r in client.post("/api/generate", json={**body, "seed": s}).json()["reviews"]]
             for s in (0, 2**32, 2**63 - 1)}
    assert texts[0] != texts[2**32] != texts[2**63 - 1]
    assert client.post("/api/generate", json={**body, "seed": 2**63}).status_code == 422


def test_concurrent_requests_do_not_mix(client):
    bodies = [{"sentiment": s, "n": 3, "seed": i, "temperature": 1.0} for i in range(8) for s in ("positive", "negative")]
    expected = [client.post("/api/generate", json=b).json() for b in bodies]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda b: client.post("/api/generate", json=b).json(), bodies))
    assert got == expected


@pytest.mark.parametrize("body", [
    {"sentiment": "neutral"}, {"sentiment": "positive", "n": 0}, {"sentiment": "positive", "n": 51},
    {"sentiment": "positive", "temperature": 0}, {"sentiment": "positive", "temperature": -1},
    {"sentiment": "positive", "n": "3"}, {"sentiment": "positive", "top_p": 1.5}, {}, {"n": 2},
    {"sentiment": "positive", "bogus": 1}, [1, 2], "positive",
])
def test_bad_json_gets_4xx(client, body):
    r = client.post("/api/generate", json=body)
    assert 400 <= r.status_code < 500 and "error" in r.json()


def test_non_json_and_oversized_bodies(client):
    r = client.post("/api/generate", content=b"not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()
    big = json.dumps({"sentiment": "positive", "pad": "x" * (MAX_BODY + 10)})
    r = client.post("/api/generate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "error" in r.json()
    assert client.get("/api/health").status_code == 200  # and the server is still fine


def test_bounded_load_script_on_loopback(tiny_model_dir):
    from reviewgan.loadtest import run
    r = run(tiny_model_dir, requests=40, concurrency=8, n=2)
    assert r["errors"] == 0 and r["requests"] == 40 and 0 < r["p50_s"] <= r["p95_s"] <= r["p99_s"]
    # beside them, the same 80 reviews offline: the ratios are of figures from this one run
    assert r["served_over_offline"] == pytest.approx(40 * 2 / r["wall_s"] / r["offline_reviews_per_s"])
    assert r["p95_over_offline_batch"] == pytest.approx(r["p95_s"] / r["offline_batch_s"]) and r["offline_batch_s"] > 0


def test_requests_that_queue_up_share_one_decode(tiny_model_dir):
    from reviewgan.serve import Batcher
    model = ReviewGAN.from_pretrained(tiny_model_dir)
    reqs = [dict(sentiment=("positive", "negative")[i % 2], n=1 + i % 3, seed=i, temperature=0.5 + i / 20,
                 top_p=1.0 if i % 4 else 0.9, greedy=i % 5 == 0) for i in range(24)]
    alone = [model.generate(**r, records=True) for r in reqs]
    batcher = Batcher(model)
    futures = [batcher.submit(model.request(**r)) for r in reqs]
    assert [f.result(timeout=60) for f in futures] == alone  # batching changes nothing a request sees
    assert batcher.requests == 24 and batcher.batches < 24
    batcher.close()


def test_requests_a_moment_apart_are_gathered_into_one_batch(tiny_model_dir):
    import time

    from reviewgan.serve import Batcher
    model = ReviewGAN.from_pretrained(tiny_model_dir)
    for gather_s, batches in ((0.0, 2), (1.0, 1)):  # the second request comes 0.2 s after the first
        batcher = Batcher(model, gather_s=gather_s)
        first = batcher.submit(model.request("positive", n=2, seed=1))
        time.sleep(0.2)
        second = batcher.submit(model.request("negative", n=2, seed=2))
        assert first.result(timeout=60) and second.result(timeout=60)
        assert batcher.batches == batches
        batcher.close()


def test_jobs_run_on_the_batchers_worker_with_its_threads(tiny_model_dir):
    import threading

    import torch

    from reviewgan.serve import Batcher
    model = ReviewGAN.from_pretrained(tiny_model_dir)
    batcher = Batcher(model, threads=1)
    where = batcher.call(lambda: (threading.current_thread().name, torch.get_num_threads()))
    reviews = batcher.submit(model.request("positive", n=2, seed=1))
    assert where.result(timeout=60) == ("reviewgan-batcher", 1) and len(reviews.result(timeout=60)) == 2
    with pytest.raises(ValueError, match="bad job"):  # a job's error reaches its caller, and the worker goes on
        batcher.call(lambda: (_ for _ in ()).throw(ValueError("bad job"))).result(timeout=60)
    assert batcher.submit(model.request("negative", n=1, seed=2)).result(timeout=60)
    batcher.close()


def test_a_cancelled_request_does_not_stop_the_worker(tiny_model_dir):
    from reviewgan.serve import Batcher
    model = ReviewGAN.from_pretrained(tiny_model_dir)
    batcher = Batcher(model, gather_s=0.5)  # the first request waits in the gathering window...
    gone = batcher.submit(model.request("positive", n=1, seed=1))
    assert gone.cancel()  # ...where its client gives up on it
    assert len(batcher.submit(model.request("negative", n=2, seed=2)).result(timeout=60)) == 2
    assert len(batcher.submit(model.request("positive", n=1, seed=3)).result(timeout=60)) == 1
    batcher.close()


def test_rewrite_endpoint_and_its_validation(client):
    body = {"text": "the movie was wonderful and the cast brilliant!", "to": "negative", "sentiment": "positive",
            "seed": 1}
    a = client.post("/api/rewrite", json=body)
    assert a.status_code == 200, a.text
    r = a.json()
    assert set(r) == {"source", "text", "from", "to"} and r["from"] == "positive" and r["to"] == "negative"
    assert client.post("/api/rewrite", json=body).json() == r  # same seed, same rewrite
    plain = client.post("/api/rewrite", json={**body, "copy": 0.0})
    assert plain.status_code == 200 and plain.json()["to"] == "negative"
    read = client.post("/api/rewrite", json={"text": body["text"], "to": "positive"}).json()
    assert 0 <= read["p_positive"] <= 1 and isinstance(read["unclear"], bool)  # the model read the source itself
    long = client.post("/api/rewrite", json={"text": " ".join(["the story was dull and slow."] * 12), "to": "positive"})
    assert long.status_code == 200 and "sentences" in long.json()["note"] and "read" in long.json()
    for bad_body, status in [({"text": "", "to": "negative"}, 422), ({"text": "<br />", "to": "negative"}, 422),
                             ({"text": "fine", "to": "neutral"}, 422), ({"text": "fine"}, 422),
                             ({"text": "fine", "to": "flip", "strength": 11}, 422),
                             ({"text": "fine", "to": "flip", "copy": -1}, 422),
                             ({"text": "fine", "to": "flip", "copy": "4"}, 422),
                             ({"text": "fine", "to": "flip", "seed": -1}, 422),
                             ({"text": "fine", "to": "flip", "extra": 1}, 422),
                             ({"text": 3, "to": "flip"}, 422), ({"text": "fine", "to": "flip", "temperature": 0}, 422)]:
        res = client.post("/api/rewrite", json=bad_body)
        assert res.status_code == status and "error" in res.json(), (bad_body, res.text)


# ---------------------------------------------------------------- fairness under load

class Paced:
    """The tiny model with its decoding slowed to a set pace: `step_s` a step, and `row_s` more a
    step for each review still decoding, so that timings hang on the pace, not on the machine. Like
    the real decoders it asks `cancelled` between steps and decodes only the rows still wanted;
    `row_steps` counts what it decoded. `gate`: while clear, every batch waits for it to be set."""

    def __init__(self, model, steps=40, step_s=0.01, row_s=0.0002):
        self.model, self.steps, self.step_s, self.row_s = model, steps, step_s, row_s
        self.row_steps = 0
        self.gate = __import__("threading").Event()
        self.gate.set()

    def __getattr__(self, name):  # request, rewrite, path, cfg: the tiny model's
        return getattr(self.model, name)

    def generate_batch(self, requests, rows=None, swap=False, cancelled=None):
        import time
        self.gate.wait(60)
        for _ in range(self.steps):
            gone = cancelled() if cancelled else set()
            live = sum(r.n for i, r in enumerate(requests) if i not in gone)
            if not live:
                break
            self.row_steps += live
            time.sleep(self.step_s + self.row_s * live)
        return self.model.generate_batch(requests, rows, swap, cancelled)


def _post(url, body, timeout=60.0):
    """-> the response, or None when the client gave up (its timeout) and disconnected."""
    import httpx
    try:
        return httpx.post(url, json=body, timeout=timeout)
    except httpx.TimeoutException:
        return None


def _send(url, path, body):
    """A client that sends a request and never reads the answer: -> its socket, to close when it gives up."""
    import socket
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def _health(url):
    import httpx
    return httpx.get(f"{url}/api/health", timeout=10).json()


def _until(check, timeout=20.0):
    import time
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.02)


def test_abandoned_requests_are_dropped_and_a_lone_request_is_not_kept_waiting(tiny_model_dir):
    import time

    from reviewgan.serve import running_server
    paced = Paced(ReviewGAN.from_pretrained(tiny_model_dir))
    with running_server(create_app(paced, max_wait=0)) as url:
        def lone():
            t0 = time.perf_counter()
            assert _post(f"{url}/api/generate", {"sentiment": "positive", "n": 1, "seed": 0}).status_code == 200
            return time.perf_counter() - t0
        alone = sorted(lone() for _ in range(3))[1]
        before = _health(url)
        steps_before = paced.row_steps
        # 20 clients ask for 50 reviews each (2 batches of 500, 40 steps of ~0.11 s each: ~9 s of
        # decoding) and give up after 0.5 s
        clients = [_send(url, "/api/generate", {"sentiment": "negative", "n": 50, "seed": i}) for i in range(20)]
        time.sleep(0.5)
        for c in clients:
            c.close()
        after = lone()
        _until(lambda: _health(url)["cancelled"] - before["cancelled"] == 20)
        health = _health(url)
    assert after < 3 * alone, (after, alone)
    # the first batch was cut short between its steps, and the second never started
    assert paced.row_steps - steps_before - 1 * 40 < 20 * 50 * 40 / 4
    assert health["reviews_decoded"] - before["reviews_decoded"] - 1 <= 500
    assert health["queued_reviews"] == health["decoding_reviews"] == 0 and health["expected_wait_s"] == 0


def test_a_request_cancelled_mid_batch_leaves_it_and_the_others_are_unchanged(tiny_model_dir):
    model = ReviewGAN.from_pretrained(tiny_model_dir)
    sentiments = ("positive", "negative", "positive")

    def requests():
        return [model.request(s, n=3, seed=i, greedy=False, temperature=1.2) for i, s in enumerate(sentiments)]

    whole = model.generate_batch(requests())
    steps = []
    step = model.autoencoder.decoder.step
    model.autoencoder.decoder.step = lambda *a: (steps.append(1), step(*a))[1]
    asked = []

    def cancel(after, which):
        return lambda: (asked.append(1), set(which) if len(asked) > after else set())[1]

    cut = model.generate_batch(requests(), cancelled=cancel(2, {1}))
    assert cut[1] is None and cut[0] == whole[0] and cut[2] == whole[2]  # the same seeds, the same reviews
    assert len(asked) > 3  # asked between steps
    asked.clear()
    steps.clear()
    assert model.generate_batch(requests(), cancelled=cancel(2, {0, 1, 2})) == [None] * 3
    assert len(steps) == 2  # every row gone after two steps: the decoding stops there

    # The screen neither reads nor draws again the rows of a request cancelled before its batch
    from reviewgan.config import apply_overrides
    model.cfg = apply_overrides(model.cfg, ["sample.screen=0.99", "sample.screen_tries=3"])
    read = []
    read_texts = model.autoencoder.read_texts
    model.autoencoder.read_texts = lambda texts, *a: (read.append(len(texts)), read_texts(texts, *a))[1]
    steps.clear()
    out = model.generate_batch(requests(), cancelled=lambda: {1})
    assert out[1] is None and len(out[0]) == len(out[2]) == 3
    assert read and read[0] == 6 and all(n <= 6 for n in read)
    full = model.generate_batch(requests())
    assert read[-1] == 9 and all(len(r) == 3 for r in full)  # without the hook, every row is read


def test_work_past_the_bound_is_refused_at_once_with_retry_after(tiny_model_dir):
    from reviewgan.serve import running_server
    paced = Paced(ReviewGAN.from_pretrained(tiny_model_dir), steps=1)
    paced.gate.clear()  # nothing finishes until the test says so
    app = create_app(paced, max_wait=2.2)
    app.state.batcher.s_per_review = 0.01  # a rate set here: 2.2 s is room for 4 requests of 50
    with running_server(app) as url, ThreadPoolExecutor(4) as pool:
        body = {"sentiment": "positive", "n": 50}
        held = [pool.submit(_post, f"{url}/api/generate", {**body, "seed": 0})]
        _until(lambda: _health(url)["decoding_reviews"] == 50)  # the first is decoding (held at the gate)
        held += [pool.submit(_post, f"{url}/api/generate", {**body, "seed": i}) for i in (1, 2, 3)]
        _until(lambda: _health(url)["queued_reviews"] == 150)
        refused = _post(f"{url}/api/generate", {**body, "seed": 4}, timeout=10)
        rewrite = _post(f"{url}/api/rewrite", {"text": "the movie was dull.", "to": "positive"}, timeout=10)
        health = _health(url)
        assert not any(f.done() for f in held)  # refused while the queue was still full
        paced.gate.set()
        answered = [f.result(timeout=60) for f in held]
        idle = _health(url)
    assert refused.status_code == 503 and "error" in refused.json()
    assert refused.headers["retry-after"] == "1"  # (4 x 50 + 50) x 0.01 s = 2.5 s against 2.2 s: 0.3 s, rounded up
    assert rewrite.status_code == 503 and int(rewrite.headers["retry-after"]) >= 1  # rewrites count too
    assert health["queued_reviews"] == 150 and health["decoding_reviews"] == 50
    assert health["expected_wait_s"] == 2.0 and health["refused"] == 2 and health["max_wait_s"] == 2.2
    assert [a.status_code for a in answered] == [200] * 4
    assert idle["queued_reviews"] == idle["decoding_reviews"] == idle["queued_jobs"] == 0


def test_soak_of_mixed_requests_gets_no_server_errors(tiny_model_dir):
    import random

    import httpx

    from reviewgan.serve import running_server
    rng = random.Random(0)
    app = create_app(ReviewGAN.from_pretrained(tiny_model_dir), max_wait=1)
    app.state.batcher.s_per_review, app.state.batcher.s_per_job = 0.005, 0.05  # about the tiny model's: a few 503s
    bodies = []
    for i in range(300):
        kind = rng.choice(["generate", "generate", "rewrite", "bad", "abandon"])
        if kind == "generate":
            bodies.append(("generate", {"sentiment": rng.choice(["positive", "negative"]), "n": rng.randint(1, 50),
                                        "seed": i, "temperature": rng.choice([0.5, 1.0, 2.0])}, 30))
        elif kind == "rewrite":
            bodies.append(("rewrite", {"text": rng.choice(["the film was great!", "the cast was dull."]),
                                       "to": rng.choice(["flip", "positive"]), "seed": i}, 30))
        elif kind == "bad":
            bodies.append((rng.choice(["generate", "rewrite"]), rng.choice([{}, {"sentiment": "meh"}, {"n": 500},
                                                                           {"text": 5, "to": "x"}, [1]]), 30))
        else:
            bodies.append(("generate", {"sentiment": "positive", "n": 50, "seed": i}, 0.01))
    with running_server(app) as url:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda b: _post(f"{url}/api/{b[0]}", b[1], timeout=b[2]), bodies))
        _until(lambda: _health(url)["expected_wait_s"] == 0)
        health = httpx.get(f"{url}/api/health", timeout=10)
    codes = [a.status_code for a in answers if a is not None]
    assert all(c < 500 or c == 503 for c in codes), sorted(set(codes))
    assert codes.count(200) > 50 and any(400 <= c < 500 for c in codes)
    assert health.status_code == 200 and health.json()["queued_reviews"] == 0


def test_serve_refuses_a_bad_max_wait():
    from reviewgan.serve import serve
    with pytest.raises(ValueError, match="--max-wait"):
        serve("unused", port=free_port(), max_wait=-1)
