"""What the studio shows of a version: its gallery, its rates at a threshold, the policies of
`vqc threshold` on the scored images, and two versions side by side.

A version made by saving a threshold scores as its parent did: its gallery is the fitted
ancestor's, judged at its own threshold.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import VqcError
from ..threshold import Threshold, stored
from ..training.metrics import cost_threshold, false_reject_threshold
from ..training.thresholds import cost_defect_rate, parse_policy
from .projects import Project


def project_versions(store, project: Project) -> list[dict]:
    """The store's versions of a project (named by it), oldest first, in the form a page reads."""
    rows = [r for r in store.versions() if r["name"] == project.name]
    shown = []
    for r in rows:
        threshold = Threshold.of(r["evidence"].get("threshold"))
        shown.append({"version": r["version"], "kind": r["kind"], "parent": r["parent"], "note": r["note"],
                      "added_by": r["added_by"], "added_at": r["added_at"].isoformat(),
                      "threshold": threshold.value if threshold else None,
                      "policy": threshold.policy if threshold else None})
    return shown


def gallery_of(store, project: Project, version: str) -> dict:
    """The gallery of `version` (or of the fitted version it was made from), at its threshold."""
    row = store.get(version)
    threshold = Threshold.of(row["evidence"].get("threshold"))
    while row is not None:
        path = project.folder / "results" / row["version"] / "gallery.json"
        if path.is_file():
            gallery = json.loads(path.read_text())
            value = threshold.value if threshold else None
            for image in gallery["images"]:
                image["verdict"] = threshold.judge(image["score"]).value if threshold else None
            return {**gallery, "version": store.get(version)["version"], "scored_by": row["version"],
                    "threshold": stored(threshold), "rates": rates(gallery, value) if value is not None else None}
        row = store.find(row["parent"]) if row["parent"] else None
    raise LookupError(f"version {version} has no gallery in project {project.name}: it was not fitted in the studio")


def overlay_path(project: Project, scored_by: str, name: str) -> Path:
    path = project.folder / "results" / scored_by / name
    if not (name.endswith(".png") and name[:-4].isdigit() and path.is_file()):
        raise LookupError(f"no picture {name} for version {scored_by}")
    return path


def _scores(gallery: dict) -> tuple[np.ndarray, np.ndarray]:
    images = gallery["images"]
    return (np.array([i["score"] for i in images], float),
            np.array([i["label"] == "defective" for i in images], bool))


def rates(gallery: dict, value: float) -> dict:
    """False-reject rate on the good test images (on the fit's own good images where there are
    none) and miss rate on the defective ones, at threshold `value`."""
    scores, defective = _scores(gallery)
    good = scores[~defective] if (~defective).any() else np.array(gallery["normal_scores"], float)
    bad = scores[defective]
    return {"threshold": value, "false_reject_rate": float(np.mean(good >= value)) if good.size else None,
            "miss_rate": float(np.mean(bad < value)) if bad.size else None,
            "n_good": int(good.size), "n_defective": int(bad.size)}


def policy_threshold(gallery: dict, policy: str, fp_cost: float = 1.0, fn_cost: float = 10.0,
                     defect_rate: float | None = None) -> dict:
    """A threshold by a policy of `vqc threshold`, chosen on the gallery's scored images."""
    name, rate = parse_policy(policy)
    scores, defective = _scores(gallery)
    if name == "false-reject-rate":
        good = scores[~defective] if (~defective).any() else np.array(gallery["normal_scores"], float)
        value = false_reject_threshold(good, rate)
    elif not 0 < defective.sum() < len(defective):
        raise VqcError(f"policy {name} needs good and defective test images: upload both")
    elif name == "cost":
        cost_defect_rate("the test images", defective.astype(int), defect_rate)
        value = cost_threshold(defective.astype(int), scores, fp_cost, fn_cost, defect_rate)["threshold"]
    else:
        from ..training.metrics import f1_max
        value = f1_max(defective.astype(int), scores)[1]
    return {"policy": policy, **rates(gallery, float(value))}


def compare(a: dict, b: dict) -> dict:
    """Two galleries (of one project) side by side on the images both scored: scores, verdicts,
    agreement, false rejects on good images and defects passed, as `vqc models compare` counts them."""
    by_name = {i["name"]: i for i in b["images"]}
    rows = [{"name": i["name"], "label": i["label"], "a": _side(i), "b": _side(by_name[i["name"]])}
            for i in a["images"] if i["name"] in by_name]

    def summary(side: str) -> dict:
        good = [r for r in rows if r["label"] == "good"]
        bad = [r for r in rows if r["label"] == "defective"]
        rejects = sum(r[side]["verdict"] == "defective" for r in good)
        return {"false_rejects": rejects, "false_reject_rate": rejects / len(good) if good else None,
                "defects_passed": sum(r[side]["verdict"] == "ok" for r in bad),
                "rejected": sum(r[side]["verdict"] == "defective" for r in rows)}
    agree = sum(r["a"]["verdict"] == r["b"]["verdict"] for r in rows)
    return {"a": a["version"], "b": b["version"], "images": len(rows),
            "agreement": agree / len(rows) if rows else None, "a_side": summary("a"), "b_side": summary("b"),
            "rows": rows}


def _side(image: dict) -> dict:
    return {"score": image["score"], "verdict": image["verdict"], "overlay": image["overlay"]}
