"""Monitoring the service: Prometheus metrics and a drift check on the score distribution.

Drift test: two-sample Kolmogorov-Smirnov between the scores of the last N inspections and the
scores of the held-out good images stored in the model at fit time (info["normal_scores"]). KS
and not the population stability index because the reference is small (10 % of the good
training images, often 20 or so): PSI needs bins with enough reference images in each, KS needs
no bins, makes no assumption about the shape of the scores and comes with a p-value, so "how
sure" is stated rather than tuned. The alarm is p < 0.001: the check is repeated on a sliding
window, so a small alpha keeps false alarms rare. A normal share of defective parts moves few
scores and does not trip it; a line whose good parts score differently (new lighting, another
product, a dirty lens) does.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from typing import Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

from .version import __version__

ALARM_P = 0.001


class DriftMonitor:
    """Scores of the last `window` inspections against the model's validation scores."""

    def __init__(self, reference: Sequence[float], window: int = 200, min_scores: int = 20):
        if window < 2:
            raise ValueError("the drift window needs at least 2 inspections")
        self.reference = list(reference)
        self.min_scores = min(min_scores, window)
        self.recent: deque[float] = deque(maxlen=window)
        self.lock = threading.Lock()

    def add(self, scores: Sequence[float]) -> None:
        with self.lock:
            self.recent.extend(scores)

    def check(self) -> dict:
        """{"status": "ok" | "drifting", "statistic", "p_value", ...}; ok until min_scores are in."""
        with self.lock:
            recent = list(self.recent)
        result = {"test": "two-sample Kolmogorov-Smirnov, last inspections vs the model's validation scores",
                  "window": len(recent), "window_size": self.recent.maxlen, "reference": len(self.reference),
                  "alarm_p_value": ALARM_P, "statistic": None, "p_value": None, "status": "ok"}
        if len(recent) < self.min_scores or len(self.reference) < 2:
            result["note"] = f"collecting: {len(recent)} of {self.min_scores} inspections needed"
            return result
        statistic, p_value = ks_two_sample(recent, self.reference)
        result.update(statistic=round(statistic, 4), p_value=float(f"{p_value:.3g}"),
                      status="drifting" if p_value < ALARM_P else "ok")
        return result


EXACT_KS_CELLS = 4_000_000  # n1 * n2 up to which the p-value is exact (a few tenths of a second at most)


def ks_two_sample(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided two-sample Kolmogorov-Smirnov: (D, p-value), as scipy.stats.ks_2samp(a, b) computes them
    (tested against it). Here so the line runtime needs no scipy (143 MB of its 430).

    p = P(D >= d) under the null, exactly: the share of the C(n1 + n2, n1) equally likely
    merge orders whose ECDF gap stays under d, counted on the lattice by the recurrence
    u(i, j) = i / (i + j) u(i - 1, j) + j / (i + j) u(i, j - 1), which keeps every value in [0, 1]
    (no overflow). Above EXACT_KS_CELLS, Kolmogorov's limit distribution."""
    x, y = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    n1, n2 = len(x), len(y)
    both = np.concatenate([x, y])
    gap = np.searchsorted(x, both, side="right") / n1 - np.searchsorted(y, both, side="right") / n2
    d = float(np.max(np.abs(gap)))
    g = math.gcd(n1, n2)
    h = round(d * (n1 // g) * n2)  # d in lattice units of 1 / lcm(n1, n2)
    if h == 0:
        return d, 1.0
    if n1 * n2 > EXACT_KS_CELLS:
        en = n1 * n2 / (n1 + n2)
        lam = d * math.sqrt(en)
        p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
        return d, float(min(1.0, max(0.0, p)))
    limit = h * g  # inside the band: |i * n2 - j * n1| < limit
    j = np.arange(n2 + 1)
    row = (np.abs(j * n1) < limit).astype(float)
    row = np.minimum.accumulate(row)  # along the first edge a path once outside stays out
    for i in range(1, n1 + 1):
        inside = np.abs(i * n2 - j * n1) < limit
        new = np.empty(n2 + 1)
        new[0] = row[0] if inside[0] else 0.0
        up = row * (i / (i + j))  # from (i - 1, j)
        for k in range(1, n2 + 1):
            new[k] = (up[k] + new[k - 1] * (k / (i + k))) if inside[k] else 0.0
        row = new
    return d, float(min(1.0, max(0.0, 1.0 - row[n2])))


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app, so tests can make many)."""

    def __init__(self, identity):
        self.registry = registry = CollectorRegistry()
        self.inspections = Counter("vqc_inspections", "Inspections recorded, by verdict", ["verdict"],
                                   registry=registry)
        self.unrecorded = Counter("vqc_inspections_unrecorded", "Inspections answered 503 because the "
                                  "database write failed", registry=registry)
        self.model_seconds = Histogram("vqc_model_latency_seconds", "Model time per image", registry=registry,
                                       buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.request_seconds = Histogram("vqc_inspect_request_seconds", "Inspect requests end to end: upload, "
                                         "decode, queue, model, record", registry=registry,
                                         buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.scores = Histogram("vqc_normalised_score", "Normalised scores (1 = worst held-out good image)",
                                registry=registry, buckets=(.25, .5, .75, 1, 1.25, 1.5, 2, 3, 5, 10))
        self.drift_statistic = Gauge("vqc_score_drift_ks_statistic", "KS statistic, last inspections vs "
                                     "validation scores", registry=registry)
        self.drift_p = Gauge("vqc_score_drift_p_value", "KS p-value (drifting below 0.001)", registry=registry)
        self.drifting = Gauge("vqc_score_drifting", "1 when the score distribution has drifted", registry=registry)
        self.model = Info("vqc_model", "The model being served (live)", registry=registry)
        self.swaps = Counter("vqc_model_swaps", "Live or shadow model changes taken without a restart",
                             registry=registry)
        self.shadow_skipped = Counter("vqc_shadow_skipped", "Inspections the shadow model did not score "
                                      "(its queue was full)", registry=registry)
        self.show_model(identity)

    def show_model(self, identity) -> None:
        self.model.info({"name": identity.name, "version": identity.version, "sha256": identity.sha256,
                         "engine": identity.engine, "vqc_version": __version__})

    def observe(self, results: list, model_seconds: float) -> None:
        """Count judged parts (vqc.result.InspectionResult) by verdict, with their scores."""
        for result in results:
            self.inspections.labels(result.verdict_text or "none").inc()
            self.scores.observe(result.normalised_score)
            self.model_seconds.observe(model_seconds)

    def exposition(self, drift: dict) -> bytes:
        if drift["statistic"] is not None:
            self.drift_statistic.set(drift["statistic"])
            self.drift_p.set(drift["p_value"])
        self.drifting.set(drift["status"] == "drifting")
        return generate_latest(self.registry)
