"""`vqc serve`: an HTTP inspection service (FastAPI) and a web page for operators.

One model instance per process; inference calls are serialised by a lock (the Detector is not
re-entrant on one device), decoding, encoding and recording happen outside it. Bad uploads are
answered 4xx with a one-line reason and never reach the model. Every inspection is committed to
the records database before it is answered; if the database refuses it, the answer is 503, never
200 (see vqc.records). API keys (vqc.access) guard everything under /v1; /health and /metrics
(vqc.monitoring) are open unless protect_monitoring is set.
"""
from __future__ import annotations

import base64
import io
import logging
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from PIL import Image

from .version import __version__
from .access import ApiKeys, presented_key
from .serve_lifecycle import Caller, lifecycle_routes
from .data import decode_image
from .engines import EngineSettings
from .inspection import NotRecorded
from .errors import VqcError
from .live import Judge, JudgeOptions, LiveModels, open_judge
from .monitoring import Metrics
from .pages import add_keys_script
from .records import Filters, Records, open_records
from .result import Part
from .threshold import stored

log = logging.getLogger(__name__)

FIELD_LIMIT = 100  # characters of a station or part id (the column's size)
FILENAME_LIMIT = 255  # characters of an upload's file name (the column's size)
SECRET_QUERY = re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token|password)=)[^&\s]*")


@dataclass
class ServeConfig:
    engine: EngineSettings = EngineSettings()
    max_upload_mb: float = 20
    max_pixels: int | None = None  # None: the model's default (vqc.data.default_max_pixels)
    max_batch: int = 32  # images in one request, and in one engine call when requests are batched
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for others; 0: no batching
    db: str | None = None  # URL or SQLite path; None: MODEL.records.sqlite beside the model; "none": no records
    image_store: str | None = None  # None: MODEL-images/ beside the model
    keep_good: float = 0.01  # share of good images kept in the image store (defective ones always are)
    api_key_file: str | None = None  # None: no keys asked (a warning says so)
    protect_monitoring: bool = False  # also ask for a key on /health and /metrics
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; none by default
    drift_window: int = 200  # inspections compared with the model's validation scores
    poll_s: float = 1.0  # with a model store: how often the target's deployment is looked at


def _png_base64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Inspector:
    """The models behind the service: decode, score on the live judge, record, describe the result.

    Without a store it serves one model file; with one (vqc.store) it serves what the store says
    is live on `target` and follows promotions and rollbacks while it runs (vqc.live)."""

    def __init__(self, model_path: str | Path | None, config: ServeConfig | None = None, store=None,
                 target: str = "serve"):
        self.config = config = config or ServeConfig()
        self.store, self.target = store, target
        if model_path is None:
            live = store.deployment(target)["live"]
            if live is None:
                raise VqcError(f"nothing is live on target {target} in the store {store.folder}: "
                               f"vqc models promote VERSION --target {target} --store {store.folder}")
            model_path = store.path_of(live)
        self.records = open_records(config.db, config.image_store, config.keep_good, store, model_path)
        self.options = JudgeOptions(config.engine, config.max_pixels, config.drift_window, config.max_batch,
                                    config.batch_wait_ms)
        first = self._open_judge(Path(model_path))
        self.metrics = Metrics(first.identity)
        self.models = LiveModels(first, self._open_judge, store, target if store else None, config.poll_s,
                                 on_swap=lambda judge: (self.metrics.swaps.inc(), self.metrics.show_model(judge.identity)))

    def _open_judge(self, path: Path, shadow: bool = False) -> Judge:
        return open_judge(path, self.options, self.records, self.store, shadow=shadow)

    @property
    def live(self) -> Judge:
        return self.models.live

    def describe(self) -> dict:
        judge = self.live
        m, identity = judge.model, judge.identity
        floor, top = m.normal_range()
        shadow = self.models.shadow
        return {"name": identity.name, "version": identity.version, "sha256": identity.sha256,
                "vqc_version": __version__, "engine": identity.engine, **m.describe(), "threshold": stored(m.threshold),
                "score_normalisation": {"floor": floor, "top": top, "formula": "(score - floor) / (top - floor)"},
                "validation": m.info.get("evaluation"), "records": self.records.url if self.records else None,
                "shadow": shadow.identity.version if shadow else None,
                "store": {"folder": str(self.store.folder), "target": self.target} if self.store else None}

    def inspect(self, images: list[tuple[str, bytes]], heatmap: bool, station: str | None = None,
                part_ids: list[str | None] | None = None) -> list[dict]:
        received = datetime.now(timezone.utc)
        max_pixels = self.live.model.max_pixels
        decoded = [decode_image(data, name, max_pixels) for name, data in images]  # VqcError -> 422 first
        parts = [Part(name, data, image.shape, station, part, received)
                 for (name, data), image, part in zip(images, decoded, part_ids or [None] * len(images))]
        try:
            judged = self.models.inspect(decoded, parts, self._record_shadow if self.records else None)
        except NotRecorded:  # any failure to record ends in 503, never in a 200
            self.metrics.unrecorded.inc(len(parts))
            raise
        self.metrics.observe(judged.results, judged.results[0].latency_ms / 1000)
        if not judged.shadow_queued:
            self.metrics.shadow_skipped.inc(len(parts))
        floor, top = judged.judge.model.normal_range()
        answers = [result.http_answer() for result in judged.results]
        if heatmap:
            for answer, item in zip(answers, judged.items):
                answer["heatmap_png"] = _png_base64(item.overlay(floor, top))
        return answers

    def _record_shadow(self, rows: list[dict]) -> None:
        from .store.shadow import add_shadow_scores
        add_shadow_scores(self.records.database, rows)

    def health(self) -> tuple[int, dict]:
        judge = self.live
        drift = judge.drift.check()
        body = {"status": drift["status"], "model": judge.identity.name, "model_version": judge.identity.version,
                "drift": drift, "database": None}
        if self.records is not None:
            try:
                self.records.ping()
                body["database"] = "ok"
            except Exception as exc:
                body.update(status="database unreachable", database=type(exc).__name__)
                return 503, body
        return 200, body


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


async def read_uploads(request: Request, limit: int) -> tuple[list[tuple[str, bytes]], dict[str, list[str]]]:
    """Images from multipart form files, or the raw body as one image; and the text fields
    (query parameters, then multipart fields). A body that is not well-formed is answered 400."""
    body = await _read_limited(request, limit)
    fields: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        fields.setdefault(key, []).append(value)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        if not body:
            raise HTTPException(400, "empty body: send an image as the body or as multipart field 'file'")
        uploads = [(request.query_params.get("filename", "upload"), body)]
    else:
        uploads = await _form_uploads(request, body, limit, fields)
    for name, _ in uploads:
        if len(name) > FILENAME_LIMIT:
            raise HTTPException(400, f"file names are at most {FILENAME_LIMIT} characters (got {len(name)})")
    return uploads, fields


async def _form_uploads(request: Request, body: bytes, limit: int, fields: dict) -> list[tuple[str, bytes]]:
    from starlette.datastructures import Headers, UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def replay():
        yield body
    try:
        form = await MultiPartParser(Headers(scope=request.scope), replay(), max_part_size=limit).parse()
    except MultiPartException as exc:  # no or wrong boundary, a broken part header, a part over the limit
        raise HTTPException(400, f"malformed multipart body: {exc.message}") from None
    uploads = [(v.filename or k, await v.read()) for k, v in form.multi_items() if isinstance(v, UploadFile)]
    for key, value in form.multi_items():
        if isinstance(value, str):
            fields.setdefault(key, []).append(value)
    if not uploads:
        raise HTTPException(400, "no file in the form: send the image in a multipart field named 'file'")
    return uploads


def _station_and_parts(fields: dict[str, list[str]], n: int) -> tuple[str | None, list[str | None]]:
    """`station` (one), `part_id` (one per image, in order; one for a single image)."""
    stations = fields.get("station", [])
    parts = fields.get("part_id", [])
    if len(stations) > 1:
        raise HTTPException(400, f"give one station per request ({len(stations)} given)")
    if parts and len(parts) != n:
        raise HTTPException(400, f"give one part_id per image: {len(parts)} part ids for {n} images")
    for value in stations + parts:
        if len(value) > FIELD_LIMIT:
            raise HTTPException(400, f"station and part_id are at most {FIELD_LIMIT} characters "
                                     f"(got {len(value)})")
    return (stations[0] if stations else None), (parts or [None] * n)


def create_app(model_path: str | Path | None, config: ServeConfig | None = None, store=None, target: str = "serve",
               **settings) -> FastAPI:
    """The service for one model file, or for what is live on `target` in a model store
    (vqc.store.versions.ModelStore); `settings` are ServeConfig fields (create_app(path, db="none"))."""
    config = config or ServeConfig(**settings)
    keys = ApiKeys.from_file(config.api_key_file) if config.api_key_file else None  # a bad file fails first
    inspector = Inspector(model_path, config, store, target)
    limit = int(config.max_upload_mb * 2**20)
    if keys is None:
        reach = "inspect and read the records" if inspector.records is not None else "inspect"
        log.warning(f"no --api-key-file: anyone who can reach this service can {reach}; "
                    "model changes need an admin key and are refused")

    def caller(request: Request) -> Caller:
        if keys is None:
            return Caller("anonymous", None)
        name = keys.check(presented_key(request.headers))
        if name is None:
            raise HTTPException(401, "missing or invalid API key: send it as 'Authorization: Bearer KEY' "
                                     "or 'X-API-Key: KEY'", headers={"WWW-Authenticate": "Bearer"})
        return Caller(name, keys.role(name))

    keyed = [Depends(caller)]
    monitoring = keyed if config.protect_monitoring else []

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        inspector.models.close()
        if inspector.records is not None:
            inspector.records.close()

    # Swagger UI from the package (fastapi-offline), not a CDN: /docs works on a plant network
    app = FastAPIOffline(title="vqc inspection service", version=__version__, lifespan=lifespan, redoc_url=None,
                         description="Score images of parts against a detector fitted on good parts, and keep the record.")
    app.state.inspector = inspector
    _guard_origins(app, config.cors_origins)

    @app.exception_handler(VqcError)
    async def bad_input(request: Request, exc: VqcError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(NotRecorded)
    async def not_recorded(request: Request, exc: NotRecorded):
        return JSONResponse({"detail": f"inspection not recorded ({exc}): the records database did not take "
                                       "it, so it is not on record; send it again"}, status_code=503)

    @app.get("/health", dependencies=monitoring,
             summary="Status, model version and drift test (open unless --protect-monitoring)")
    def health():
        status, body = inspector.health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics", dependencies=monitoring, summary="Prometheus metrics")
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST
        return Response(inspector.metrics.exposition(inspector.live.drift.check()), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model", dependencies=keyed,
             summary="The model: backbone, head, layers, threshold policy, normal range, stored metrics")
    def model_info() -> dict:
        return inspector.describe()

    _inspection_routes(app, inspector, keyed, limit, config.max_batch)
    records = _record_routes(app, inspector, keyed)
    app.include_router(lifecycle_routes(inspector, caller, records))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (files("vqc") / "static" / "operator.html").read_text()

    add_keys_script(app)

    return app


def _guard_origins(app: FastAPI, cors_origins: tuple[str, ...]) -> None:
    """POSTs from other sites refused; CORS only for the origins named."""
    allowed_origins = set(cors_origins)

    @app.middleware("http")
    async def refuse_cross_site_posts(request: Request, call_next):
        """A page on another site can make an operator's browser POST a form here (no preflight
        for form types) and, with no key configured, have it carried out. Such a request names
        its origin; one from this service's own page, curl or a PLC names this host or none."""
        if request.method not in ("GET", "HEAD", "OPTIONS") and not same_origin(request, allowed_origins):
            return JSONResponse({"detail": "cross-origin request refused: this service takes POSTs from its "
                                           "own page, from clients that send no Origin, and from --cors-origin "
                                           "origins"}, status_code=403)
        return await call_next(request)
    if cors_origins:  # off unless asked: a browser page elsewhere cannot call the API by default
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])


def _inspection_routes(app: FastAPI, inspector: Inspector, keyed: list, limit: int, max_batch: int) -> None:
    """POST /v1/inspect and /v1/inspect/batch."""
    @app.post("/v1/inspect", dependencies=keyed,
              summary="Inspect one image (raw body or multipart field 'file'); optional station, part_id")
    async def inspect(request: Request, heatmap: bool = False) -> dict:
        start = time.perf_counter()
        uploads, fields = await read_uploads(request, limit)
        if len(uploads) != 1:
            raise HTTPException(400, f"send one image here ({len(uploads)} given); use /v1/inspect/batch for several")
        return (await _run(inspector, uploads, fields, heatmap, start))[0]

    @app.post("/v1/inspect/batch", dependencies=keyed,
              summary="Inspect several images (multipart, one field per image); optional station, part_id per image")
    async def inspect_batch(request: Request, heatmap: bool = False) -> dict:
        start = time.perf_counter()
        uploads, fields = await read_uploads(request, limit * max_batch)
        if len(uploads) > max_batch:
            raise HTTPException(413, f"{len(uploads)} images is over the batch limit of {max_batch}")
        return {"results": await _run(inspector, uploads, fields, heatmap, start)}


def _record_routes(app: FastAPI, inspector: Inspector, keyed: list):
    """GET /v1/inspections, /v1/inspections/ID and /v1/stats; the records, or 404 without them."""
    def records() -> Records:
        if inspector.records is None:
            raise HTTPException(404, "this service keeps no records (started with --db none)")
        return inspector.records

    def filters(since: datetime | None = None, until: datetime | None = None, station: str | None = None,
                verdict: Literal["ok", "defective"] | None = None, min_score: float | None = None,
                max_score: float | None = None) -> Filters:
        return Filters(since, until, station, verdict, min_score, max_score)

    @app.get("/v1/inspections", dependencies=keyed,
             summary="Recorded inspections, newest first; next page: before=<next_before>")
    def inspections(where: Filters = Depends(filters), limit: int = Query(100, ge=1, le=1000),
                    before: int | None = None) -> dict:
        items = records().find(where, limit, before)
        return {"items": items, "next_before": items[-1]["id"] if len(items) == limit else None}

    @app.get("/v1/inspections/{inspection_id}", dependencies=keyed,
             summary="One recorded inspection, with its stored overlay (overlay_png) when kept")
    def inspection(inspection_id: int) -> dict:
        store = records()
        row = store.get(inspection_id)
        if row is None:
            raise HTTPException(404, f"no inspection {inspection_id} on record")
        stored = store.stored_file(row["overlay_path"])
        row["overlay_png"] = base64.b64encode(stored.read_bytes()).decode() if stored else None
        return row

    @app.get("/v1/stats", dependencies=keyed, summary="Counts and reject rate per hour or per shift")
    def stats(where: Filters = Depends(filters), by: Literal["hour", "shift"] = "hour",
              shifts: str = Query("6,14,22", description="shift start hours, local to tz"),
              tz: str = "UTC") -> dict:
        try:
            starts = [int(h) for h in shifts.split(",")]
        except ValueError:
            raise HTTPException(422, f"shifts are comma-separated hours, e.g. 6,14,22 (got {shifts!r})") from None
        return {"by": by, "tz": tz, "buckets": records().stats(where, by, starts, tz)}

    return records


def same_origin(request: Request, allowed: set[str]) -> bool:
    origin = request.headers.get("origin")
    if request.headers.get("sec-fetch-site") == "cross-site" and origin not in allowed:
        return False
    if origin is None:
        return True
    # a proxy in front may rewrite Host; a browser's cross-site form cannot set X-Forwarded-Host
    hosts = {request.headers.get("host", ""), request.headers.get("x-forwarded-host", "")} - {""}
    return origin in allowed or any(origin in (f"http://{host}", f"https://{host}") for host in hosts)


class HideSecretsInUrls(logging.Filter):
    """Access-log lines with the values of key-like query parameters (?api_key=...) blanked: keys
    belong in headers, and one sent in a URL by mistake must not end up in a log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(SECRET_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


async def _run(inspector: Inspector, uploads, fields, heatmap: bool, start: float) -> list[dict]:
    from starlette.concurrency import run_in_threadpool
    station, part_ids = _station_and_parts(fields, len(uploads))
    results = await run_in_threadpool(inspector.inspect, uploads, heatmap, station, part_ids)
    inspector.metrics.request_seconds.observe(time.perf_counter() - start)
    return results


def check_port_free(host: str, port: int) -> None:
    """A VqcError naming the address when another program listens there: said before the model
    loads and uvicorn starts, in one line."""
    import socket
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
            probe.bind((host, port))
    except OSError as exc:
        raise VqcError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (another program there? "
                       f"choose another --port or --host)") from None


def serve(model_path: str | None, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          store=None, target: str = "serve") -> None:
    import copy

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config.setdefault("filters", {})["hide_secrets"] = {"()": HideSecretsInUrls}
    log_config["handlers"]["access"]["filters"] = ["hide_secrets"]
    check_port_free(host, port)
    uvicorn.run(create_app(model_path, config, store, target), host=host, port=port, log_level="info", log_config=log_config)
