"""The service's routes for models that change on the line: reviews, versions, promotion,
rollback, shadow, threshold and the audit trail.

Roles (vqc.access): any key inspects and reviews; model changes need an admin key, answer 403
to an operator key, and leave an audit row naming the key. Without a key file no one is an
admin: the service refuses model changes rather than let anyone who can reach it make them.
Model changes need a model store (`vqc serve --store`), where every version is kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from .errors import VqcError
from .threshold import Threshold, stored


@dataclass(frozen=True)
class Caller:
    name: str  # the API key's name; "anonymous" where the service asks for no key
    role: str | None  # operator or admin; None without a key file


class ReviewIn(BaseModel):
    label: Literal["good", "defective"]
    defect_type: str | None = Field(None, max_length=100)
    note: str | None = Field(None, max_length=500)


class PromoteIn(BaseModel):
    version: str = Field(min_length=4, max_length=12)
    other_product: bool = False  # allow a version of another product than the one live here


class ShadowIn(BaseModel):
    version: str | None = Field(None, min_length=4, max_length=12)


class ThresholdIn(BaseModel):
    value: float
    note: str | None = Field(None, max_length=200)


def lifecycle_routes(inspector, caller: Callable, records: Callable) -> APIRouter:
    router = APIRouter()

    def admin(who: Caller = Depends(caller)) -> Caller:
        if who.role != "admin":
            raise HTTPException(403, "model changes need an admin key" + (
                "" if who.role else ": this service was started without --api-key-file") +
                (f" ({who.name} is an {who.role} key)" if who.role else ""))
        return who

    def store():
        if inspector.store is None:
            raise HTTPException(409, "this service runs one model file: start it with --store DIR to promote, "
                                     "roll back, shadow and change thresholds")
        return inspector.store

    async def change(action) -> dict:
        try:
            await run_in_threadpool(action)
            await run_in_threadpool(inspector.models.refresh)  # in force before the answer
        except VqcError as exc:
            raise HTTPException(404 if "no model version" in str(exc) else 409, str(exc)) from None
        return deployment()

    def deployment() -> dict:
        live, shadow = inspector.live, inspector.models.shadow
        return {"target": inspector.target, "live": live.identity.version,
                "shadow": shadow.identity.version if shadow else None}

    @router.post("/v1/inspections/{inspection_id}/review", summary="Confirm or override a verdict (any key)")
    def review(inspection_id: int, body: ReviewIn, who: Caller = Depends(caller)) -> dict:
        from .store.reviews import add_review
        try:
            row = add_review(records().database, inspection_id, body.label, who.name, body.defect_type, body.note)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        row["reviewed_at"] = row["reviewed_at"].isoformat()
        return row

    @router.get("/v1/models", summary="The store's versions and what this service runs")
    def models(who: Caller = Depends(caller)) -> dict:
        versions = store().versions() if inspector.store is not None else []
        return {**deployment(), "versions": [
            {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items() if k != "fit_manifest"}
            for row in versions]}

    @router.post("/v1/models/promote", summary="Make a version live (admin)")
    async def promote(body: PromoteIn, who: Caller = Depends(admin)) -> dict:
        models = store()
        return await change(lambda: models.promote(inspector.target, body.version, who.name, body.other_product))

    @router.post("/v1/models/rollback", summary="Back to the version live before this one (admin)")
    async def rollback(who: Caller = Depends(admin)) -> dict:
        models = store()
        return await change(lambda: models.rollback(inspector.target, who.name))

    @router.post("/v1/models/shadow", summary="Score a candidate beside the live model (admin); null empties")
    async def shadow(body: ShadowIn, who: Caller = Depends(admin)) -> dict:
        models = store()
        return await change(lambda: models.set_shadow(inspector.target, body.version, who.name))

    @router.post("/v1/threshold", summary="Judge with another threshold: a new version, made live (admin)")
    async def threshold(body: ThresholdIn, who: Caller = Depends(admin)) -> dict:
        models = store()
        live = inspector.live.identity.version
        chosen = Threshold(body.value, "manual", {"set_by": who.name, "note": body.note, "validated_on": None,
                                                  "previous": stored(inspector.live.model.threshold)})

        def make_live():
            made = models.with_threshold(live, chosen, who.name)
            models.audit(who.name, "threshold", inspector.target, made["version"], {"value": body.value, "from": live})
            models.promote(inspector.target, made["version"], who.name)
        return await change(make_live)

    @router.get("/v1/audit", summary="Admin actions, newest first (admin)")
    def audit(limit: int = 100, who: Caller = Depends(admin)) -> dict:
        rows = store().audit_trail(min(max(limit, 1), 1000))
        return {"items": [{**row, "at": row["at"].isoformat()} for row in rows]}

    return router
