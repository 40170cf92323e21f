"""One inspection, from decoded image to recorded row: the path `predict`, `--watch` and `serve` share.

An `Inspected` is one scored image with what it came as (its bytes, its decoded array): its
overlay is drawn at most once, from that array, whoever asks (the image store, the CSV's
overlay file, the service's heat map). `Recorder` commits the rows of a batch of them to the
records database before anyone is answered or a CSV row is written. `score_row` is the row
schema of the score files, CSV and Parquet alike. This module imports no torch.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import VqcError, first_line
from .records import ModelIdentity, Records, inspection_row
from .scoring import Prediction, Scorer
from .viz import prediction_overlay

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("path", "score", "normalised_score", "verdict", "warning")  # scores.csv and the Parquet parts


def score_row(path: str | Path, pred: Prediction) -> dict:
    return {"path": str(path), "score": float(pred.score), "normalised_score": float(pred.normalised_score),
            "verdict": pred.verdict, "warning": pred.warning}


@dataclass
class Inspected:
    name: str
    data: bytes  # the image as it came (hashed and, when kept, stored)
    image: np.ndarray  # decoded once, RGB
    prediction: Prediction
    latency_ms: float
    received: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    station: str | None = None
    part_id: str | None = None
    _overlay: np.ndarray | None = field(default=None, init=False, repr=False)

    def overlay(self, floor: float, top: float) -> np.ndarray:
        """The operator's picture (vqc.viz.prediction_overlay), drawn on first use only."""
        if self._overlay is None:
            self._overlay = prediction_overlay(self.image, self.prediction, floor, top)
        return self._overlay


class NotRecorded(VqcError):
    """The records database did not take an inspection (the service answers 503, predict names it)."""


def inspection_rows(identity: ModelIdentity, model: Scorer, items: list[Inspected]) -> list[dict]:
    """The records' row of each inspection (vqc.records.inspection_row), recorded or not."""
    return [inspection_row(identity, model, item.prediction, item.data, item.image.shape, item.latency_ms,
                           item.received, item.name, item.station, item.part_id) for item in items]


class Recorder:
    """Commits inspections to the records database, one transaction per batch, overlays drawn once."""

    def __init__(self, records: Records, identity: ModelIdentity, model: Scorer, overlays_later=None):
        """overlays_later: see Records.add (a station draws kept overlays after it has answered)."""
        self.records, self.identity, self.model = records, identity, model
        self.overlays_later = overlays_later

    def record(self, items: list[Inspected], rows: list[dict] | None = None) -> list[int]:
        """The rows' ids once committed; `rows`: inspection_rows(items), when the caller has them."""
        floor, top = self.model.normal_range()
        rows = rows or inspection_rows(self.identity, self.model, items)
        try:
            return self.records.add(rows, [(item.data, functools.partial(item.overlay, floor, top)) for item in items],
                                    self.overlays_later)
        except Exception as exc:  # any failure to record must be said, never passed over
            log.error("inspection not recorded: %s", first_line(exc, with_type=True))
            raise NotRecorded(f"{', '.join(item.name for item in items)} scored but not recorded in "
                              f"{self.records.url}: {first_line(exc, with_type=True)}") from None


def inspect_files(model: Scorer, paths: list[Path], on_unreadable=None, progress: bool = False):
    """Inspected files, in order, each read and decoded once (the bytes kept for the records)."""
    import time
    last = time.perf_counter()
    for pred in model.predict_iter(paths, progress=progress, on_unreadable=on_unreadable, keep_inputs=True):
        latency, last = (time.perf_counter() - last) * 1000, time.perf_counter()  # per image, as delivered
        data, image = pred.data, pred.image
        pred.data = pred.image = None  # the Inspected holds them, for as long as it is needed
        yield Inspected(pred.path.name, data, image, pred, latency)
