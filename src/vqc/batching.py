"""Micro-batching for the service: requests that arrive within a few milliseconds share one engine call.

One worker thread owns the model. A request hands its decoded images to `Batcher.submit` and
waits; the worker takes the first waiting request, gathers the others that arrive within
`max_wait_ms` (or until `max_images` are in), scores them as one batch and gives each request
its own predictions, in its order. If the batch fails, each of its requests is scored alone, so
one bad request fails only itself. Images are decoded before they get here, so an unreadable
upload never reaches a batch. This module imports no torch.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, Sequence

import numpy as np


class Batcher:
    def __init__(self, score: Callable[[list[np.ndarray]], list], max_images: int = 32, max_wait_ms: float = 5.0):
        if max_images < 1 or max_wait_ms < 0:
            raise ValueError("a batch needs at least 1 image and a wait of 0 ms or more")
        self.score, self.max_images, self.max_wait = score, max_images, max_wait_ms / 1000
        self.jobs: queue.Queue = queue.Queue()
        self.batches = 0  # engine calls made
        self.carried = None  # a request that did not fit the last batch: it leads the next one
        self.worker = threading.Thread(target=self._work, name="vqc-batcher", daemon=True)
        self.worker.start()

    def submit(self, images: Sequence[np.ndarray]) -> list:
        """The predictions of `images` (one request's), once the batch they joined is scored."""
        future: Future = Future()
        self.jobs.put((list(images), future))
        return future.result()

    def close(self) -> None:
        self.jobs.put(None)
        self.worker.join(timeout=10)

    def _gather(self, first) -> list:
        jobs, count = [first], len(first[0])
        deadline = time.perf_counter() + self.max_wait
        while count < self.max_images:
            left = deadline - time.perf_counter()
            try:
                job = self.jobs.get(timeout=left) if left > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:  # closing: score what is here, then stop
                self.jobs.put(None)
                break
            if count + len(job[0]) > self.max_images:  # it starts the next batch, keeping the order
                self.carried = job
                break
            jobs.append(job)
            count += len(job[0])
        return jobs

    def _work(self) -> None:
        while True:
            first, self.carried = self.carried or self.jobs.get(), None
            if first is None:
                return
            jobs = self._gather(first)
            self.batches += 1
            try:
                predictions = self.score([image for images, _ in jobs for image in images])
            except Exception:  # find the request that broke it: each alone
                for images, future in jobs:
                    try:
                        future.set_result(self.score(images))
                    except Exception as exc:
                        future.set_exception(exc)
                continue
            start = 0
            for images, future in jobs:
                future.set_result(predictions[start:start + len(images)])
                start += len(images)
