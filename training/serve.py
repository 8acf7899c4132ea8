"""`curate serve`: check.py's verdicts as an HTTP API (FastAPI + uvicorn) and a one-page form.

POST /check (multipart `image` + `claimed_label`), POST /check/batch (`images` + one
`claimed_labels` each), GET /health, GET /classes, GET / (the upload form), /docs (OpenAPI).
The model is loaded once; uploads that arrive together share one model call (Batcher).
Bad input never reaches the model: bodies over max_bytes get 413 (from Content-Length, else
while streaming), headers or a body that stall for `timeout` seconds 408 (header_deadline.py
for the headers), an unknown claimed label 422
naming the valid ones, undecodable bytes the verdict `unreadable` with the reason. Uploads stay
in memory (the multipart spool is raised to max_bytes), so nothing is written per request.
"""
from __future__ import annotations

import asyncio
import json
import signal
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartParser

from .check import Checker, Upload, summarize
from .header_deadline import with_header_timeout

MAX_BYTES = 20_000_000
BODY_TIMEOUT = 10.0
MAX_BATCH = 16
PAGE = Path(__file__).with_name("check_page.html")


class BodyGuard:
    """ASGI middleware: refuse bodies over max_bytes (413) and bodies that stall (408)."""

    def __init__(self, app, *, max_bytes: int, timeout: float):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await _send_json(send, 413, {"detail": self._too_large()})
        state = {"received": 0, "done": False}

        async def guarded_receive():
            if state["done"]:   # the body is in; later receives wait for a disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"the request body stalled for {self.timeout:g} s"
                                    ) from None
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                state["done"] = not message.get("more_body", False)
                if state["received"] > self.max_bytes:
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, guarded_receive, send)

    def _too_large(self) -> str:
        return f"upload larger than the limit of {self.max_bytes:,} bytes (--max-bytes)"


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


class Batcher:
    """Hands uploads to checker.check in batches: whatever queued while the model was busy,
    up to max_batch, goes in the next call. The model runs on one worker thread."""

    def __init__(self, checker: Checker, *, max_batch: int = MAX_BATCH, max_wait: float = 0.003):
        self.checker, self.max_batch, self.max_wait = checker, max_batch, max_wait
        self.batches = self.photos = 0

    async def start(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        await asyncio.get_running_loop().run_in_executor(
            self.executor, self.checker.predictor.warm_up, self.max_batch)
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self.task.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, upload: Upload, claimed: str) -> dict:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((upload, claimed, future))
        return await future

    async def _gather(self) -> list:
        batch = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(await asyncio.wait_for(self.queue.get(),
                                                    max(0.0, deadline - loop.time())))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            try:
                results = await loop.run_in_executor(
                    self.executor, self.checker.check, [b[0] for b in batch], [b[1] for b in batch])
            except Exception as exc:   # one failed model call must not stop the server
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches, self.photos = self.batches + 1, self.photos + len(batch)
            for (_, _, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)


def create_app(checker: Checker, *, max_bytes: int = MAX_BYTES, timeout: float = BODY_TIMEOUT,
               max_batch: int = MAX_BATCH) -> FastAPI:
    """The FastAPI app around one loaded Checker."""
    MultiPartParser.spool_max_size = max_bytes   # keep every upload in memory, never on disk
    batcher = Batcher(checker, max_batch=max_batch)
    classes = checker.classes

    @asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="curate check", lifespan=lifespan,
                  description="Does a seller's photo show the claimed car model? Verdicts, in "
                              "order: unreadable, not_a_car, duplicate, wrong_model, unsure, ok.")
    app.add_middleware(BodyGuard, max_bytes=max_bytes, timeout=timeout)

    def known(label: str) -> str:
        if label not in classes:
            raise HTTPException(422, {"message": f"unknown claimed_label {label!r}",
                                      "valid": classes})
        return label

    async def one(image: UploadFile, claimed: str) -> dict:
        data = await image.read()
        upload = await run_in_threadpool(checker.read, image.filename or "upload", data)
        return await batcher.submit(upload, claimed)

    @app.post("/check", summary="Check one photo against its claimed label")
    async def check(image: UploadFile = File(..., description="the photo"),
                    claimed_label: str = Form(..., description="the model the seller claims")):
        return await one(image, known(claimed_label))

    @app.post("/check/batch", summary="Check several photos, one claimed label each")
    async def check_batch(images: list[UploadFile] = File(...),
                          claimed_labels: list[str] = Form(...)):
        if len(images) != len(claimed_labels):
            raise HTTPException(422, f"{len(images)} images but {len(claimed_labels)} "
                                     f"claimed_labels: give one label per image")
        claims = [known(label) for label in claimed_labels]
        results = await asyncio.gather(*(one(i, c) for i, c in zip(images, claims)))
        return {"results": results, "summary": summarize(results)}

    @app.get("/health")
    async def health():
        catalogue = checker.catalogue
        return {"status": "ok", "classes": len(classes), "batches": batcher.batches,
                "photos": batcher.photos,
                "catalogue": None if catalogue is None else {"name": catalogue.name,
                                                             "photos": len(catalogue)}}

    @app.get("/classes")
    async def list_classes():
        return {"classes": classes}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return PAGE.read_text()

    return app


def server_config(app, *, host: str = "127.0.0.1", port: int = 8000,
                  timeout: float = BODY_TIMEOUT) -> uvicorn.Config:
    """uvicorn's settings for the API: `timeout` seconds for a request's headers (408 after),
    5 s for an idle keep-alive connection, at most 256 connections at once."""
    return uvicorn.Config(app, host=host, port=port, log_level="warning",
                          http=with_header_timeout(timeout), timeout_keep_alive=5,
                          limit_concurrency=256)


def serve(checker: Checker, *, host: str = "127.0.0.1", port: int = 8000,
          max_bytes: int = MAX_BYTES, timeout: float = BODY_TIMEOUT, max_batch: int = MAX_BATCH,
          announce=print) -> None:
    """Run the API until Ctrl-C or SIGTERM, which end it cleanly (exit status 0)."""
    app = create_app(checker, max_bytes=max_bytes, timeout=timeout, max_batch=max_batch)
    server = uvicorn.Server(server_config(app, host=host, port=port, timeout=timeout))

    def stop(signum, frame):   # also the signal uvicorn raises again once it has shut down
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    announce(f"curate check API: http://{host}:{port}/  (docs at /docs; Ctrl-C stops)")
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    announce("curate check API stopped.")
