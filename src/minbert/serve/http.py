"""The HTTP service over a trained run (``minbert serve RUN``): FastAPI routes on a backend
(``Predictor``, or ``OnnxPredictor`` for an ONNX export), with dynamic batching, limits on
every input, and Prometheus metrics.

Routes (OpenAPI docs at ``/docs``):
    POST /v1/sentiment   {"texts": [...]}         class, its name, probabilities (sst/cfimdb)
    POST /v1/paraphrase  {"pairs": [[a, b], ...]} probability, decision at the calibrated
                                                  threshold (quora)
    POST /v1/similarity  {"pairs": [[a, b], ...]} score 0-5 (sts)
    POST /v1/embed       {"texts": [...], "task"?} sentence vectors as the task's head pools
    POST /embed, /predict {"inputs": ...}         text-embeddings-inference's shapes
    GET  /health, /info, /metrics

Every error is JSON ``{"error": {"field": ..., "message": ...}}``: 400 malformed JSON, 404
a route or a task the run did not train, 413 a body over the limit, 422 a field of the wrong
type, an empty list or text, too many items or a text over the byte limit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr
from starlette.exceptions import HTTPException

from minbert.data.io import is_blank
from minbert.data.tasks import TASKS
from minbert.serve.batching import Batcher
from minbert.serve.settings import ServeSettings

log = logging.getLogger(__name__)

CLASS_NAMES = {
    "sst": ["very negative", "negative", "neutral", "positive", "very positive"],
    "cfimdb": ["negative", "positive"],
}
PAIR_NAMES = {"quora": ["not duplicate", "duplicate"]}
ROUTE_TASKS = {"sentiment": ("sst", "cfimdb"), "paraphrase": ("quora",), "similarity": ("sts",)}


class ServeError(Exception):
    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "message": message}}, status_code=status)


# Strings are strict (no number turned into text); a pair is a list of exactly two.
Pair = Annotated[list[StrictStr], Field(min_length=2, max_length=2)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextsRequest(Strict):
    texts: list[StrictStr]
    task: StrictStr | None = None


class PairsRequest(Strict):
    pairs: list[Pair]


class InputsRequest(Strict):
    inputs: StrictStr | list[StrictStr] | list[Pair]
    normalize: StrictBool = True
    truncate: StrictBool | None = None  # accepted as TEI clients send it; texts are always cut


class JsonBody:
    """ASGI middleware: a body over ``limit`` bytes is refused (413) before it is parsed,
    whether it announces its length or streams; a body within it is read once and handed
    on, as JSON whatever its content-type says (the API speaks JSON only, and ``curl -d``
    labels its data as a form)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        scope["headers"] = [*headers, (b"content-type", b"application/json")]  # in place:
        # the router records the matched route in this same dict, which the metrics read
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(scope, receive, send)
            more = message.get("more_body", False)
        handed = False

        async def replay():
            nonlocal handed
            if handed:
                return await receive()
            handed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        message = f"request body over the limit of {self.limit} bytes"
        await _error(413, "body", message)(scope, receive, send)


