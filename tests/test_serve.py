"""HTTP API: happy path, determinism under a seed, concurrency, and every kind of bad input gets a 4xx JSON."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from reviewgan import ReviewGAN  # noqa: E402
from reviewgan.serve import MAX_BODY, create_app  # noqa: E402


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
    flip = client.post("/api/rewrite", json={"text": body["text"], "to": "flip"}).json()
    assert "model's reading" in flip["note"]
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
