"""Threshold policies: when is a score a reject? Chosen on validation data, stored in the model."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data import labelled_samples
from ..errors import VqcError
from .metrics import cost_threshold, f1_max, false_reject_threshold


def parse_policy(text: str) -> tuple[str, float | None]:
    name, _, value = text.partition("=")
    if name == "false-reject-rate":
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if not 0 <= rate < 1:
            raise VqcError(f"policy false-reject-rate needs a rate in [0, 1), e.g. false-reject-rate=0.01 (got {text!r})")
        return name, rate
    if name in ("f1", "cost") and not value:
        return name, None
    raise VqcError(f"unknown threshold policy {text!r}; use f1, cost or false-reject-rate=R")


def few_images_warning(n_good: int, rate: float) -> dict:
    """{"warning": ...} when n_good images cannot measure a false-reject rate of `rate`: with
    fewer than 1 / rate of them the threshold lands above the highest one and the rate on new
    good parts is not known (6 held-out images, as on the demo set, for a 1 % target)."""
    needed = max(20, math.ceil(1 / rate)) if rate > 0 else 20
    if n_good >= needed:
        return {}
    return {"warning": f"the threshold rests on {n_good} good images; a false-reject rate of {rate:g} is measured "
                       f"with about {needed} or more: set it on more good images (vqc threshold MODEL --policy "
                       f"false-reject-rate={rate:g} --data DATA), and check the rate with vqc evaluate"}


def choose_threshold(model, policy: str, data: str | Path | None = None, fp_cost: float = 1.0,
                     fn_cost: float = 10.0, defect_rate: float | None = None) -> dict:
    """A threshold by `policy`: f1 (best F1), cost (least expected cost of false rejects and
    escaped defects) or false-reject-rate=R (at most R of good parts rejected).

    f1 and cost need labelled `data` (its test split, or a reviewed pool from the records);
    false-reject-rate uses its good images,
    or without data the good images held out at fit time."""
    name, rate = parse_policy(policy)
    if data is None:
        if name != "false-reject-rate":
            raise VqcError(f"policy {name} needs labelled validation data: pass --data DATA")
        scores = model.info["normal_scores"]
        chosen = {"policy": policy, "value": false_reject_threshold(scores, rate),
                  "validated_on": model.info.get("normal_scores_from", "held-out good training images"),
                  "n_images": len(scores)}
        return {**chosen, **few_images_warning(len(scores), rate)}
    samples = labelled_samples(data)
    labels = np.array([s.label for s in samples])
    scores = np.array([p.score for p in model.predict_iter([s.path for s in samples], progress=True)])
    chosen = {"policy": policy, "validated_on": str(data), "n_images": len(samples)}
    if name == "false-reject-rate":
        if not (labels == 0).any():
            raise VqcError(f"{data} has no good images to set a false-reject rate on")
        return {**chosen, "value": false_reject_threshold(scores[labels == 0], rate),
                **few_images_warning(int((labels == 0).sum()), rate)}
    if not 0 < labels.sum() < len(labels):
        raise VqcError(f"policy {name} needs good and defective images in {data}")
    if name == "f1":
        f1, value = f1_max(labels, scores)
        return {**chosen, "value": value, "f1": round(f1, 4)}
    best = cost_threshold(labels, scores, fp_cost, fn_cost, defect_rate)
    return {**chosen, "value": best["threshold"], "fp_cost": fp_cost, "fn_cost": fn_cost, "defect_rate": defect_rate,
            "expected_cost_per_1000": round(best["expected_cost_per_1000"], 3),
            "false_reject_rate": round(best["false_reject_rate"], 4), "miss_rate": round(best["miss_rate"], 4)}
