"""Operator reviews: a verdict confirmed or overridden, and the labelled pool the reviews make.

An operator (any key) says of an inspection: good or defective, the defect type, a note. The
review is stored with the reviewer's key name; the newest review of an inspection counts.
Reviewed inspections whose image is in the image store form a labelled pool that `vqc
evaluate`, `vqc threshold` and `vqc update` read like a test split.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from ..data import Sample
from ..errors import VqcError
from ..records import Inspection
from .tables import Review

LABELS = ("good", "defective")
TEXT_LIMITS = {"defect_type": 100, "note": 500}


@dataclass
class ReviewedPool:
    """Reviewed inspections as samples: label 0 good, 1 defective, defect the reviewer's type."""
    samples: list[Sample]
    rows: list[dict]  # per sample: the inspection and its review
    source: str
    unavailable: int  # reviewed, but the image was not kept (raise keep_good to keep good ones)

    def __str__(self) -> str:
        return self.source


def add_review(database: sa.Engine, inspection_id: int, label: str, reviewer: str, defect_type: str | None = None,
               note: str | None = None) -> dict:
    """Store a review; VqcError (a 4xx) for an unknown inspection, a wrong label or text over its limit."""
    if label not in LABELS:
        raise VqcError(f"a review's label is good or defective (got {label!r})")
    for field, value in (("defect_type", defect_type), ("note", note)):
        if value is not None and len(value) > TEXT_LIMITS[field]:
            raise VqcError(f"a review's {field} is at most {TEXT_LIMITS[field]} characters (got {len(value)})")
    if label == "good" and defect_type:
        raise VqcError("a review that says good names no defect type")
    row = {"inspection_id": inspection_id, "label": label, "defect_type": defect_type or None, "note": note or None,
           "reviewer": reviewer, "reviewed_at": datetime.now(timezone.utc)}
    with database.begin() as connection:
        if connection.execute(sa.select(Inspection.id).where(Inspection.id == inspection_id)).first() is None:
            raise LookupError(f"no inspection {inspection_id} on record")
        (row["id"],) = connection.execute(sa.insert(Review).returning(Review.id), [row]).one()
    return row


def latest_reviews(database: sa.Engine, inspection_ids: list[int] | None = None) -> dict[int, dict]:
    """inspection id -> its newest review."""
    newest = sa.select(sa.func.max(Review.id)).group_by(Review.inspection_id)
    query = sa.select(Review.__table__).where(Review.id.in_(newest))
    if inspection_ids is not None:
        query = query.where(Review.inspection_id.in_(inspection_ids))
    with database.connect() as connection:
        return {r.inspection_id: dict(r._mapping) for r in connection.execute(query)}


def reviewed_pool(database: sa.Engine, image_store: Path | None, source: str, label: str | None = None,
                  verdict: str | None = None) -> ReviewedPool:
    """The reviewed inspections (newest review each), oldest first, one per image: those whose image
    is in `image_store`. `label` / `verdict`: only reviews saying that, of inspections judged that."""
    newest = sa.select(sa.func.max(Review.id)).group_by(Review.inspection_id)
    query = (sa.select(Inspection.__table__, Review.label, Review.defect_type, Review.reviewer, Review.note,
                       Review.id.label("review_id"))
             .join(Review, Review.inspection_id == Inspection.id).where(Review.id.in_(newest))
             .order_by(Inspection.id))
    if label is not None:
        query = query.where(Review.label == label)
    if verdict is not None:
        query = query.where(Inspection.verdict == verdict)
    with database.connect() as connection:
        rows = [dict(r._mapping) for r in connection.execute(query)]
    samples, kept, seen, unavailable = [], [], set(), 0
    for row in rows:
        if row["sha256"] in seen:
            continue
        path = image_store / row["image_path"] if image_store is not None and row["image_path"] else None
        if path is None or not path.is_file():
            unavailable += 1
            continue
        seen.add(row["sha256"])
        defective = row["label"] == "defective"
        samples.append(Sample(path, int(defective), (row["defect_type"] or "defect") if defective else "good"))
        kept.append(row)
    return ReviewedPool(samples, kept, source, unavailable)
