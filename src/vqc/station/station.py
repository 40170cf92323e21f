"""One station: for each part, grab a frame, score it, record it, then signal and queue the result.

A station runs in a thread of its own. A software-triggered camera waits for `trigger(part_id)`
(from the OPC UA or MQTT link); any other source is read as fast as it delivers. The order per
part is fixed: the inspection is committed to the records before any output hears of it. A part
that cannot be inspected (camera lost, not recorded, an output's queue full) is answered with
result ERROR and the reason on the Error output, and the station carries on: it reopens a lost
camera every `reconnect_s` and clears Error once a frame comes again.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..errors import VqcError, first_line
from ..inspection import Inspected, NotRecorded
from ..live import Judge, LiveModels
from .config import StationConfig
from .delivery import Outbox
from .sources import CameraLost, Source

log = logging.getLogger(__name__)
RESULTS = {"ok": "OK", "defective": "NG"}  # the model's verdicts as the PLC reads them
RATE_WINDOW = 50  # parts the shown rate is measured over


@dataclass
class StationState:
    """What the operator page and the status outputs show of a station."""
    name: str
    model: str
    camera: str
    error: str | None = None
    camera_ok: bool = False
    parts: int = 0
    defective: int = 0
    errors: int = 0
    last: dict | None = None
    last_item: Inspected | None = field(default=None, repr=False)
    finished: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RATE_WINDOW), repr=False)

    def rate_per_min(self) -> float:
        if len(self.finished) < 2 or self.finished[-1] == self.finished[0]:
            return 0.0
        return 60 * (len(self.finished) - 1) / (self.finished[-1] - self.finished[0])


class Station:
    def __init__(self, config: StationConfig, models: LiveModels, source: Source, signals: list,
                 outboxes: list[Outbox], error_signals: list = (), trigger_queue: int = 64, record_shadow=None):
        """models: the live judge (and a shadow), swapped while the station runs (vqc.live);
        signals: told each result and error at once (the OPC UA server's nodes); error_signals: told
        errors only (the PLC's nodes as its client: results reach them through an outbox, in order);
        record_shadow(rows): where a shadow's scores go."""
        self.config, self.name, self.models = config, config.name, models
        self.source, self.signals, self.outboxes = source, signals, outboxes
        self.error_signals, self.record_shadow = list(error_signals), record_shadow
        identity = models.live.identity
        self.state = StationState(self.name, f"{identity.name} {identity.version}", source.label)
        self.triggers: queue.Queue = queue.Queue(trigger_queue)
        self.sequence = 0
        self.stopping = threading.Event()
        self.lock = threading.Lock()  # the sequence: a refused trigger is answered from the link's thread
        self.thread = threading.Thread(target=self._run, name=f"station-{self.name}", daemon=True)

    # ------------------------------------------------------------ inputs

    def start(self) -> None:
        self.thread.start()

    def trigger(self, part_id: str | None = None) -> None:
        """Take a part (any thread); a trigger the station cannot queue is answered ERROR at once."""
        try:
            self.triggers.put_nowait((part_id, time.perf_counter()))
        except queue.Full:
            self._answer_error(part_id, time.perf_counter(), f"{self.triggers.maxsize} triggers waiting: "
                                                             "this one refused (parts come faster than inspected)")

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        while not self.stopping.is_set():
            if not self.state.camera_ok and not self._reopen():
                self._refuse_waiting()
                self.stopping.wait(self.config.source.reconnect_s)
                continue
            part_id, triggered = None, time.perf_counter()
            if self.source.software_triggered:
                try:
                    part_id, triggered = self.triggers.get(timeout=0.2)
                except queue.Empty:
                    continue
            try:
                self.take(part_id, triggered)
            except Exception as exc:  # a fault of this part must not end the station
                log.exception("%s: part %s failed", self.name, part_id)
                self._answer_error(part_id, triggered, first_line(exc, with_type=True))

    def _reopen(self) -> bool:
        try:
            self.source.open()
        except Exception as exc:  # CameraLost, or a camera that refuses the file's settings
            self._set_error(first_line(exc))
            return False
        self.state.camera_ok = True
        log.info("%s: %s connected", self.name, self.source.label)
        self._set_error(None)
        return True

    def _refuse_waiting(self) -> None:
        """Parts triggered while the camera is away are answered ERROR at once, not when it is back."""
        while True:
            try:
                part_id, triggered = self.triggers.get_nowait()
            except queue.Empty:
                return
            self._answer_error(part_id, triggered, self.state.error or f"{self.source.label}: not connected")

    def take(self, part_id: str | None, triggered: float) -> dict | None:
        """Inspect one part: the result sent to the outputs, or None when no part came (a quiet folder)."""
        full = next((box for box in self.outboxes if box.full()), None)
        if full is not None:
            return self._answer_error(part_id, triggered, f"{full.name}: {full.waiting()} results waiting "
                                                          "(queue full): parts refused until it delivers")
        try:
            frame = self.source.grab()
        except TimeoutError:
            return None
        except CameraLost as exc:
            self.state.camera_ok = False
            result = self._answer_error(part_id, triggered, str(exc))  # the PLC first: closing may take seconds
            self.source.close()
            return result
        except VqcError as exc:  # a file that is not an image, say: this part only
            return self._answer_error(part_id, triggered, str(exc))
        with self.models.judging() as judge:  # one version judges the part, start to end
            received = datetime.now(timezone.utc)
            prediction = judge.model.predict([frame.image])[0]
            latency = (time.perf_counter() - frame.captured) * 1000
            item = Inspected(f"{self.name}-{frame.name}", frame.encoded(), frame.image, prediction, latency, received,
                             self.name, part_id)
            inspection_id = None
            if judge.recorder is not None:
                try:
                    inspection_id = judge.recorder.record([item])[0]
                except NotRecorded as exc:
                    return self._answer_error(part_id, triggered, str(exc))
            result = self._result(part_id, RESULTS[prediction.verdict], prediction.score, triggered, inspection_id,
                                  judge)
        if self.record_shadow is not None:  # after the answer is made: the shadow never delays a part
            self.models.score_in_shadow([frame.image], [inspection_id], self.record_shadow)
        self.state.last_item = item
        self.state.defective += result["result"] == "NG"
        self._signal(result)
        if self.state.error is not None and self.state.camera_ok:
            self._set_error(None)
        return result

    def _result(self, part_id, verdict: str, score, triggered: float, inspection_id, judge: Judge | None = None) -> dict:
        judge = judge or self.models.live
        identity = judge.identity
        with self.lock:
            self.sequence += 1
            return {"station": self.name, "sequence": self.sequence, "part_id": part_id, "result": verdict,
                    "score": None if score is None else float(score),
                    "threshold": judge.model.threshold, "model": identity.name,
                    "model_version": identity.version, "model_sha256": identity.sha256,
                    "inspection_id": inspection_id, "inspected_at": datetime.now(timezone.utc).isoformat(),
                    "latency_ms": round((time.perf_counter() - triggered) * 1000, 2)}

    def _answer_error(self, part_id, triggered: float, reason: str) -> dict:
        self._set_error(reason)
        self.state.errors += 1
        result = self._result(part_id, "ERROR", None, triggered, None)
        result["error"] = reason
        self._signal(result)
        return result

    def _signal(self, result: dict) -> None:
        for signal in self.signals:
            try:
                signal.signal_result(self.name, result)
            except Exception as exc:  # the PLC link is not the records: say it, keep going
                log.warning("%s: result %d not signalled: %s", self.name, result["sequence"], exc)
        for box in self.outboxes:
            try:
                box.put(result)
            except RuntimeError as exc:  # full since take() looked: it is in the records
                log.warning("%s: %s", self.name, exc)
        self.state.parts += 1
        self.state.last = result
        self.state.finished.append(time.monotonic())

    def _set_error(self, text: str | None) -> None:
        if text == self.state.error:
            return
        self.state.error = text
        if text is not None:
            log.warning("%s: %s", self.name, text)
        for signal in [*self.signals, *self.error_signals]:
            try:
                signal.signal_error(self.name, text)
            except Exception as exc:
                log.warning("%s: error not signalled: %s", self.name, exc)

    def model_changed(self, judge: Judge) -> None:
        self.state.model = f"{judge.identity.name} {judge.identity.version}"

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.source.close()
        self.models.close()
