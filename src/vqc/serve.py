"""`vqc serve`: an HTTP inspection service (FastAPI) and a web page for operators.

One model instance per process; inference calls are serialised by a lock (the Detector is not
re-entrant on one device), decoding and encoding happen outside it. Bad uploads are answered
4xx with a one-line reason and never reach the model.
"""
from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from . import __version__
from .data import decode_image
from .errors import VqcError
from .model import load
from .viz import overlay


def _png_base64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Inspector:
    """The model behind the service: decode, score under a lock, describe the result."""

    def __init__(self, model_path: str | Path, engine: str = "auto", threads: int | None = None,
                 precision: str = "fp32", compile: bool = False):
        self.path = Path(model_path)
        self.model = load(self.path).use_engine(engine, threads=threads, precision=precision, compile=compile)
        self.engine = self.model.engine_name
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self.name, self.version = self.path.stem, digest[:12]
        self.lock = threading.Lock()

    def describe(self) -> dict:
        m = self.model
        floor, top = m.normal_range()
        return {"name": self.name, "version": self.version, "vqc_version": __version__, "engine": self.engine,
                "backbone": m.config.backbone, "layers": list(m.config.layers), "head": m.config.head,
                "image_size": m.config.image_size, "threshold": m.threshold,
                "score_normalisation": {"floor": floor, "top": top, "formula": "(score - floor) / (top - floor)"},
                "weights_source": m.info["weights_source"], "n_train": m.info["n_train"],
                "validation": m.info.get("evaluation")}

    def inspect(self, images: list[tuple[str, bytes]], heatmap: bool) -> list[dict]:
        decoded = [decode_image(data, name) for name, data in images]  # VqcError -> 422 before the lock
        start = time.perf_counter()
        with self.lock:
            predictions = self.model.predict(decoded)
        latency = (time.perf_counter() - start) * 1000 / len(images)
        threshold = self.model.threshold
        results = []
        for (name, data), image, pred in zip(images, decoded, predictions):
            result = {"filename": name, "score": pred.score, "normalised_score": pred.normalised_score,
                      "verdict": pred.verdict, "threshold": threshold["value"] if threshold else None,
                      "normalised_threshold": self.model.normalise(threshold["value"]) if threshold else None,
                      "policy": threshold["policy"] if threshold else None, "model": self.name,
                      "model_version": self.version, "width": image.shape[1], "height": image.shape[0],
                      "latency_ms": round(latency, 2), "sha256": hashlib.sha256(data).hexdigest()}
            if heatmap:
                result["heatmap_png"] = _png_base64(overlay(image, pred.anomaly_map, *self.model.normal_range()))
            results.append(result)
        return results


async def _read_limited(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything larger than `limit` bytes, even without Content-Length."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"upload of {int(declared)} bytes is over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"upload is over the limit of {limit} bytes")
    return bytes(body)


async def _uploads(request: Request, limit: int) -> list[tuple[str, bytes]]:
    """Images from multipart form files, or the raw body as one image."""
    body = await _read_limited(request, limit)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        if not body:
            raise HTTPException(400, "empty body: send an image as the body or as multipart field 'file'")
        return [(request.query_params.get("filename", "upload"), body)]
    from starlette.datastructures import Headers, UploadFile
    from starlette.formparsers import MultiPartParser

    async def replay():
        yield body
    form = await MultiPartParser(Headers(scope=request.scope), replay(), max_part_size=limit).parse()
    uploads = [(v.filename or k, await v.read()) for k, v in form.multi_items() if isinstance(v, UploadFile)]
    if not uploads:
        raise HTTPException(400, "no file in the form: send the image in a multipart field named 'file'")
    return uploads


def create_app(model_path: str | Path, engine: str = "auto", max_upload_mb: float = 20,
               max_batch: int = 32, threads: int | None = None, precision: str = "fp32",
               compile: bool = False) -> FastAPI:
    inspector = Inspector(model_path, engine, threads, precision, compile)
    limit = int(max_upload_mb * 2**20)
    app = FastAPI(title="vqc inspection service", version=__version__,
                  description="Score images of parts against a detector fitted on good parts.")
    app.state.inspector = inspector

    @app.exception_handler(VqcError)
    async def bad_image(request: Request, exc: VqcError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": inspector.name, "model_version": inspector.version}

    @app.get("/v1/model")
    def model_info() -> dict:
        return inspector.describe()

    @app.post("/v1/inspect", summary="Inspect one image (raw body or multipart field 'file')")
    async def inspect(request: Request, heatmap: bool = False) -> dict:
        uploads = await _uploads(request, limit)
        if len(uploads) != 1:
            raise HTTPException(400, f"send one image here ({len(uploads)} given); use /v1/inspect/batch for several")
        return await _run(inspector, uploads, heatmap, single=True)

    @app.post("/v1/inspect/batch", summary="Inspect several images (multipart, one field per image)")
    async def inspect_batch(request: Request, heatmap: bool = False) -> dict:
        uploads = await _uploads(request, limit * max_batch)
        if len(uploads) > max_batch:
            raise HTTPException(413, f"{len(uploads)} images is over the batch limit of {max_batch}")
        return await _run(inspector, uploads, heatmap, single=False)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (files("vqc") / "static" / "operator.html").read_text()

    return app


async def _run(inspector: Inspector, uploads, heatmap: bool, single: bool) -> dict:
    from starlette.concurrency import run_in_threadpool
    results = await run_in_threadpool(inspector.inspect, uploads, heatmap)
    return results[0] if single else {"results": results}


def serve(model_path: str, host: str = "127.0.0.1", port: int = 8000, engine: str = "auto",
          max_upload_mb: float = 20, threads: int | None = None, precision: str = "fp32",
          compile: bool = False) -> None:
    import uvicorn
    uvicorn.run(create_app(model_path, engine, max_upload_mb, threads=threads, precision=precision,
                           compile=compile), host=host, port=port, log_level="info")
