"""`vqc update`: a new model version from what the operators confirmed.

Good parts the model rejected and an operator confirmed good (the false rejects) join the
model. knn takes them without a refit: their patches are added to the memory bank
(KnnHead.extend: the fit's share of them, farthest-first from what the bank holds). Trained
heads (nf, gmm, mdn, ae) are fitted again on the fit images, found by the hashes in the model's
fit manifest, and the confirmed ones.

The threshold is then chosen again by the model's stored policy. For knn that policy reads the
fit's leave-one-out scores, which an update leaves as they are: a larger bank only lowers
them, so they stay an upper bound, and the new images are not counted among them because they
were picked for scoring high, which would lift the threshold and cost recall nobody asked to
lose. Their own leave-one-out scores are kept in info["update"] to read.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..data import list_images, read_bytes
from ..errors import VqcError
from ..threshold import Threshold
from .model import AnomalyModel
from .thresholds import choose_threshold, is_policy, parse_policy


def image_hashes(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(read_bytes(p)).hexdigest() for p in paths]


def update_model(model: AnomalyModel, confirmed: list[Path], reviewed=None, fit_data: str | Path | None = None,
                 progress: bool = False) -> dict:
    """Add the confirmed good images to `model` in place; what was done, also kept in info["update"].
    `reviewed`: the whole reviewed pool, for an f1 or cost policy; fit_data: the fit images (trained heads)."""
    if not confirmed:
        raise VqcError("no confirmed false rejects to learn from: review rejected good parts as good first "
                       "(the page's review buttons, or POST /v1/inspections/ID/review)")
    known = {entry["sha256"] for entry in model.info.get("fit_manifest", [])}
    hashes = image_hashes(confirmed)
    new = [(p, h) for p, h in zip(confirmed, hashes) if h not in known]
    new = list({h: (p, h) for p, h in new}.values())  # the same image confirmed twice: once
    if not new:
        raise VqcError(f"the {len(confirmed)} confirmed images are in the model already")
    start = time.perf_counter()
    before = model.threshold
    if model.config.head == "knn":
        done = _extend_bank(model, [p for p, _ in new], progress)
        model.info["fit_manifest"] = model.info.get("fit_manifest", []) + [{"name": p.name, "sha256": h}
                                                                           for p, h in new]
    else:  # the new fit's manifest names them all
        done = _refit(model, [p for p, _ in new], fit_data, progress)
    model.threshold = threshold_after_update(model, before, reviewed)
    policy = model.threshold.policy
    done.update({"images_added": len(new), "image_sha256": [h for _, h in new], "seconds": round(time.perf_counter() - start, 2),
                 "threshold_before": before.value if before else None, "threshold": model.threshold.value,
                 "policy": policy, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    model.info["update"] = done
    return done


def _extend_bank(model: AnomalyModel, images: list[Path], progress: bool) -> dict:
    head = model.detector.head
    bank_before = len(head.bank)
    owners: list[int] = []
    rows, offered = head.extend(model.feature_batches(images, progress, owners=owners))
    image_of_row = torch.tensor(owners)[rows]
    scores = []
    for i, image in enumerate(images):  # each new image scored without its own new rows
        drop = torch.cat([torch.zeros(bank_before, dtype=torch.bool), image_of_row == i])
        with head.without(drop):
            scores.append(float(model.predict([image])[0].score))
    return {"method": "knn memory bank extended (no refit)", "bank_before": bank_before, "bank": len(head.bank),
            "patches_offered": offered, "added_leave_one_out_scores": [round(s, 4) for s in scores]}


def _refit(model: AnomalyModel, images: list[Path], fit_data, progress: bool) -> dict:
    manifest = {entry["sha256"] for entry in model.info.get("fit_manifest", [])}
    if fit_data is None or not manifest:
        raise VqcError(f"head {model.config.head} is fitted again on its fit images and the new ones: pass "
                       "--fit-data with the folder it was fitted on" + ("" if manifest else
                       " (this model has no fit manifest: fit it with this vqc)"))
    candidates = list_images([fit_data]) if not (Path(fit_data) / "train").is_dir() else \
        list_images([Path(fit_data) / "train"])
    found = {h: p for p, h in zip(candidates, image_hashes(candidates)) if h in manifest}
    if len(found) < len(manifest):
        raise VqcError(f"--fit-data {fit_data} holds {len(found)} of the {len(manifest)} images this model was "
                       "fitted on (matched by SHA-256): give the folder it was fitted on")
    fresh = AnomalyModel(**{**asdict(model.config), "layers": model.config.layers}, device=str(model.device))
    fresh.fit(list(found.values()) + images, progress=progress)
    model.detector, model.info = fresh.detector, {**fresh.info, "evaluation": None}
    return {"method": f"{model.config.head} fitted again on {len(found)} fit images and the new ones"}


def threshold_after_update(model: AnomalyModel, before: Threshold | None, reviewed) -> Threshold:
    """The threshold chosen again by the stored policy; one set by hand (the service's or the
    studio's threshold) is a person's decision and stays as it was."""
    if before is not None and not is_policy(before.policy):
        return before
    policy = before.policy if before else "false-reject-rate=0.01"
    return _rechoose(model, policy, reviewed, before.choice_options() if before else {})


def _rechoose(model: AnomalyModel, policy: str, reviewed, options: dict) -> Threshold:
    """The threshold by the stored policy, with the options it was chosen with (Threshold.choice_options)."""
    name, _ = parse_policy(policy)
    if name == "false-reject-rate":
        return choose_threshold(model, policy, allow_high_reject=options.get("allow_high_reject", False))
    labels = np.array([s.label for s in reviewed.samples]) if reviewed is not None else np.array([])
    if not 0 < labels.sum() < len(labels):
        raise VqcError(f"the model's policy {policy} needs labelled data: the reviewed records hold "
                       f"{int(labels.sum())} defective and {int((labels == 0).sum())} good images with their "
                       "image kept; review more, or set a false-reject-rate policy")
    return choose_threshold(model, policy, reviewed, **options)


def update_in_store(store, version: str, target: str, by: str, image_store: Path | None = None,
                    fit_data: str | Path | None = None, shadow: bool = True, progress: bool = False) -> dict:
    """`vqc update`: from `version` (a training model file in the store) and the reviews in the
    store's database, a new version, its parent `version`, put in `target`'s shadow slot."""
    import tempfile

    from ..store.reviews import reviewed_pool
    from .model import load
    row = store.get(version)
    if row["kind"] != "file":
        raise VqcError(f"version {row['version']} is a line bundle: vqc update needs the training model file it "
                       "was exported from (add that to the store)")
    image_store = image_store or store.images_folder
    source = f"reviews in {store.folder}"
    confirmed = reviewed_pool(store.database, image_store, source, label="good", verdict="defective")
    reviewed = reviewed_pool(store.database, image_store, source)
    model = load(store.path_of(row["version"]))
    done = update_model(model, [s.path for s in confirmed.samples], reviewed, fit_data, progress)
    done.update({"parent": row["version"], "reviews": [r["review_id"] for r in confirmed.rows],
                 "reviewed_without_image": confirmed.unavailable})  # the same dict as model.info["update"]
    with tempfile.TemporaryDirectory(dir=store.folder) as scratch:
        made = store.add(model.save(Path(scratch) / f"{row['name']}.safetensors"), by, parent=row["version"],
                         note=f"update: {done['images_added']} confirmed false rejects")
    store.audit(by, "update", target, made["version"], {"parent": row["version"], "images_added": done["images_added"]})
    if shadow:
        store.set_shadow(target, made["version"], by)
    return {**done, "version": made["version"], "shadow": shadow}
