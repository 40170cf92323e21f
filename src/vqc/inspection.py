"""One inspection, from decoded image to recorded row: the path `predict`, `--watch`, `serve` and stations share.

An `Inspected` is one scored image with what it came as (its bytes, its decoded array): its
overlay is drawn at most once, from that array, whoever asks (the image store, the CSV's
overlay file, the service's heat map), and its `result` (vqc.result.InspectionResult) is what
every output is made from. `Recorder` commits the rows of a batch of them to the records
database before anyone is answered or a CSV row is written. This module imports no torch.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import VqcError, first_line
from .records import ModelIdentity, Records
from .result import InspectionResult, Part
from .scoring import Prediction, Scorer
from .viz import prediction_overlay

log = logging.getLogger(__name__)


def score_row(path: str | Path, pred: Prediction) -> dict:
    """The scores.csv row of an image scored where nothing is recorded (on Ray's workers)."""
    return InspectionResult(pred.verdict, float(pred.score), float(pred.normalised_score), None, None, None,
                            datetime.now(timezone.utc), name=str(path), warning=pred.warning).csv_row()


@dataclass
class Inspected:
    part: Part  # what came in: its name, its bytes as they came (hashed and, when kept, stored), where, when
    image: np.ndarray  # decoded once, RGB
    prediction: Prediction
    latency_ms: float
    _overlay: np.ndarray | None = field(default=None, init=False, repr=False)

    def result(self, identity: ModelIdentity, model: Scorer) -> InspectionResult:
        return InspectionResult.of(self.prediction, model, identity, self.part, self.latency_ms)

    def overlay(self, floor: float, top: float) -> np.ndarray:
        """The operator's picture (vqc.viz.prediction_overlay), drawn on first use only."""
        if self._overlay is None:
            self._overlay = prediction_overlay(self.image, self.prediction, floor, top)
        return self._overlay


class NotRecorded(VqcError):
    """The records database did not take an inspection (the service answers 503, predict names it)."""


class Recorder:
    """Commits inspections to the records database, one transaction per batch, overlays drawn once."""

    def __init__(self, records: Records, model: Scorer, overlays_later=None):
        """overlays_later: see Records.add (a station draws kept overlays after it has answered)."""
        self.records, self.model, self.overlays_later = records, model, overlays_later

    def record(self, items: list[Inspected], results: list[InspectionResult]) -> list[int]:
        """The ids of the items' rows (their results' record_row) once committed."""
        floor, top = self.model.normal_range()
        rows = [result.record_row() for result in results]
        try:
            return self.records.add(rows, [(item.part.data, functools.partial(item.overlay, floor, top))
                                           for item in items],
                                    self.overlays_later)
        except Exception as exc:  # any failure to record must be said, never passed over
            log.error("inspection not recorded: %s", first_line(exc, with_type=True))
            raise NotRecorded(f"{', '.join(item.part.name for item in items)} scored but not recorded in "
                              f"{self.records.url}: {first_line(exc, with_type=True)}") from None


def inspect_files(model: Scorer, paths: list[Path], on_unreadable=None, progress: bool = False):
    """Inspected files, in order, each read and decoded once (the bytes kept for the records)."""
    last = time.perf_counter()
    for pred in model.predict_iter(paths, progress=progress, on_unreadable=on_unreadable, keep_inputs=True):
        latency, last = (time.perf_counter() - last) * 1000, time.perf_counter()  # per image, as delivered
        data, image = pred.data, pred.image
        pred.data = pred.image = None  # the Inspected holds them, for as long as it is needed
        yield Inspected(Part(pred.path.name, data, image.shape), image, pred, latency)
