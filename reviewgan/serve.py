"""`reviewgan serve`: a one-page web app and a JSON API (FastAPI + uvicorn, `pip install reviewgan[serve]`).

    POST /api/generate  {"sentiment": "positive", "n": 3, "temperature": 0.8, "top_p": 0.9, "seed": 1}
                     -> {"reviews": [{"sentiment", "text", "tokens", "ended"}, ...]}
    POST /api/rewrite   {"text": "...", "to": "negative", "strength": 2.5, "copy": 6.0, "sentiment": "positive",
                         "seed": 0}
                     -> {"source", "text", "from", "to"[, "note", "read"]}   (ReviewGAN.rewrite)
    GET  /api/health    GET /  (the page)    GET /openapi.json

The model is loaded once. Requests that arrive while a batch is being decoded are decoded
together in the next batch (micro-batching): one decode of 80 rows costs far less than 16 decodes
of 5, so 16 concurrent requests do not queue behind each other one by one. Each request draws its noise and
sampling numbers from its own seeded torch.Generator, so batching never mixes random state: a
seeded request gets the same random numbers alone or beside others, and the same reviews up to
floating-point rounding, which can differ with the batch's size (ReviewGAN.generate_batch says how,
`python -m reviewgan.loadtest --check-alone K` measures how often).
"""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
import time
from concurrent.futures import Future, InvalidStateError
from contextlib import asynccontextmanager, contextmanager
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
from .model import Request as GenRequest
from .model import ReviewGAN

MAX_BODY = 16 * 1024  # bytes: a generate request is a few dozen
BODY_TIMEOUT = 10.0  # seconds a client may take to send its body
GATHER_S = 0.05  # seconds the batcher waits for more requests after the first (Batcher)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sentiment: Literal["positive", "negative"]
    n: int = Field(1, ge=1, le=50)
    temperature: float | None = Field(None, gt=0, le=5)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**62)
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
    seed: int = Field(0, ge=0, le=2**62)


class RewriteOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    source: str
    text: str
    from_: str = Field(..., alias="from")
    to: str
    note: str | None = None
    read: str | None = None


class ReviewOut(BaseModel):
    sentiment: str
    text: str
    tokens: int
    ended: bool


class GenerateResponse(BaseModel):
    reviews: list[ReviewOut]


class Batcher:
    """One worker thread does all of the model's work: it decodes queued requests together, up to
    `max_rows` reviews per batch, and runs other jobs (rewrites) between batches.

    The worker takes whatever has queued up while the previous batch was decoding, and then waits up
    to `gather_s` for more. Without the wait, the clients answered by one batch send their next
    requests a few milliseconds apart, the first of them is decoded alone, and the rest wait for it:
    batches alternate between a few requests and many, and each request waits for two decodes
    (docs/PERFORMANCE.md). A lone request pays the wait once, against a decode of a second or more.

    threads: the worker's intra-op threads. OpenMP gives each thread that computes its own team of
    threads; with a second team in the process (the main thread's, from loading the model) there
    are more threads than cores, OpenMP stops spinning between the thousands of small kernels of a
    decoding step, and the worker decodes ~1.5x slower (scripts/thread_probe.py). `serve` therefore loads the model with one
    thread, so the main thread's team has no workers, and gives the worker the machine's threads.
    """

    def __init__(self, model: ReviewGAN, max_rows: int = 500, gather_s: float = GATHER_S, threads: int | None = None):
        self.model, self.max_rows, self.gather_s, self.threads = model, max_rows, gather_s, threads
        self.batches = self.requests = 0  # counters, for /api/health and tests
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True, name="reviewgan-batcher")
        self.thread.start()

    def submit(self, req: GenRequest) -> Future:
        """Queue a generation request: -> a future of its reviews."""
        fut: Future = Future()
        self.queue.put((req, fut))
        return fut

    def call(self, job: Callable[[], Any]) -> Future:
        """Run job() on the worker, between batches: -> a future of its result."""
        fut: Future = Future()
        self.queue.put((job, fut))
        return fut

    def close(self) -> None:
        self.queue.put(None)

    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        held = _NOTHING  # what ended the gathering of a batch (a job, or closing): next after it
        while True:
            item = self.queue.get() if held is _NOTHING else held
            held = _NOTHING
            if item is None:
                return
            job, fut = item
            if callable(job):
                _settle([fut], lambda: [job()])
                continue
            batch, rows = [item], job.n
            until = time.monotonic() + self.gather_s
            while rows < self.max_rows:
                try:
                    nxt = self.queue.get(timeout=max(until - time.monotonic(), 1e-4))
                except queue.Empty:
                    break
                if nxt is None or callable(nxt[0]):
                    held = nxt
                    break
                batch.append(nxt)
                rows += nxt[0].n
            self.batches += 1
            self.requests += len(batch)
            _settle([f for _, f in batch], lambda: self.model.generate_batch([r for r, _ in batch]))


_NOTHING = object()


def _settle(futures: list[Future], compute: Callable[[], list]) -> None:
    """Set each future to its part of compute(), or all of them to its exception: a bad batch or
    job never kills the worker, and neither does a future its caller cancelled meanwhile."""
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


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


def create_app(model: ReviewGAN, threads: int | None = None) -> FastAPI:
    """The app; `threads`: the batcher's intra-op threads (Batcher)."""
    batcher = Batcher(model, threads=threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(title="reviewgan", version="1", description="Positive or negative movie reviews on request.",
                  lifespan=lifespan)

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
        return {"status": "ok", "model": str(model.path), "kind": model.cfg.model, "max_n": 50,
                "requests": batcher.requests, "batches": batcher.batches}

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
def running_server(model: ReviewGAN, threads: int | None = None):
    """Serve `model` on a free loopback port in a background thread; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(model, threads), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve(model_dir, host: str = "127.0.0.1", port: int = 8000) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:  # fail here, in one line
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    threads = load_for_serving_threads()
    model = ReviewGAN.from_pretrained(model_dir)
    uvicorn.run(create_app(model, threads), host=host, port=port, log_level="info")


def load_for_serving_threads() -> int:
    """Before loading a model to serve: leave the main thread one intra-op thread (its OpenMP team
    then has no workers; Batcher says why) -> the threads the batcher should use."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads
