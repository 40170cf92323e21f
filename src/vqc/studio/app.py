"""The studio's web service: the page, and the API it calls (FastAPI, the service's keys and roles).

Any key sees projects, uploads images and reads results; fitting, exporting, saving a threshold,
promoting and shadowing need an admin key (403 to an operator key) and leave an audit row with
the key's name. Without a key file the studio is a one-person tool on this machine: the caller
is "local" with an admin's rights (`vqc studio` then listens on loopback only).
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Callable, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..access import ApiKeys, presented_key
from ..choices import DEFAULT_PRESET, PRESETS
from ..errors import VqcError
from ..pages import add_keys_script
from ..serve import read_uploads, same_origin
from ..serve_lifecycle import Caller
from ..threshold import Threshold
from ..version import __version__
from . import results
from .jobs import JobRunner
from .projects import Project, Projects

log = logging.getLogger(__name__)

UPLOAD_LIMIT = 200 * 2**20  # bytes in one upload request; the page sends a dropped folder 40 files at a time


class ProjectIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    target: str = Field("serve", min_length=1, max_length=100)


class FolderIn(BaseModel):
    folder: str = Field(min_length=1, max_length=1000)
    kind: Literal["good", "test"]


class FitIn(BaseModel):
    preset: str = Field(DEFAULT_PRESET, max_length=32)
    time_budget: float = Field(120, gt=0, le=3600)  # seconds, for preset auto


class PolicyIn(BaseModel):
    policy: str = Field(max_length=64)
    fp_cost: float = Field(1.0, ge=0)
    fn_cost: float = Field(10.0, ge=0)
    defect_rate: float | None = Field(None, ge=0, le=1)


class ThresholdIn(BaseModel):
    value: float
    policy: str = Field("manual", max_length=64)
    note: str | None = Field(None, max_length=200)


def create_studio_app(store, api_key_file: str | Path | None = None, poll_s: float = 0.3) -> FastAPI:
    """The studio on a model store (vqc.store.versions.ModelStore)."""
    keys = ApiKeys.from_file(api_key_file) if api_key_file else None
    projects = Projects(store.studio_folder)
    runner = JobRunner(projects, store.folder, str(store.records_url), poll_s)

    def caller(request: Request) -> Caller:
        if keys is None:
            return Caller("local", "admin")
        name = keys.check(presented_key(request.headers))
        if name is None:
            raise HTTPException(401, "missing or invalid API key: send it as 'Authorization: Bearer KEY' "
                                     "or 'X-API-Key: KEY'", headers={"WWW-Authenticate": "Bearer"})
        return Caller(name, keys.role(name))

    def admin(who: Caller = Depends(caller)) -> Caller:
        if who.role != "admin":
            raise HTTPException(403, f"fitting, exporting, thresholds and promotion need an admin key "
                                     f"({who.name} is an {who.role} key)")
        return who

    def project(name: str, who: Caller = Depends(caller)) -> Project:  # every project route asks for a key
        return projects.get(name)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        runner.close()

    app = FastAPIOffline(title="vqc studio", version=__version__, lifespan=lifespan, redoc_url=None,
                         description="Build, check and ship a detector for one product from the browser.")
    app.state.runner = runner

    @app.middleware("http")
    async def refuse_cross_site_posts(request: Request, call_next):
        if request.method not in ("GET", "HEAD", "OPTIONS") and not same_origin(request, set()):
            return JSONResponse({"detail": "cross-origin request refused: the studio takes POSTs from its own "
                                           "page and from clients that send no Origin"}, status_code=403)
        return await call_next(request)

    @app.exception_handler(VqcError)
    async def refused(request: Request, exc: VqcError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(LookupError)
    async def not_found(request: Request, exc: LookupError):
        return JSONResponse({"detail": str(exc.args[0]) if exc.args else "not found"}, status_code=404)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (files("vqc.studio") / "static" / "studio.html").read_text()

    add_keys_script(app)

    @app.get("/api/whoami")
    def whoami(who: Caller = Depends(caller)) -> dict:
        return {"name": who.name, "role": who.role}

    app.include_router(_project_routes(store, projects, runner, caller, admin, project))
    app.include_router(_version_routes(store, runner, caller, admin, project))
    return app


def _project_routes(store, projects: Projects, runner: JobRunner, caller: Callable, admin: Callable,
                    project: Callable) -> APIRouter:
    router = APIRouter(prefix="/api")

    @router.get("/projects")
    def all_projects(who: Caller = Depends(caller)) -> dict:
        return {"items": [projects.get(name).describe() for name in projects.names()]}

    @router.post("/projects")
    def new_project(body: ProjectIn, who: Caller = Depends(caller)) -> dict:
        return projects.create(body.name, body.target, who.name).describe()

    @router.get("/projects/{name}")
    def one_project(p: Project = Depends(project)) -> dict:
        target = p.settings()["target"]
        return {**p.describe(), "versions": results.project_versions(store, p),
                "deployment": store.deployment(target)}

    @router.post("/projects/{name}/images", summary="Upload images (multipart; file names carry their folders)")
    async def upload(request: Request, kind: Literal["good", "test"], p: Project = Depends(project)) -> dict:
        uploads, _ = await read_uploads(request, UPLOAD_LIMIT)  # the service's reader: 413 over the limit, 400 malformed
        return await run_in_threadpool(p.add_files, uploads, kind)

    @router.post("/projects/{name}/images/folder", summary="Take the images of a folder on the studio's machine "
                                                           "(admin)")
    async def from_folder(body: FolderIn, p: Project = Depends(project), who: Caller = Depends(admin)) -> dict:
        return await run_in_threadpool(p.add_folder, body.folder, body.kind)

    @router.get("/projects/{name}/jobs")
    def jobs(p: Project = Depends(project)) -> dict:
        return {"items": runner.jobs(p)}

    @router.post("/projects/{name}/fit", summary="Queue a fit (admin)")
    def fit(body: FitIn, p: Project = Depends(project), who: Caller = Depends(admin)) -> dict:
        if body.preset != "auto" and body.preset not in PRESETS:
            raise VqcError(f"unknown preset {body.preset!r}; choose auto or one of: {', '.join(PRESETS)}")
        return runner.submit(p, "fit", who.name, options=body.model_dump())

    @router.post("/projects/{name}/jobs/{job_id}/cancel", summary="Cancel a queued or running job (admin)")
    def cancel(job_id: str, p: Project = Depends(project), who: Caller = Depends(admin)) -> dict:
        return runner.cancel(p, job_id, who.name)

    @router.get("/audit", summary="Admin actions on the store, newest first (admin)")
    def audit(limit: int = 50, who: Caller = Depends(admin)) -> dict:
        rows = store.audit_trail(min(max(limit, 1), 500))
        return {"items": [{**row, "at": row["at"].isoformat()} for row in rows]}

    return router


def _version_routes(store, runner: JobRunner, caller: Callable, admin: Callable, project: Callable) -> APIRouter:
    router = APIRouter(prefix="/api/projects/{name}")

    def version_of(p: Project, version: str) -> str:
        row = store.get(version)
        if row["name"] != p.name:
            raise LookupError(f"version {version} is not one of project {p.name}")
        return row["version"]

    @router.get("/versions/{version}/gallery")
    def gallery(version: str, p: Project = Depends(project)) -> dict:
        return results.gallery_of(store, p, version_of(p, version))

    @router.get("/pictures/{scored_by}/{picture}", include_in_schema=False)
    def picture(scored_by: str, picture: str, p: Project = Depends(project)) -> FileResponse:
        return FileResponse(results.overlay_path(p, version_of(p, scored_by), picture), media_type="image/png")

    @router.post("/versions/{version}/policy", summary="Where a threshold policy puts the threshold (not saved)")
    def policy(version: str, body: PolicyIn, p: Project = Depends(project)) -> dict:
        shown = results.gallery_of(store, p, version_of(p, version))
        return results.policy_threshold(shown, body.policy, body.fp_cost, body.fn_cost, body.defect_rate)

    @router.post("/versions/{version}/threshold", summary="Save a threshold: a new version, its parent this (admin)")
    def threshold(version: str, body: ThresholdIn, p: Project = Depends(project), who: Caller = Depends(admin)) -> dict:
        parent = version_of(p, version)
        measured = results.rates(results.gallery_of(store, p, parent), body.value)
        chosen = Threshold(body.value, body.policy, {
            "set_by": who.name, "note": body.note, "validated_on": f"the studio's test images of {p.name}",
            "n_images": measured["n_good"] + measured["n_defective"], "false_reject_rate": measured["false_reject_rate"],
            "miss_rate": measured["miss_rate"], "previous": store.get(parent)["evidence"].get("threshold")})
        made = store.with_threshold(parent, chosen, who.name)
        store.audit(who.name, "threshold", None, made["version"], {"value": body.value, "from": parent})
        return {"version": made["version"], "parent": parent, **measured}

    @router.post("/versions/{version}/promote", summary="Make a version live on the project's target (admin)")
    def promote(version: str, p: Project = Depends(project), who: Caller = Depends(admin)) -> dict:
        target = p.settings()["target"]
        store.promote(target, version_of(p, version), who.name)
        return {"target": target, **store.deployment(target)}

    @router.post("/versions/{version}/shadow", summary="Score a version beside the live one (admin)")
    def shadow(version: str, p: Project = Depends(project), who: Caller = Depends(admin)) -> dict:
        target = p.settings()["target"]
        store.set_shadow(target, version_of(p, version), who.name)
        return {"target": target, **store.deployment(target)}

    @router.post("/versions/{version}/export", summary="Queue the export of a line bundle (admin)")
    def export(version: str, p: Project = Depends(project), who: Caller = Depends(admin)) -> dict:
        return runner.submit(p, "export", who.name, version=version_of(p, version))

    @router.get("/exports/{bundle}", summary="Download an exported line bundle (zip)")
    def download(bundle: str, p: Project = Depends(project)) -> FileResponse:
        path = p.folder / "exports" / bundle
        if not (bundle.endswith(".zip") and "/" not in bundle and path.is_file()):
            raise LookupError(f"no exported bundle {bundle} in project {p.name}")
        return FileResponse(path, media_type="application/zip", filename=f"{p.name}-{bundle}")

    @router.get("/compare", summary="Two versions side by side on the same images")
    def compare(a: str, b: str, p: Project = Depends(project)) -> dict:
        left, right = (results.gallery_of(store, p, version_of(p, v)) for v in (a, b))
        return {**results.compare(left, right), "a_scored_by": left["scored_by"], "b_scored_by": right["scored_by"]}

    return router
