"""`reviewgan serve`: a one-page web app and a JSON API (FastAPI + uvicorn, `pip install reviewgan[serve]`).

    POST /api/generate  {"sentiment": "positive", "n": 3, "temperature": 0.8, "top_p": 0.9, "seed": 1}
                     -> {"reviews": [{"sentiment", "text", "tokens", "ended"}, ...]}
    GET  /api/health    GET /  (the page)    GET /openapi.json

The model is loaded once. Each request draws from its own seeded torch.Generator, so concurrent
requests never share random state: a request with a seed returns the same reviews every time.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from importlib import resources
from typing import Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from .model import ReviewGAN

MAX_BODY = 16 * 1024  # bytes: a generate request is a few dozen


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sentiment: Literal["positive", "negative"]
    n: int = Field(1, ge=1, le=50)
    temperature: float | None = Field(None, gt=0, le=5)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**62)
    greedy: bool | None = None


class ReviewOut(BaseModel):
    sentiment: str
    text: str
    tokens: int
    ended: bool


class GenerateResponse(BaseModel):
    reviews: list[ReviewOut]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


def create_app(model: ReviewGAN) -> FastAPI:
    app = FastAPI(title="reviewgan", version="1", description="Positive or negative movie reviews on request.")

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        # Refuse oversized bodies before reading them into memory (and again after, for chunked bodies).
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
            return _error(413, f"request body over {MAX_BODY} bytes")
        if request.method == "POST":
            body = await request.body()
            if len(body) > MAX_BODY:
                return _error(413, f"request body over {MAX_BODY} bytes")
        return await call_next(request)

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
        return {"status": "ok", "model": str(model.path), "kind": model.cfg.model, "max_n": 50}

    @app.post("/api/generate", response_model=GenerateResponse)
    async def generate(req: GenerateRequest):
        greedy = req.greedy
        if greedy is None and (req.temperature is not None or req.top_p is not None):
            greedy = False  # asking for a temperature means asking for sampling
        reviews = await run_in_threadpool(lambda: model.generate(
            req.sentiment, n=req.n, seed=req.seed, greedy=greedy, temperature=req.temperature, top_p=req.top_p,
            records=True))
        return {"reviews": [r.to_dict() for r in reviews]}

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model: ReviewGAN):
    """Serve `model` on a free loopback port in a background thread; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(model), host="127.0.0.1", port=port, log_level="warning"))
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
    model = ReviewGAN.from_pretrained(model_dir)
    uvicorn.run(create_app(model), host=host, port=port, log_level="info")
