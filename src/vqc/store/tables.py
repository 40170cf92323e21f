"""The store's tables, in the records database (migration 0002). Changing one needs a new migration."""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..records import Base, RowId, UTCDateTime

VERSION = sa.String(12)  # a model version is the first 12 hex digits of its file's SHA-256 (records.ModelIdentity)


class ModelVersion(Base):
    """One model file in the store, with where it came from and the evidence it was judged on."""
    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(VERSION, primary_key=True)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(255))
    kind: Mapped[str] = mapped_column(sa.String(16))  # "file" (training model) or "bundle" (line bundle)
    path: Mapped[str] = mapped_column(sa.String(255))  # relative to the store's folder
    parent: Mapped[str | None] = mapped_column(VERSION)
    fit_manifest: Mapped[list] = mapped_column(sa.JSON)  # [{"name", "sha256"}] of the images it was fitted on
    options: Mapped[dict] = mapped_column(sa.JSON)  # the model's config
    evidence: Mapped[dict] = mapped_column(sa.JSON)  # threshold, validation, normal scores, what an update added
    added_at: Mapped[datetime] = mapped_column(UTCDateTime)
    added_by: Mapped[str] = mapped_column(sa.String(100))
    note: Mapped[str | None] = mapped_column(sa.String(500))


class Deployment(Base):
    """One change of what a service or station runs: the newest row per target and slot is in force."""
    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    target: Mapped[str] = mapped_column(sa.String(100), index=True)  # a service's or a station's name
    slot: Mapped[str] = mapped_column(sa.String(8))  # "live" judges; "shadow" scores beside it, not acted on
    version: Mapped[str | None] = mapped_column(VERSION)  # None: the shadow slot emptied
    action: Mapped[str] = mapped_column(sa.String(16))  # promote, rollback, shadow
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    by: Mapped[str] = mapped_column(sa.String(100))


class AuditEntry(Base):
    """One admin action: who, when, what, on which target and version."""
    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(sa.String(100))
    action: Mapped[str] = mapped_column(sa.String(32))
    target: Mapped[str | None] = mapped_column(sa.String(100))
    version: Mapped[str | None] = mapped_column(VERSION)
    detail: Mapped[dict] = mapped_column(sa.JSON)


class Review(Base):
    """An operator's judgement of one inspection; the newest review of an inspection counts."""
    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    inspection_id: Mapped[int] = mapped_column(RowId, sa.ForeignKey("inspections.id"), index=True)
    label: Mapped[str] = mapped_column(sa.String(16))  # "good" or "defective"
    defect_type: Mapped[str | None] = mapped_column(sa.String(100))
    note: Mapped[str | None] = mapped_column(sa.String(500))
    reviewer: Mapped[str] = mapped_column(sa.String(100))
    reviewed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ShadowScore(Base):
    """A candidate's score of a live inspection: recorded beside the live verdict, never acted on."""
    __tablename__ = "shadow_scores"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    inspection_id: Mapped[int] = mapped_column(RowId, sa.ForeignKey("inspections.id"), index=True)
    model_version: Mapped[str] = mapped_column(VERSION, index=True)
    score: Mapped[float] = mapped_column(sa.Double)
    verdict: Mapped[str | None] = mapped_column(sa.String(16))
    threshold: Mapped[float | None] = mapped_column(sa.Double)
    scored_at: Mapped[datetime] = mapped_column(UTCDateTime)
