"""`reviewgan serve`: a one-page web app and a JSON API (FastAPI + uvicorn, `pip install reviewgan[serve]`).

    POST /api/generate  {"sentiment": "positive", "n": 3, "temperature": 0.8, "top_p": 0.9, "seed": 1}
                     -> {"reviews": [{"sentiment", "text", "tokens", "ended"}, ...]}
    POST /api/rewrite   {"text": "...", "to": "negative", "strength": 2.5, "copy": 6.0, "sentiment": "positive",
                         "seed": 0}
                     -> {"source", "text", "from", "to"[, "note", "read", "p_positive", "unclear"]}
                        (ReviewGAN.rewrite; 422 for a flip of a text whose sentiment the model cannot tell)
    GET  /api/health    GET /  (the page)    GET /openapi.json

The model is loaded once. Requests that arrive while a batch is being decoded are decoded
together in the next batch (micro-batching): one decode of 80 rows costs far less than 16 decodes
of 5, so 16 concurrent requests do not queue behind each other one by one. Each request draws its noise and
sampling numbers from its own seeded torch.Generator, so batching never mixes random state: a
seeded request gets the same random numbers alone or beside others, and the same reviews up to
floating-point rounding, which can differ with the batch's size (ReviewGAN.generate_batch says how,
`python -m reviewgan.loadtest --check-alone K` measures how often).

Under load: a request whose client hangs up before its answer is cancelled, dropped from the queue
or, mid-batch, taken out of the batch between decoding steps (CancelOnDisconnect, Batcher). New
work that would take the queue's expected wait past `max_wait` seconds (`--max-wait`) is refused
at once: 503 with a Retry-After header. /api/health reports the queue and its expected wait.
"""

from __future__ import annotations

import asyncio
import math
import queue
import socket
import threading
import time
from concurrent.futures import Future, InvalidStateError
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Literal

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .checkpoint import ModelError
from .records import Request as GenRequest
from .model import ReviewGAN

MAX_BODY = 16 * 1024  # bytes: a generate request is a few dozen
BODY_TIMEOUT = 10.0  # seconds a client may take to send its body
GATHER_S = 0.05  # seconds the batcher waits for more requests after the first (Batcher)
MAX_WAIT = 60.0  # seconds of queued work beyond which new work is refused with 503 (Batcher, --max-wait)
# Before anything is measured: the bundled model decodes ~0.07 s per review in full batches on 2
# cores (docs/PERFORMANCE.md), and a rewrite (one encoding, one decode of one row) takes seconds.
S_PER_REVIEW, S_PER_JOB = 0.1, 2.0
RATE_HALF_LIFE = 500  # reviews: the measured seconds per review average over about this many
JOB_WEIGHT = 0.2  # each finished job's share of the measured seconds per job


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sentiment: Literal["positive", "negative"]
    n: int = Field(1, ge=1, le=50)
    temperature: float | None = Field(None, gt=0, le=5)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    greedy: bool | None = None


class RewriteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(..., max_length=MAX_BODY)
    to: Literal["positive", "negative", "flip"]
    sentiment: Literal["positive", "negative"] | None = None  # the source's; flip reads it itself without
    strength: float | None = Field(None, ge=0, le=10)
    copy_bonus: float | None = Field(None, ge=0, le=100, alias="copy")  # "copy" would shadow BaseModel.copy
    method: Literal["mean", "invert"] | None = None
    temperature: float | None = Field(None, gt=0, le=5)
    seed: int = Field(0, ge=0, le=2**63 - 1)


class RewriteOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    source: str
    text: str
    from_: str = Field(..., alias="from")
    to: str
    note: str | None = None
    read: str | None = None
    p_positive: float | None = None  # the reader's probability that the source is positive, when the model read it
    unclear: bool | None = None  # when the model read it: whether it cannot tell (flip then answers 422)


class ReviewOut(BaseModel):
    sentiment: str
    text: str
    tokens: int
    ended: bool


class GenerateResponse(BaseModel):
    reviews: list[ReviewOut]


class Overloaded(Exception):
    """Work refused because the queue's expected wait would pass the bound (HTTP 503)."""

    def __init__(self, wait: float, bound: float, retry_after: int):
        super().__init__(f"the server is busy: {wait:.0f} s of work queued, {bound:g} s at most; "
                         f"retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)
class _Work:
    """A request's reviews (rows > 0) or a job (rows == 0), and where it is: new, waiting, running, done."""
    work: Any
    fut: Future
    rows: int
    state: str = "new"


class Batcher:
    """One worker thread does all of the model's work: it decodes queued requests together, up to
    `max_rows` reviews per batch, and runs other jobs (rewrites) between batches.

    The worker takes whatever has queued up while the previous batch was decoding, and then waits up
    to `gather_s` for more. Without the wait, the clients answered by one batch send their next
    requests a few milliseconds apart, the first of them is decoded alone, and the rest wait for it:
    batches alternate between a few requests and many, and each request waits for two decodes
    (docs/PERFORMANCE.md). A lone request pays the wait once, against a decode of a second or more.

    Where the model decodes by continuous batching (the pretrained family), requests that arrive
    while a batch decodes join it as its slots free up (`join`; generate_batch's `more`), and each
    request is answered when its own reviews are done: a request no longer waits for the batch ahead
    of it, nor for the slowest review of its own batch. A queued job, or a request for longer reviews
    than the batch's, stops the joining; the batch then runs out and the job runs next.

    threads: the worker's intra-op threads. OpenMP gives each thread that computes its own team of
    threads; with a second team in the process (the main thread's, from loading the model) there
    are more threads than cores, OpenMP stops spinning between the thousands of small kernels of a
    decoding step, and the worker decodes ~1.5x slower (scripts/thread_probe.py). `serve` therefore loads the model with one
    thread, so the main thread's team has no workers, and gives the worker the machine's threads.

    Fairness under load. A future its caller cancelled (the server cancels it when the client goes
    away) is dropped from the queue, and mid-batch its rows leave the batch between decoding steps
    (ReviewGAN.generate_batch's `cancelled`). The queue is bounded by its expected wait: the reviews
    waiting or decoding times the seconds per review, plus the jobs times the seconds per job, both
    measured as batches and jobs finish. Work that would take the wait past `max_wait` seconds is
    refused at once (Overloaded) unless nothing is ahead of it; `max_wait` 0 or None: no bound.
    """

    def __init__(self, model: ReviewGAN, max_rows: int = 500, gather_s: float = GATHER_S, threads: int | None = None,
                 max_wait: float | None = None, s_per_review: float = S_PER_REVIEW, s_per_job: float = S_PER_JOB,
                 join: bool = True):
        self.model, self.max_rows, self.gather_s, self.threads = model, max_rows, gather_s, threads
        self.max_wait, self.s_per_review, self.s_per_job = max_wait, s_per_review, s_per_job
        self.batches = self.requests = 0  # counters, for /api/health and tests
        self.reviews = self.cancelled = self.refused = 0  # reviews sent to the decoder; work given up; refused
        self.lock = threading.Lock()  # guards the counts below and each _Work's state
        self.waiting_rows = self.waiting_jobs = self.running_rows = self.running_jobs = 0
        self.queue: queue.Queue = queue.Queue()
        self.join = join
        self._held = _NOTHING  # what ended the gathering or joining of a batch: the worker's next item
        self.thread = threading.Thread(target=self._run, daemon=True, name="reviewgan-batcher")
        self.thread.start()

    def submit(self, req: GenRequest) -> Future:
        """Queue a generation request: -> a future of its reviews. Raises Overloaded past the bound."""
        return self._put(req, req.n)

    def call(self, job: Callable[[], Any]) -> Future:
        """Run job() on the worker, between batches: -> a future of its result. Raises Overloaded past the bound."""
        return self._put(job, 0)

    def close(self) -> None:
        self.queue.put(None)

    def stats(self) -> dict:
        with self.lock:
            return {"queued_reviews": self.waiting_rows, "decoding_reviews": self.running_rows,
                    "queued_jobs": self.waiting_jobs + self.running_jobs, "expected_wait_s": round(self._wait(), 2),
                    "max_wait_s": self.max_wait or None, "s_per_review": round(self.s_per_review, 4),
                    "requests": self.requests, "batches": self.batches, "reviews_decoded": self.reviews,
                    "cancelled": self.cancelled, "refused": self.refused}

    def _wait(self) -> float:
        return ((self.waiting_rows + self.running_rows) * self.s_per_review
                + (self.waiting_jobs + self.running_jobs) * self.s_per_job)

    def _put(self, work, rows: int) -> Future:
        item = _Work(work, Future(), rows)
        with self.lock:
            ahead = self._wait()
            busy = self.waiting_rows + self.running_rows + self.waiting_jobs + self.running_jobs
            then = ahead + (rows * self.s_per_review if rows else self.s_per_job)
            if self.max_wait and busy and then > self.max_wait:
                self.refused += 1
                raise Overloaded(ahead, self.max_wait, max(1, math.ceil(then - self.max_wait)))
            self._move(item, "waiting")
        item.fut.add_done_callback(lambda f: self._done(item))
        self.queue.put(item)
        return item.fut

    def _move(self, item: _Work, to: str) -> None:
        """Move item to state `to`, keeping the counts (under the lock)."""
        rows, jobs = (item.rows, 0) if item.rows else (0, 1)
        if item.state == "waiting":
            self.waiting_rows, self.waiting_jobs = self.waiting_rows - rows, self.waiting_jobs - jobs
        elif item.state == "running":
            self.running_rows, self.running_jobs = self.running_rows - rows, self.running_jobs - jobs
        if to == "waiting":
            self.waiting_rows, self.waiting_jobs = self.waiting_rows + rows, self.waiting_jobs + jobs
        elif to == "running":
            self.running_rows, self.running_jobs = self.running_rows + rows, self.running_jobs + jobs
        item.state = to

    def _done(self, item: _Work) -> None:  # the future's callback: answered, failed or cancelled
        with self.lock:
            if item.state != "done":
                self.cancelled += item.fut.cancelled()
                self._move(item, "done")

    def _start(self, items: list[_Work]) -> list[_Work]:
        """-> the items still wanted, now running."""
        with self.lock:
            live = [it for it in items if it.state == "waiting" and not it.fut.cancelled()]
            for it in live:
                self._move(it, "running")
        return live

    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        while True:
            # what ended the gathering of a batch, or its joining (a job, or closing) comes next
            item = self.queue.get() if self._held is _NOTHING else self._held
            self._held = _NOTHING
            if item is None:
                return
            if item.fut.cancelled():  # its caller gave up while it waited
                continue
            if not item.rows:
                self._job(item)
                continue
            batch, rows = [item], item.rows
            until = time.monotonic() + self.gather_s
            while rows < self.max_rows:
                try:
                    nxt = self.queue.get(timeout=max(until - time.monotonic(), 1e-4))
                except queue.Empty:
                    break
                if nxt is None or not nxt.rows:
                    self._held = nxt
                    break
                if not nxt.fut.cancelled():
                    batch.append(nxt)
                    rows += nxt.rows
            self._decode(batch)

    def _decode(self, batch: list[_Work]) -> None:
        batch = self._start(batch)
        if not batch:
            return
        self.batches += 1
        rows0 = self.reviews  # the batch's reviews, those that join it included, are the count's growth
        self.requests += len(batch)
        self.reviews += sum(it.rows for it in batch)
        t0 = time.perf_counter()
        futures = [it.fut for it in batch]  # grows as requests join
        max_len = max(it.work.max_len for it in batch)

        def more(free: int) -> list[GenRequest]:
            """Requests queued since the batch started, for the stream to take (generate_batch's `more`),
            while fewer than max_rows reviews are in flight. A job (or closing) waits for the stream's
            end, and stops the joining so the stream ends; so does a request for longer reviews."""
            joined = []
            while self._held is _NOTHING and self.running_rows + sum(it.rows for it in joined) < self.max_rows:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None or not nxt.rows or nxt.work.max_len > max_len:
                    self._held = nxt
                elif not nxt.fut.cancelled():
                    joined.append(nxt)
            joined = self._start(joined)
            batch.extend(joined)
            futures.extend(it.fut for it in joined)
            self.requests += len(joined)
            self.reviews += sum(it.rows for it in joined)
            return [it.work for it in joined]

        def answer(k: int, reviews: list) -> None:
            try:
                batch[k].fut.set_result(reviews)
            except InvalidStateError:  # cancelled meanwhile
                pass

        cancelled = lambda: {i for i, it in enumerate(batch) if it.fut.cancelled()}  # noqa: E731
        join = dict(more=more, answer=answer) if self.join and self.model.continuous else {}
        ok = _settle(futures, lambda: self.model.generate_batch([it.work for it in batch], cancelled=cancelled,
                                                                **join))
        rows = self.reviews - rows0
        if ok and not cancelled():  # a batch cut short measures nothing
            # an average over about the last RATE_HALF_LIFE reviews decoded: a batch of a few reviews,
            # slow per review, barely moves it, and full batches (what a long queue makes) set it
            w = 1 - 0.5 ** (rows / RATE_HALF_LIFE)
            with self.lock:
                self.s_per_review += w * ((time.perf_counter() - t0) / rows - self.s_per_review)

    def _job(self, item: _Work) -> None:
        if not self._start([item]):
            return
        t0 = time.perf_counter()
        if _settle([item.fut], lambda: [item.work()]) and not item.fut.cancelled():
            with self.lock:
                self.s_per_job += JOB_WEIGHT * (time.perf_counter() - t0 - self.s_per_job)


_NOTHING = object()


def _settle(futures: list[Future], compute: Callable[[], list]) -> bool:
    """Set each future to its part of compute(), or all of them to its exception: a bad batch or
    job never kills the worker, and neither does a future its caller cancelled meanwhile.
    -> whether compute() succeeded."""
    try:
        results = compute()
    except Exception as e:
        results, error = [None] * len(futures), e
    else:
        error = None
    for f, res in zip(futures, results):
        try:
            if error is None:
                f.set_result(res)
            else:
                f.set_exception(error)
        except InvalidStateError:  # cancelled: nobody waits for it
            pass
    return error is None


class CancelOnDisconnect:
    """ASGI middleware: a client that goes away before its answer cancels the handling of its
    request, and so the work the handler awaits (asyncio.wrap_future passes the cancel on to the
    Batcher's future). Once the request's body is in, a watcher task listens on the connection; on
    `http.disconnect` before the response has started it cancels the task that runs the app. Later
    reads by the app get the watcher's message."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        task, watcher, state = asyncio.current_task(), None, {"answering": False, "gone": False}

        async def watch():
            message = await receive()
            if message["type"] == "http.disconnect" and not state["answering"]:
                state["gone"] = True
                task.cancel()
            return message

        async def receive_body():
            nonlocal watcher
            if watcher is not None:
                return await asyncio.shield(watcher)
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                watcher = asyncio.ensure_future(watch())
            return message

        async def send_answer(message):
            if message["type"] == "http.response.start":
                state["answering"] = True
            await send(message)

        try:
            await self.app(scope, receive_body, send_answer)
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            task.uncancel()  # the client is gone: nobody to answer
        finally:
            if watcher is not None:
                watcher.cancel()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


def create_app(model: ReviewGAN, threads: int | None = None, max_wait: float | None = MAX_WAIT) -> FastAPI:
    """The app; `threads`: the batcher's intra-op threads, `max_wait`: its bound in seconds (Batcher)."""
    batcher = Batcher(model, threads=threads, max_wait=max_wait)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(title="reviewgan", version="1", description="Positive or negative movie reviews on request.",
                  lifespan=lifespan)
    app.state.batcher = batcher

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        # Refuse oversized bodies before reading them into memory (and again after, for chunked bodies).
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
            return _error(413, f"request body over {MAX_BODY} bytes")
        if request.method == "POST":
            try:  # a client that stalls mid-body is not allowed to hold a connection open
                body = await asyncio.wait_for(request.body(), BODY_TIMEOUT)
            except asyncio.TimeoutError:
                return _error(408, f"request body not received within {BODY_TIMEOUT:g} s")
            except ClientDisconnect:  # the client went away mid-body: nobody to answer, nothing to log
                return _error(400, "client disconnected")
            if len(body) > MAX_BODY:
                return _error(413, f"request body over {MAX_BODY} bytes")
        return await call_next(request)

    app.add_middleware(CancelOnDisconnect)  # outermost: it sees the client leave whatever runs inside

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded):
        return JSONResponse(status_code=503, content={"error": str(exc)}, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # 404, 405, malformed bodies: the same {"error": ...} shape as every other refusal
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return _error(422, "; ".join(parts) or "invalid request")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return resources.files("reviewgan").joinpath("static/index.html").read_text()

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "model": str(model.path), "kind": model.cfg.model, "max_n": 50, **batcher.stats()}

    @app.post("/api/generate", response_model=GenerateResponse)
    async def generate(req: GenerateRequest):
        greedy = req.greedy
        if greedy is None and (req.temperature is not None or req.top_p is not None):
            greedy = False  # asking for a temperature means asking for sampling
        try:
            r = model.request(req.sentiment, n=req.n, seed=req.seed, greedy=greedy, temperature=req.temperature,
                              top_p=req.top_p)
        except ValueError as e:
            return _error(422, str(e))
        reviews = await asyncio.wrap_future(batcher.submit(r))
        return {"reviews": [r.to_dict() for r in reviews]}

    @app.post("/api/rewrite", response_model=RewriteOut, response_model_exclude_none=True, response_model_by_alias=True)
    async def rewrite(req: RewriteRequest):
        def run():  # on the batcher's worker, between batches: the model computes one thing at a time
            return model.rewrite(req.text, to=req.to, strength=req.strength, method=req.method, seed=req.seed,
                                 sentiments=[req.sentiment], temperature=req.temperature, copy=req.copy_bonus)[0]
        try:
            record = await asyncio.wrap_future(batcher.call(run))
        except ModelError as e:  # a model without a generator (the LM baseline)
            return _error(409, str(e))
        except ValueError as e:
            return _error(422, str(e))
        return record.to_dict()

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model: ReviewGAN | FastAPI, threads: int | None = None, max_wait: float | None = MAX_WAIT):
    """Serve `model` (or an app from create_app) on a free loopback port in a background thread;
    yields the base URL."""
    app = model if isinstance(model, FastAPI) else create_app(model, threads, max_wait)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve(model_dir, host: str = "127.0.0.1", port: int = 8000, max_wait: float = MAX_WAIT) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    if not (math.isfinite(max_wait) and max_wait >= 0):
        raise ValueError(f"--max-wait must be a number of seconds >= 0 (0: no bound), got {max_wait}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:  # fail here, in one line
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    threads = load_for_serving_threads()
    model = ReviewGAN.from_pretrained(model_dir)
    uvicorn.run(create_app(model, threads, max_wait), host=host, port=port, log_level="info")


def load_for_serving_threads() -> int:
    """Before loading a model to serve: leave the main thread one intra-op thread (its OpenMP team
    then has no workers; Batcher says why) -> the threads the batcher should use."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads
