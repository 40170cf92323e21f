"""Score a labelled test split and compute the metrics."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..data import labelled_samples, load_mask
from .metrics import aupro, auroc, average_precision, f1_max, pixel_auroc, pointing_hits
from .model import AnomalyModel


def evaluate(model: AnomalyModel, data: str | Path, progress: bool = True, keep_predictions: bool = False) -> dict:
    """Image AUROC / average precision / F1-max and pixel AUROC / AUPRO / pointing on the test split
    (or on a reviewed pool from the records, vqc.store.reviews.ReviewedPool).

    Pixel metrics use every good test image and every defective image that has a mask,
    at the masks' own resolution. Pointing counts the defective images whose mask holds a defect;
    n_pointing says how many.
    """
    samples = labelled_samples(data)
    labels, scores, maps, masks, map_defects, predictions = [], [], [], [], [], []
    start = time.perf_counter()
    for sample, pred in zip(samples, model.predict_iter([s.path for s in samples], progress=progress)):
        labels.append(sample.label)
        scores.append(pred.score)
        if sample.label == 0 or sample.mask is not None:
            mask = (load_mask(sample.mask, pred.anomaly_map.shape) if sample.mask is not None
                    else np.zeros(pred.anomaly_map.shape, bool))
            maps.append(pred.anomaly_map)
            masks.append(mask)
            map_defects.append(sample.defect)
        if keep_predictions:
            predictions.append((sample, pred))
    seconds = time.perf_counter() - start  # decoding, scoring and reading masks: the end-to-end rate
    labels, scores = np.array(labels), np.array(scores)
    defects = sorted({s.defect for s in samples if s.label})
    defect_pixels = {defect: sum(int(m.sum()) for m, d in zip(masks, map_defects) if d == defect) for defect in defects}
    per_defect = {}
    for defect in defects:  # each defect type against the good images, as for the whole set
        keep = np.array([s.defect in (defect, "good") for s in samples])
        pick = [i for i, d in enumerate(map_defects) if d in (defect, "good")]
        per_defect[defect] = {
            "image_auroc": auroc(labels[keep], scores[keep]), "n_images": int((labels[keep]).sum()),
            "pixel_auroc": pixel_auroc([masks[i] for i in pick], [maps[i] for i in pick]) if pick else float("nan"),
            # its share of all defect pixels: how much this type weighs in the whole set's pixel AUROC
            "pixel_share": defect_pixels[defect] / max(1, sum(defect_pixels.values())),
            **_pointing([masks[i] for i in pick], [maps[i] for i in pick]),
        }
    f1, f1_thr = f1_max(labels, scores)
    result = {
        "image_auroc": auroc(labels, scores),
        "image_ap": average_precision(labels, scores),
        "image_f1_max": f1, "f1_threshold": f1_thr,
        "pixel_auroc": pixel_auroc(masks, maps) if masks else float("nan"),
        "aupro": aupro(masks, maps) if masks else float("nan"),
        **_pointing(masks, maps),
        "n_images": len(samples),
        "n_defective": int(labels.sum()),
        "per_defect": per_defect,
        "images_per_second": len(samples) / seconds,
    }
    if model.threshold is not None:  # the stored verdict on parts the fit never saw, against its policy
        rejected = scores >= model.threshold.value
        result["at_threshold"] = {
            "threshold": model.threshold.value, "policy": model.threshold.policy,
            "false_reject_rate": float(rejected[labels == 0].mean()) if (labels == 0).any() else float("nan"),
            "miss_rate": float((~rejected[labels == 1]).mean()) if labels.any() else float("nan"),
            "n_good": int((labels == 0).sum())}
    if keep_predictions:
        result["predictions"] = predictions
    return result


def _pointing(masks, maps) -> dict:
    """Pointing and the number of images it was measured on (good images' empty masks drop out)."""
    hits = pointing_hits(masks, maps)
    return {"pointing": float(hits.mean()) if hits.size else float("nan"), "n_pointing": int(hits.size)}
