"""One judged part, `InspectionResult`, and every shape it is sent in. Torch-free.

Whoever judged the part (the service, a station, `vqc predict`), the result is made once, by
`InspectionResult.of`, and each output is made from it: the score file's row (`csv_row`), the
records database's row (`record_row`), the service's answer (`http_answer`) and the payload a
PLC, an MQTT broker or a webhook receives (`plc_payload`). So the four agree on the verdict, the
score and the threshold by construction. A part that could not be judged (camera lost, not
recorded) is a result too: verdict ERROR, no score, the reason in `error`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from .records import ModelIdentity
from .threshold import Threshold, Verdict
from .version import __version__

SCORE_COLUMNS = ("path", "score", "normalised_score", "verdict", "warning")  # scores.csv and the Parquet parts


@dataclass(frozen=True)
class Part:
    """What came in: the file's name or path, its bytes, the image's shape, where and when."""
    name: str | None = None
    data: bytes = b""
    shape: tuple[int, ...] = (0, 0)
    station: str | None = None
    part_id: str | None = None
    received: datetime | None = None


@dataclass(frozen=True)
class InspectionResult:
    verdict: Verdict | None  # None: the model has no threshold
    score: float | None
    normalised_score: float | None
    threshold: Threshold | None
    normalised_threshold: float | None
    model: ModelIdentity | None
    inspected_at: datetime
    name: str | None = None  # the file's name (the service, a station's frame) or path (predict)
    station: str | None = None
    part_id: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    size_bytes: int | None = None
    latency_ms: float | None = None
    warning: str | None = None
    inspection_id: int | None = None  # once recorded
    sequence: int | None = None  # a station's count of its answers
    error: str | None = None  # why a part got no verdict (verdict ERROR)

    @classmethod
    def of(cls, prediction, model, identity: ModelIdentity | None, part: Part, latency_ms: float | None = None
           ) -> "InspectionResult":
        """The result of `prediction` (vqc.scoring.Prediction) by `model` (a Scorer) for `part`."""
        threshold = model.threshold
        return cls(prediction.verdict, float(prediction.score), float(prediction.normalised_score), threshold,
                   float(model.normalise(threshold.value)) if threshold else None, identity,
                   part.received or datetime.now(timezone.utc), part.name, part.station, part.part_id,
                   hashlib.sha256(part.data).hexdigest(), int(part.shape[1]), int(part.shape[0]), len(part.data),
                   None if latency_ms is None else round(float(latency_ms), 3), prediction.warning)

    @classmethod
    def failed(cls, reason: str, model: ModelIdentity | None, threshold: Threshold | None,
               station: str | None = None, part_id: str | None = None) -> "InspectionResult":
        """A part that got no verdict, and why."""
        return cls(Verdict.ERROR, None, None, threshold, None, model, datetime.now(timezone.utc),
                   station=station, part_id=part_id, error=reason)

    def recorded(self, inspection_id: int | None) -> "InspectionResult":
        return replace(self, inspection_id=inspection_id)

    # ------------------------------------------------------------ its shapes

    @property
    def verdict_text(self) -> str | None:
        return None if self.verdict is None else self.verdict.value

    def csv_row(self, path: str | None = None) -> dict:
        """A row of scores.csv (SCORE_COLUMNS); `path`: the file's path, where `name` is its name."""
        return {"path": path or self.name, "score": self.score, "normalised_score": self.normalised_score,
                "verdict": self.verdict_text, "warning": self.warning}

    def record_row(self) -> dict:
        """The records database's columns (vqc.records.Inspection), all but the id and the kept images."""
        t, m = self.threshold, self.model
        return {"inspected_at": self.inspected_at, "station": self.station, "part_id": self.part_id,
                "filename": self.name, "sha256": self.sha256, "width": self.width, "height": self.height,
                "size_bytes": self.size_bytes, "score": self.score, "normalised_score": self.normalised_score,
                "verdict": self.verdict_text, "threshold": t.value if t else None, "policy": t.policy if t else None,
                "model_name": m.name, "model_version": m.version, "model_sha256": m.sha256,
                "vqc_version": __version__, "engine": m.engine, "latency_ms": self.latency_ms}

    def http_answer(self) -> dict:
        """The service's answer for this part (without the heat map, which the service adds on request)."""
        t, m = self.threshold, self.model
        return {"id": self.inspection_id, "inspected_at": self.inspected_at.isoformat(), "filename": self.name,
                "station": self.station, "part_id": self.part_id, "score": self.score,
                "normalised_score": self.normalised_score, "verdict": self.verdict_text,
                "threshold": t.value if t else None, "normalised_threshold": self.normalised_threshold,
                "policy": t.policy if t else None, "model": m.name, "model_version": m.version,
                "engine": m.engine, "width": self.width, "height": self.height, "size_bytes": self.size_bytes,
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 2),
                "sha256": self.sha256, "warning": self.warning}

    def plc_payload(self) -> dict:
        """What a station sends its PLC, its MQTT broker and its webhooks: result OK, NG or ERROR."""
        t, m = self.threshold, self.model
        payload = {"station": self.station, "sequence": self.sequence, "part_id": self.part_id,
                   "result": (self.verdict or Verdict.ERROR).plc, "score": self.score,
                   "threshold": t.value if t else None, "policy": t.policy if t else None,
                   "model": m.name if m else None, "model_version": m.version if m else None,
                   "model_sha256": m.sha256 if m else None, "inspection_id": self.inspection_id,
                   "inspected_at": self.inspected_at.isoformat(), "latency_ms": self.latency_ms}
        if self.error is not None:
            payload["error"] = self.error
        return payload