def create_app(backend, settings: ServeSettings | None = None, name: str = "") -> FastAPI:
    """The service over ``backend`` (a ``TaskPredictor``: ``Predictor`` or ``OnnxPredictor``);
    ``name`` is what /info calls the model."""
    settings = settings or ServeSettings()
    tasks = list(backend.tasks)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minbert-model")
    registry = CollectorRegistry()
    requests = Counter("minbert_requests", "HTTP requests", ["route", "status"], registry=registry)
    errors = Counter("minbert_errors", "requests answered 4xx/5xx", ["route"], registry=registry)
    latency = Histogram(
        "minbert_request_seconds",
        "request latency",
        ["route"],
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )
    batch_sizes = Histogram(
        "minbert_batch_size",
        "items per forward pass",
        ["task"],
        registry=registry,
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    )
    batchers: dict[tuple[str, str], Batcher] = {}

    def batcher(kind: str, task: str, run: Callable[[list], list]) -> Batcher:
        key = (kind, task)
        if key not in batchers:
            batchers[key] = Batcher(
                run,
                executor,
                settings.max_batch,
                settings.max_wait_ms / 1000,
                batch_sizes.labels(task=task).observe,
            )
        return batchers[key]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        for b in batchers.values():
            await b.close()
        executor.shutdown(wait=True)

    app = FastAPI(title="minbert", lifespan=lifespan, version=_version("minbert"))
    app.add_middleware(JsonBody, limit=settings.max_body_bytes)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = route.path if route is not None else "unmatched"
        requests.labels(route=path, status=str(response.status_code)).inc()
        latency.labels(route=path).observe(time.perf_counter() - started)
        if response.status_code >= 400:
            errors.labels(route=path).inc()
        return response

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError):
        return _error(exc.status, exc.field, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return _error(400, "body", f"malformed JSON: {first.get('ctx', {}).get('error', '')}")
        # the names and indices of the field; a union adds its member's type ("str", ...)
        where = [str(p) for p in first.get("loc", ()) if p != "body" and _is_name(p)]
        field = ".".join(where) or "body"
        return _error(422, field, first.get("msg", "invalid value"))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, "path", str(exc.detail))

    # -- checks ----------------------------------------------------------------------------

    def checked(items: list, field: str, width: int) -> list:
        if not items:
            raise ServeError(422, field, "empty list: give at least one item")
        if len(items) > settings.max_items:
            raise ServeError(
                422, field, f"{len(items)} items, over the limit of {settings.max_items}"
            )
        for i, item in enumerate(items):
            texts = (item,) if width == 1 else item
            for j, text in enumerate(texts):
                where = f"{field}[{i}]" + (f"[{j}]" if width == 2 else "")
                if is_blank(text):
                    raise ServeError(422, where, "empty text")
                if len(text.encode("utf-8")) > settings.max_text_bytes:
                    raise ServeError(
                        422, where, f"text over the limit of {settings.max_text_bytes} bytes"
                    )
        return [tuple(item) if width == 2 else item for item in items]

    def served(route: str) -> str:
        for task in ROUTE_TASKS[route]:
            if task in tasks:
                return task
        wanted = " or ".join(ROUTE_TASKS[route])
        raise ServeError(404, "path", f"this run did not train {wanted}; it serves {tasks}")

    def embedding_task(task: str | None) -> str:
        if task is None:
            candidates = [t for t in tasks if backend.embeds_sentences(t)]
            bi = [t for t in candidates if TASKS[t].is_pair]
            if not candidates:
                raise ServeError(404, "task", "no task of this run embeds single sentences")
            return (bi or candidates)[0]
        if task not in tasks:
            raise ServeError(404, "task", f"this run did not train {task!r}; it serves {tasks}")
        if not backend.embeds_sentences(task):
            raise ServeError(422, "task", f"{task} encodes its pairs together: no embeddings")
        return task

    async def outputs(task: str, rows: list) -> list[dict]:
        def run(items: list) -> list[dict]:
            return answers(task, backend.outputs(task, items), backend)

        return await batcher("outputs", task, run).submit(rows)

    async def embeddings(task: str, texts: list[str], normalize: bool = False) -> np.ndarray:
        def run(items: list) -> list[np.ndarray]:
            return list(backend.embed(task, items))

        vectors = np.stack(await batcher("embed", task, run).submit(texts))
        if normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    # -- routes ------------------------------------------------------------------------------

    @app.post("/v1/sentiment")
    async def sentiment(body: TextsRequest):
        task = body.task or served("sentiment")
        if task not in ROUTE_TASKS["sentiment"] or task not in tasks:
            raise ServeError(404, "task", f"no sentiment task {task!r} here; it serves {tasks}")
        return {"task": task, "results": await outputs(task, checked(body.texts, "texts", 1))}

    @app.post("/v1/paraphrase")
    async def paraphrase(body: PairsRequest):
        task = served("paraphrase")
        return {"task": task, "results": await outputs(task, checked(body.pairs, "pairs", 2))}

    @app.post("/v1/similarity")
    async def similarity(body: PairsRequest):
        task = served("similarity")
        return {"task": task, "results": await outputs(task, checked(body.pairs, "pairs", 2))}

    @app.post("/v1/embed")
    async def embed(body: TextsRequest):
        task = embedding_task(body.task)
        vectors = await embeddings(task, checked(body.texts, "texts", 1))
        return {"task": task, "dimension": vectors.shape[1], "embeddings": vectors.tolist()}

    @app.post("/embed")
    async def tei_embed(body: InputsRequest):
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        if texts and not all(isinstance(t, str) for t in texts):
            raise ServeError(422, "inputs", "/embed takes a text or a list of texts")
        vectors = await embeddings(
            embedding_task(None), checked(texts, "inputs", 1), body.normalize
        )
        return vectors.tolist()

    @app.post("/predict")
    async def tei_predict(body: InputsRequest):
        one = isinstance(body.inputs, str)
        items = [body.inputs] if one else body.inputs
        pairs = bool(items) and not isinstance(items[0], str)
        if items and any(isinstance(x, str) == pairs for x in items):
            raise ServeError(422, "inputs", "give texts or [a, b] pairs, not both")
        task = served("paraphrase" if pairs else "sentiment")
        results = await outputs(task, checked(items, "inputs", 2 if pairs else 1))
        names = PAIR_NAMES.get(task) or CLASS_NAMES[task]
        ranked = [_ranked(r, names) for r in results]
        return ranked[0] if one else ranked

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        return {
            "model": name,
            "tasks": tasks,
            "routes": {r: [t for t in ts if t in tasks] for r, ts in ROUTE_TASKS.items()},
            "embedding_tasks": [t for t in tasks if backend.embeds_sentences(t)],
            **backend_facts(backend),
            "limits": asdict(settings),
            "versions": {p: _version(p) for p in ("minbert", "torch", "onnxruntime", "fastapi")},
        }

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _is_name(part) -> bool:
    return isinstance(part, int) or (str(part).isidentifier() and part not in _TYPE_NAMES)


