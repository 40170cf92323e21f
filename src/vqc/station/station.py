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
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from ..errors import VqcError, first_line
from ..inspection import Inspected, NotRecorded
from ..live import Judge, LiveModels
from ..result import InspectionResult, Part
from ..threshold import Verdict
from .config import StationConfig
from .delivery import Outbox
from .sources import CameraLost, Source

log = logging.getLogger(__name__)
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

    def take(self, part_id: str | None, triggered: float) -> InspectionResult | None:
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
        part = Part(f"{self.name}-{frame.name}", frame.encoded(), frame.image.shape, self.name, part_id,
                    datetime.now(timezone.utc))
        try:  # one version judges the part, start to end; its shadow scores it later, in a thread of its own
            judged = self.models.inspect([frame.image], [part], self.record_shadow, frame.captured)
        except NotRecorded as exc:
            return self._answer_error(part_id, triggered, str(exc))
        result = self._answer(judged.results[0], triggered)
        self.state.last_item = judged.items[0]
        self.state.defective += result.verdict == Verdict.DEFECTIVE
        self._signal(result)
        if self.state.error is not None and self.state.camera_ok:
            self._set_error(None)
        return result

    def _answer(self, result: InspectionResult, triggered: float) -> InspectionResult:
        """The result numbered in this station's sequence, its latency from trigger to answer."""
        with self.lock:
            self.sequence += 1
            return replace(result, sequence=self.sequence,
                           latency_ms=round((time.perf_counter() - triggered) * 1000, 2))

    def _answer_error(self, part_id, triggered: float, reason: str) -> InspectionResult:
        self._set_error(reason)
        self.state.errors += 1
        live = self.models.live
        result = self._answer(InspectionResult.failed(reason, live.identity, live.model.threshold, self.name, part_id),
                              triggered)
        self._signal(result)
        return result

    def _signal(self, result: InspectionResult) -> None:
        payload = result.plc_payload()
        for signal in self.signals:
            try:
                signal.signal_result(self.name, payload)
            except Exception as exc:  # the PLC link is not the records: say it, keep going
                log.warning("%s: result %d not signalled: %s", self.name, result.sequence, exc)
        for box in self.outboxes:
            try:
                box.put(payload)
            except RuntimeError as exc:  # full since take() looked: it is in the records
                log.warning("%s: %s", self.name, exc)
        self.state.parts += 1
        self.state.last = payload
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
