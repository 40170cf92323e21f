"""The models behind a service or a station: the live one that judges and a shadow that scores
beside it, changed while requests run. This is the one core the service, the stations and
`vqc predict` judge parts with.

A `Judge` is one opened model version with what scoring it needs (its batcher, its recorder,
its drift window): `inspect` scores images, makes each part's InspectionResult, records it and
counts it for drift. `LiveModels.inspect` does that on the judge in force and queues the
shadow. `LiveModels` hands each request the judge in force when it starts, and the
request keeps it to the end, so its rows name the version that judged it. A promotion or a
rollback opens the new version first, then swaps the reference: requests under way finish on
the old judge, new ones start on the new, none waits and none fails; the old judge's batcher is
closed once its last request is done. With a store, a thread looks at the target's deployment
every `poll_s` seconds, so `vqc models promote` from another shell takes effect too.

A shadow judge scores the live requests' images after they are answered, in one thread of
its own with a bounded queue (a full queue skips and counts, it never slows the line), and its
scores go to `shadow_scores`, not to anyone's verdict. That thread opens a new shadow too, so
the requests answered while it opens (a new version's graph is exported first: tens of seconds
on a CPU) wait in the queue and are scored by it, not left out of the comparison.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .batching import Batcher
from .engines import EngineSettings
from .errors import VqcError, first_line
from .inspection import Inspected, Recorder
from .loading import open_model
from .monitoring import DriftMonitor
from .records import ModelIdentity, Records
from .result import InspectionResult, Part
from .scoring import Scorer

log = logging.getLogger(__name__)
SHADOW_QUEUE = 64  # requests waiting for the shadow model before it skips


@dataclass
class Judge:
    model: Scorer
    identity: ModelIdentity
    path: Path
    recorder: Recorder | None
    drift: DriftMonitor
    batcher: Batcher | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0
    retired: bool = False

    def predict(self, images: list[np.ndarray]) -> list:
        if self.batcher is not None:  # with other requests that arrive within batch_wait_ms
            return self.batcher.submit(images)
        with self.lock:  # the model is not re-entrant on one device
            return self.model.predict(images)

    def inspect(self, images: list[np.ndarray], parts: list[Part], captured: float | None = None
                ) -> tuple[list[Inspected], list[InspectionResult]]:
        """Score the images of `parts` and conclude: each part's Inspected and its result, recorded
        (vqc.inspection.NotRecorded when the records refuse). Latency per part: from `captured`
        (a station's frame, perf_counter) to now, else the model's time shared over the batch."""
        start = time.perf_counter()
        predictions = self.predict(images)
        now = time.perf_counter()
        latency = (now - captured) * 1000 if captured is not None else (now - start) * 1000 / len(images)
        items = [Inspected(part, image, pred, latency) for part, image, pred in zip(parts, images, predictions)]
        return items, self.conclude(items)

    def conclude(self, items: list[Inspected]) -> list[InspectionResult]:
        """The items' results, recorded (when this judge records) and counted for drift."""
        results = [item.result(self.identity, self.model) for item in items]
        if self.recorder is not None:
            ids = self.recorder.record(items, results)
            results = [result.recorded(i) for result, i in zip(results, ids)]
        self.drift.add([result.score for result in results])
        return results

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


@dataclass(frozen=True)
class JudgeOptions:
    """How a service or a station opens each model version it judges with."""
    engine: EngineSettings = EngineSettings()
    max_pixels: int | None = None  # None: the model's default (vqc.data.default_max_pixels)
    drift_window: int = 200  # inspections compared with the model's validation scores
    max_batch: int = 32  # images in one engine call when requests are batched
    batch_wait_ms: float = 0.0  # how long the first request of a batch waits for others; 0: no batching
    needs_threshold: str | None = None  # who refuses a model without a threshold (a station), if anyone


def open_judge(path: Path, options: JudgeOptions, records: Records | None = None, store=None,
               overlays_later=None, shadow: bool = False) -> Judge:
    """A Judge for the model file or line bundle at `path`. A shadow judge records nothing and
    batches nothing; a live one picks its drift window up where the records left it."""
    model = open_model(path, options.engine, options.max_pixels)
    if options.needs_threshold and model.threshold is None:
        raise VqcError(f"{options.needs_threshold}: model {path} has no threshold "
                       "(vqc threshold MODEL --data GOOD_IMAGES)")
    identity = ModelIdentity.of(path, model.engine_name)
    if store is not None and store.find(identity.version) is not None:  # records name the product, not the file
        identity = replace(identity, name=store.get(identity.version)["name"])
    live_records = records if not shadow else None
    recorder = Recorder(live_records, model, overlays_later) if live_records is not None else None
    drift = DriftMonitor(model.info["normal_scores"], options.drift_window)
    if live_records is not None:
        drift.add(live_records.recent_scores(identity.sha256, options.drift_window))
    batcher = Batcher(model.predict, options.max_batch, options.batch_wait_ms) \
        if options.batch_wait_ms > 0 and not shadow else None
    return Judge(model, identity, path, recorder, drift, batcher)


@dataclass
class Judged:
    """Parts judged by one version: what the outputs are made from."""
    judge: Judge
    items: list[Inspected]
    results: list[InspectionResult]
    shadow_queued: bool  # False: the shadow's queue was full, these parts were not scored in shadow


class LiveModels:
    def __init__(self, live: Judge, open_judge: Callable[[Path], Judge] | None = None, store=None,
                 target: str | None = None, poll_s: float = 1.0, on_swap: Callable[[Judge], None] | None = None):
        """open_judge(path): a Judge for a model path (used for later versions); store and target:
        the deployment to follow (vqc.store.versions.ModelStore)."""
        self.live, self.shadow = live, None
        self.shadow_coming = None  # the shadow's version from the moment it starts opening
        self.open_judge, self.store, self.target, self.on_swap = open_judge, store, target, on_swap
        self.lock = threading.Lock()
        self.changing = threading.Lock()  # one change at a time: the poller and an admin request
        self.shadow_pool = ThreadPoolExecutor(1, "vqc-shadow")
        self.shadow_waiting = threading.BoundedSemaphore(SHADOW_QUEUE)
        self.stopping = threading.Event()
        self.poller = None
        if store is not None:
            self.refresh()
            self.poller = threading.Thread(target=self._poll, args=(poll_s,), name="vqc-deployment", daemon=True)
            self.poller.start()

    @contextlib.contextmanager
    def judging(self):
        """The live judge for one request, held until the request is done."""
        with self.lock:
            judge = self.live
            judge.users += 1
        try:
            yield judge
        finally:
            with self.lock:
                judge.users -= 1
                done = judge.retired and judge.users == 0
            if done:
                judge.close()

    def inspect(self, images: list[np.ndarray], parts: list[Part], record_shadow: Callable[[list[dict]], None] | None,
                captured: float | None = None) -> "Judged":
        """Judge the parts on the live judge (Judge.inspect), then queue the shadow's scoring of them."""
        with self.judging() as judge:
            items, results = judge.inspect(images, parts, captured)
        queued = record_shadow is None or self.score_in_shadow(images, [r.inspection_id for r in results],
                                                               record_shadow)
        return Judged(judge, items, results, queued)

    # ------------------------------------------------------------ changes

    def refresh(self) -> bool:
        """Take the store's deployment of the target; True when something changed."""
        with self.changing:
            wanted = self.store.deployment(self.target)
            changed = False
            if wanted["live"] is not None and wanted["live"] != self.live.identity.version:
                self._swap_live(self.open_judge(self.store.path_of(wanted["live"])))
                changed = True
            shadow = self.shadow.identity.version if self.shadow else None
            if wanted["shadow"] != shadow:
                self.shadow_coming = wanted["shadow"]
                try:  # in the shadow's thread, ahead of the requests answered from now on
                    self.shadow_pool.submit(self._open_shadow, wanted["shadow"]).result()
                finally:
                    self.shadow_coming = self.shadow.identity.version if self.shadow else None
                changed = True
            return changed

    def _open_shadow(self, version: str | None) -> None:
        if version is None:
            self.shadow = None
            log.warning("%s: no shadow", self.target)
            return
        start = time.perf_counter()
        self.shadow = self.open_judge(self.store.path_of(version), shadow=True)
        log.warning("%s: shadow %s in force, opened in %.1f s (parts answered meanwhile are scored by it)",
                    self.target, version, time.perf_counter() - start)

    def _swap_live(self, judge: Judge) -> None:
        with self.lock:
            old, self.live = self.live, judge
            old.retired = True
            idle = old.users == 0
        if idle:
            old.close()
        log.warning("%s: live model %s -> %s", self.target or "service", old.identity.version, judge.identity.version)
        if self.on_swap is not None:
            self.on_swap(judge)

    def _poll(self, every: float) -> None:
        while not self.stopping.wait(every):
            try:
                self.refresh()
            except Exception as exc:  # a database away for a moment: the models in force stay
                log.warning("deployment of %s not read: %s", self.target, first_line(exc))

    # ------------------------------------------------------------ shadow

    def score_in_shadow(self, images: list[np.ndarray], inspection_ids: list[int | None],
                        record: Callable[[list[dict]], None]) -> bool:
        """Queue the shadow's scoring of a live request's images; False when skipped (queue full)."""
        if self.shadow_coming is None or not any(i is not None for i in inspection_ids):
            return True
        if not self.shadow_waiting.acquire(blocking=False):
            return False

        def run():
            shadow = self.shadow  # the one in force when their turn comes: this thread opens it
            try:
                if shadow is None:  # it did not open
                    return
                predictions = shadow.predict(images)
                threshold = shadow.model.threshold
                record([{"inspection_id": i, "model_version": shadow.identity.version, "score": float(p.score),
                         "verdict": p.verdict.value if p.verdict else None,
                         "threshold": threshold.value if threshold else None}
                        for i, p in zip(inspection_ids, predictions) if i is not None])
            except Exception as exc:  # the shadow is not the line: say it, go on
                log.warning("shadow %s did not score: %s", shadow.identity.version, exc)
            finally:
                self.shadow_waiting.release()
        self.shadow_pool.submit(run)
        return True

    def drain(self) -> None:
        """Wait for the shadow scores queued so far."""
        self.shadow_pool.submit(lambda: None).result()

    def close(self) -> None:
        self.stopping.set()
        if self.poller is not None:
            self.poller.join(5)
        self.shadow_pool.shutdown(wait=True)
        self.live.close()