_TYPE_NAMES = {"str", "list", "tuple", "bool", "int", "float", "dict"}


def answers(task: str, predictions, backend) -> list[dict]:
    """The JSON answer of each row: class, name and probabilities; probability and decision
    at the calibrated threshold; or the score."""
    spec = TASKS[task]
    values, outputs = predictions.values, np.asarray(predictions.outputs, dtype=np.float64)
    if spec.label_kind == "class":
        probabilities = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        names = CLASS_NAMES.get(task, [str(c) for c in range(spec.num_classes)])
        return [
            {"label": int(v), "name": names[int(v)], "probabilities": [round(x, 6) for x in p]}
            for v, p in zip(values, probabilities.tolist(), strict=True)
        ]
    if spec.label_kind == "binary":
        threshold = backend.threshold(task)
        probability = 1 / (1 + np.exp(-(outputs + threshold)))  # outputs: logit less threshold
        return [
            {"probability": round(float(p), 6), "duplicate": bool(v)}
            for v, p in zip(values, probability, strict=True)
        ]
    return [{"score": round(float(v), 6)} for v in values]


def _ranked(result: dict, names: list[str]) -> list[dict]:
    """TEI's /predict answer: every label with its score, the most likely first."""
    if "probabilities" in result:
        scores = result["probabilities"]
    else:
        scores = [1 - result["probability"], result["probability"]]
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return [{"label": names[i], "score": scores[i]} for i in order]


def backend_facts(backend) -> dict:
    return {
        "backend": backend.backend,
        "base_model": backend.config.model.name,
        "max_length": backend.config.data.max_length,
        "parameters": backend.parameters,
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
