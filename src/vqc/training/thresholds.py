"""Threshold policies: when is a score a reject? Chosen on validation data, stored in the model."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data import labelled_samples
from ..errors import VqcError
from ..threshold import Threshold
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


def is_policy(text: str) -> bool:
    """Whether vqc chooses thresholds by this policy (not one set by hand, such as "manual")."""
    try:
        parse_policy(text)
    except VqcError:
        return False
    return True


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


LINE_DEFECT_SHARE = 0.2  # above this a labelled set is a collection of defects, not a line's output
HIGH_REJECT = 0.5  # a threshold rejecting more of the good parts than this throws the line's output away


def cost_defect_rate(data, labels, defect_rate: float | None) -> float:
    """The defect rate the cost policy weighs errors by: the given one, else the data's own share.
    That share is refused when far above a line's: a test split (78 % defective on a tire set)
    would make every escape look likely and the threshold reject most good parts."""
    if defect_rate is not None:
        if not 0 <= defect_rate <= 1:
            raise VqcError(f"--defect-rate is a share of parts between 0 and 1 (got {defect_rate:g})")
        return defect_rate
    share = float(np.mean(labels))
    if share > LINE_DEFECT_SHARE:
        raise VqcError(f"policy cost on {data}: {share:.0%} of its images are defective, far more than a line's; "
                       "pass --defect-rate R, your line's share of defective parts (e.g. 0.01)")
    return share


def data_labels(data) -> np.ndarray:
    return np.array([s.label for s in labelled_samples(data)])


def choose_threshold(model, policy: str, data: str | Path | None = None, fp_cost: float = 1.0,
                     fn_cost: float = 10.0, defect_rate: float | None = None,
                     allow_high_reject: bool = False) -> Threshold:
    """A threshold by `policy`: f1 (best F1), cost (least expected cost of false rejects and
    escaped defects) or false-reject-rate=R (at most R of good parts rejected).

    f1 and cost need labelled `data` (its test split, or a reviewed pool from the records);
    false-reject-rate uses its good images,
    or without data the good images held out at fit time. The result carries the share of those
    good images it rejects; more than half is refused (VqcError) unless `allow_high_reject`."""
    name, rate = parse_policy(policy)
    if data is None:
        if name != "false-reject-rate":
            raise VqcError(f"policy {name} needs labelled validation data: pass --data DATA")
        good = np.asarray(model.info["normal_scores"], dtype=float)
        chosen = Threshold(false_reject_threshold(good, rate), policy,
                           {"validated_on": model.info.get("normal_scores_from", "held-out good training images"),
                            "n_images": len(good), **few_images_warning(len(good), rate)})
    else:
        chosen, good = _on_labelled(model, policy, name, rate, data, fp_cost, fn_cost, defect_rate)
    return chosen.with_details(**_false_rejects(chosen, good, allow_high_reject))


def _on_labelled(model, policy: str, name: str, rate: float | None, data, fp_cost: float, fn_cost: float,
                 defect_rate: float | None) -> tuple[Threshold, np.ndarray]:
    """The threshold chosen on labelled data (`policy` parsed into `name` and `rate`), and the
    scores of its good images."""
    samples = labelled_samples(data)
    labels = np.array([s.label for s in samples])
    if name == "false-reject-rate" and not (labels == 0).any():
        raise VqcError(f"{data} has no good images to set a false-reject rate on")
    if name != "false-reject-rate" and not 0 < labels.sum() < len(labels):
        raise VqcError(f"policy {name} needs good and defective images in {data}")
    line_rate = cost_defect_rate(data, labels, defect_rate) if name == "cost" else None  # before the slow scoring
    scores = np.array([p.score for p in model.predict_iter([s.path for s in samples], progress=True)])
    chosen = {"validated_on": str(data), "n_images": len(samples)}
    good = scores[labels == 0]
    if name == "false-reject-rate":
        return Threshold(false_reject_threshold(good, rate), policy,
                         {**chosen, **few_images_warning(len(good), rate)}), good
    if name == "f1":
        f1, value = f1_max(labels, scores)
        return Threshold(value, policy, {**chosen, "f1": round(f1, 4)}), good
    best = cost_threshold(labels, scores, fp_cost, fn_cost, defect_rate)  # None weighs by the data's share
    cost = {"fp_cost": fp_cost, "fn_cost": fn_cost, "defect_rate": round(line_rate, 4),
            "defect_rate_from": "data" if defect_rate is None else "given",
            "expected_cost_per_1000": round(best["expected_cost_per_1000"], 3),
            "miss_rate": round(best["miss_rate"], 4)}
    return Threshold(best["threshold"], policy, {**chosen, **cost}), good


def _false_rejects(chosen: Threshold, good: np.ndarray, allow_high_reject: bool) -> dict:
    """{"false_reject_rate": ...} on the good images the threshold was chosen on; refused above
    HIGH_REJECT unless allowed: on a defect-heavy set f1 and cost can pick a threshold that would
    reject most good parts on the line, and nothing else would say so."""
    if not good.size:
        return {}
    rejected = float(np.mean(good >= chosen.value))
    if rejected > HIGH_REJECT and not allow_high_reject:
        raise VqcError(f"policy {chosen.policy} on {chosen.validated_on}: its threshold {chosen.value:.6g} "
                       f"rejects {rejected:.0%} of the {good.size} good images there, so nothing was stored; choose "
                       "on data with the line's mix of parts, use --policy false-reject-rate=R to cap false "
                       "rejects, or pass --allow-high-reject if you mean it")
    allowed = {"high_reject_allowed": True} if rejected > HIGH_REJECT else {}  # stored: vqc update keeps the choice
    return {"false_reject_rate": round(rejected, 4), **allowed}
