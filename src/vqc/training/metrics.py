"""Detection and localisation metrics, and threshold choice for a production line.

Image level: ``auroc``, ``average_precision``, ``f1_max`` (and its threshold), ``cost_threshold``
and ``false_reject_threshold``. Pixel level: ``pixel_auroc``, ``pro_curve`` and ``aupro`` (the
MVTec AD per-region-overlap metric), and ``pointing`` (does the map's maximum land on the defect?).
An image or pixel is called defective when its score is ``>= threshold``; pixels or images with
equal scores always switch together.

The pixel metrics are exact and memory-bounded: every pixel becomes one uint64 sort key (score
order in the high 32 bits, region id in the low 32 bits, see ``_sorted_keys``), the keys are sorted
once in place, and the curve is walked in fixed-size chunks, so the cost is about 8 bytes per pixel
instead of the several float64 and index arrays per pixel of a direct implementation.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

_CHUNK = 1 << 20  # pixels per step of the curve walk; bounds its temporaries to ~50 MB
_SHIFT = np.uint64(32)  # numpy scalars, not Python ints: numpy 1.x cannot mix uint64 with int
_ID_BITS = np.uint64(0xFFFFFFFF)


def _both_classes(labels: np.ndarray) -> bool:
    return 0 < labels.sum() < labels.size


def auroc(labels, scores) -> float:
    """Area under the ROC curve; NaN when only one class is present (it is undefined there)."""
    labels = np.asarray(labels).astype(bool).ravel()
    return float(roc_auc_score(labels, np.asarray(scores).ravel())) if _both_classes(labels) else float("nan")


def average_precision(labels, scores) -> float:
    """Area under the precision-recall curve (step-wise, as scikit-learn); NaN without defects."""
    labels = np.asarray(labels).astype(bool).ravel()
    return float(average_precision_score(labels, np.asarray(scores).ravel())) if labels.any() else float("nan")


# --------------------------------------------------------------------------- image level

def _ranked(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores, highest first, with the number of defective (tp) and good (fp) images
    scoring >= each of them."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=float).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    if not scores.size:
        raise ValueError("no scores")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(scores)[::-1]
    scores, labels = scores[order], labels[order]
    last = np.append(scores[1:] != scores[:-1], True)  # last image of each group of equal scores
    return scores[last], np.cumsum(labels)[last], np.cumsum(~labels)[last]


def f1_max(labels, scores) -> tuple[float, float]:
    """Best F1 over all thresholds, and the threshold giving it: ``(f1, threshold)``.

    Every distinct score is tried as a threshold. When several thresholds reach the same F1 the
    highest one is returned. ``(NaN, NaN)`` when there are no defective images.
    """
    thresholds, tp, fp = _ranked(labels, scores)
    n_defective = tp[-1]
    if not n_defective:
        return float("nan"), float("nan")
    f1 = 2 * tp / (tp + fp + n_defective)  # 2tp / (2tp + fp + fn), with fn = n_defective - tp
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def cost_threshold(labels, scores, fp_cost: float, fn_cost: float, defect_rate: float | None = None) -> dict:
    """The threshold minimising the expected cost per part on labelled validation data.

    Expected cost per part = ``fp_cost * P(good part rejected) + fn_cost * P(defect escapes)``.
    With ``defect_rate=None`` both probabilities are the validation counts over all parts. With a
    ``defect_rate`` (the plant's share of defective parts, 0..1) they are
    ``(1 - defect_rate) * false_reject_rate`` and ``defect_rate * miss_rate``, where the rates are
    measured among the good and among the defective validation parts respectively (so both kinds
    must be present).

    Candidates are "reject nothing" (threshold ``inf``) and every distinct score (the lowest one
    rejects everything); among equal costs the highest threshold, i.e. the fewest rejections, wins.

    Returns ``{"threshold", "expected_cost_per_1000", "false_reject_rate", "miss_rate"}``; a rate is
    NaN when the validation data has no parts of its kind.
    """
    if not (fp_cost >= 0 and fn_cost >= 0):
        raise ValueError("costs must be >= 0")
    if defect_rate is not None and not 0 <= defect_rate <= 1:
        raise ValueError("defect_rate must be between 0 and 1")
    thresholds, tp, fp = _ranked(labels, scores)
    n_defective, n_good = int(tp[-1]), int(fp[-1])
    thresholds, tp, fp = np.append(np.inf, thresholds), np.append(0, tp), np.append(0, fp)
    fn = n_defective - tp
    if defect_rate is None:
        cost = (fp_cost * fp + fn_cost * fn) / (n_good + n_defective)
    elif n_good and n_defective:
        cost = fp_cost * (1 - defect_rate) * fp / n_good + fn_cost * defect_rate * fn / n_defective
    else:
        raise ValueError("a defect_rate needs both good and defective validation parts")
    best = int(np.argmin(cost))  # the first minimum is the highest threshold
    return {
        "threshold": float(thresholds[best]),
        "expected_cost_per_1000": 1000 * float(cost[best]),
        "false_reject_rate": float(fp[best] / n_good) if n_good else float("nan"),
        "miss_rate": float(fn[best] / n_defective) if n_defective else float("nan"),
    }


def false_reject_threshold(good_scores, rate: float) -> float:
    """The smallest threshold that rejects at most a fraction ``rate`` of the given good parts.

    Thresholds are taken from the good scores themselves (plus the next float above the highest
    one, which rejects none of them), so the result is the lowest good score ``s`` with
    ``mean(good_scores >= s) <= rate``. Tie rule: parts with equal scores are rejected together, so
    when a group of tied scores straddles the rate the whole group stays accepted and the achieved
    rate is below ``rate``.
    """
    if not 0 <= rate <= 1:
        raise ValueError("rate must be between 0 and 1")
    thresholds, _, n_rejected = _ranked(np.zeros(np.size(good_scores), bool), good_scores)
    allowed = n_rejected / n_rejected[-1] <= rate  # True for a prefix: rejections grow as thresholds fall
    if not allowed[0]:
        return float(np.nextafter(thresholds[0], np.inf))
    return float(thresholds[np.count_nonzero(allowed) - 1])


# --------------------------------------------------------------------------- pixel level

def _float32_keys(amap: np.ndarray) -> np.ndarray:
    """uint32 keys that rise as the float32 scores fall (equal keys for equal scores)."""
    bits = np.add(amap, np.float32(0), dtype=np.float32).view(np.uint32)  # + 0 makes -0.0 tie with 0.0
    # Non-negative floats: the bit pattern grows with the value, so its complement (sign bit cleared)
    # falls. Negative floats (sign bit set): the pattern grows as the value falls, after all others.
    return np.where(bits >> 31, bits, ~bits & 0x7FFFFFFF)


def _score_key_function(maps: list[np.ndarray]):
    """Map anomaly maps to uint32 keys that preserve score order and ties exactly.

    Maps whose values are all float32 numbers (the model's output) use their float32 bit patterns.
    Anything finer (e.g. genuine float64 maps) is ranked among its distinct values instead: exact,
    but slower and with extra memory of up to ~24 bytes per pixel while the ranks are built.
    """
    if any(np.isnan(m).any() for m in maps):
        raise ValueError("anomaly maps contain NaN")
    if all(np.can_cast(m.dtype, np.float32) or np.array_equal(m.astype(np.float32), m) for m in maps):
        return _float32_keys
    distinct = np.unique(np.concatenate([np.unique(m) for m in maps]))
    return lambda amap: (distinct.size - 1 - np.searchsorted(distinct, amap)).astype(np.uint32)


def _sorted_keys(masks, maps, by_region: bool) -> tuple[np.ndarray, np.ndarray]:
    """One uint64 per pixel, sorted: score order in the high half (highest score first), a class
    id in the low half; and the pixel count of every id.

    With ``by_region`` the id is the pixel's ground-truth region (8-connected component of its
    mask, numbered across all images; 0 = defect-free), else 0 for good and 1 for defective pixels.
    The sort is in place, so the peak is the keys (8 bytes per pixel) plus one image's temporaries.
    """
    maps = [np.asarray(m) for m in maps]
    if len(masks) != len(maps):
        raise ValueError(f"{len(masks)} masks but {len(maps)} anomaly maps")
    score_keys = _score_key_function(maps)
    keys = np.empty(sum(m.size for m in maps), np.uint64)
    sizes = [0] if by_region else [0, 0]
    start = 0
    for mask, amap in zip(masks, maps):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != amap.shape:
            raise ValueError(f"mask shape {mask.shape} differs from anomaly map shape {amap.shape}")
        if by_region:
            # 3x3 all-ones structure = 8-connectivity, as MVTec's reference evaluation
            regions, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))
            counts = np.bincount(regions.ravel(), minlength=n + 1)
            ids = regions.astype(np.uint64)
            ids[regions > 0] += np.uint64(len(sizes) - 1)  # continue the numbering of earlier images
            sizes[0] += int(counts[0])
            sizes.extend(counts[1:].tolist())
        else:
            ids = mask.astype(np.uint64)
            n_defective = int(np.count_nonzero(mask))
            sizes[0] += mask.size - n_defective
            sizes[1] += n_defective
        stop = start + amap.size
        np.bitwise_or(score_keys(amap).ravel().astype(np.uint64) << _SHIFT, ids.ravel(), out=keys[start:stop])
        start = stop
    keys.sort()
    return keys, np.array(sizes, dtype=np.int64)


def _tie_groups(keys: np.ndarray, weights: np.ndarray):
    """Walk the sorted keys from the highest score down, a chunk at a time, and yield for each
    chunk the running totals at the last pixel of every group of equal scores:
    ``(number of id-0 pixels, sum of weights[id])``, i.e. the totals over pixels scoring >= each
    distinct score. A chunk inside one long tie group yields empty arrays."""
    n_zero, weight_sum = 0, 0.0
    for start in range(0, keys.size, _CHUNK):
        stop = min(start + _CHUNK, keys.size)
        block = keys[start:stop]
        score = block >> _SHIFT
        last = np.empty(block.size, bool)
        np.not_equal(score[1:], score[:-1], out=last[:-1])
        last[-1] = stop == keys.size or keys[stop] >> _SHIFT != score[-1]
        ids = (block & _ID_BITS).astype(np.intp)
        zeros = np.cumsum(ids == 0)
        zeros += n_zero
        weight = np.cumsum(weights[ids])
        weight += weight_sum
        n_zero, weight_sum = int(zeros[-1]), float(weight[-1])
        yield zeros[last], weight[last]


def _pro_chunks(masks, maps):
    """``(fpr, pro)`` at every distinct threshold, highest first, in chunks; None when the curve is
    undefined (no ground-truth region or no defect-free pixel)."""
    keys, sizes = _sorted_keys(masks, maps, by_region=True)
    n_good, n_regions = int(sizes[0]), sizes.size - 1
    if not n_regions or not n_good:
        return None
    # Each region pixel adds 1/region size to its region's overlap, so the running sum over all
    # pixels >= t is the sum of the regions' overlaps; defect-free pixels count towards the FPR.
    weights = np.append(0.0, 1.0 / sizes[1:])
    return ((n_fp / n_good, overlap / n_regions) for n_fp, overlap in _tie_groups(keys, weights))


def pro_curve(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve: ``(fpr, pro)`` at every distinct threshold, highest first,
    starting with ``(0, 0)`` for a threshold above every score. See ``aupro`` for the definitions.

    Meant for plots and inspection: besides ``aupro``'s memory it returns two float64 arrays with
    one entry per distinct score. Raises ValueError when there is no region or no defect-free pixel.
    """
    chunks = _pro_chunks(masks, maps)
    if chunks is None:
        raise ValueError("the PRO curve needs at least one defect region and one defect-free pixel")
    fpr, pro = zip(*chunks)
    return np.concatenate([[0.0], *fpr]), np.concatenate([[0.0], *pro])


def aupro(masks, maps, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to ``fpr_limit``, as in the
    MVTec AD evaluation.

    ``masks``: boolean ground-truth arrays, ``maps``: anomaly maps of the same shapes (any size per
    image). The regions are the 8-connected components of every mask. At threshold ``t`` a region's
    overlap is the fraction of its pixels scoring ``>= t``, PRO(t) is the mean overlap over all
    regions of all images (each region weighs the same) and FPR(t) the fraction of all defect-free
    pixels (defective images' included) scoring ``>= t``. Pixels with equal scores switch together,
    so the curve has one point per distinct score, plus ``(0, 0)``. Its trapezoidal area from FPR 0
    to exactly ``fpr_limit`` (interpolating linearly at the limit) is divided by ``fpr_limit``, so a
    perfect map scores 1. NaN when there is no region or no defect-free pixel.

    Memory: one sorted uint64 key per pixel (8 bytes/pixel) plus temporaries of one image and of
    one ~1M-pixel chunk; e.g. ~1.3 GB for 150 images of 1024x1024. Maps that are not float32 values
    cost more (see ``_score_key_function``). The walk stops once the FPR passes the limit.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError("fpr_limit must be in (0, 1]")
    chunks = _pro_chunks(masks, maps)
    if chunks is None:
        return float("nan")
    area, x0, y0 = 0.0, 0.0, 0.0  # the curve starts at (0, 0)
    for fpr, pro in chunks:
        x, y = np.append(x0, fpr), np.append(y0, pro)  # continue from the previous chunk's last point
        inside = int(np.searchsorted(x, fpr_limit, side="right"))  # points with FPR <= limit
        area += float(np.sum(np.diff(x[:inside]) * (y[1:inside] + y[:inside - 1]))) / 2
        if inside < x.size:  # this segment crosses the limit: interpolate and stop
            xa, ya, xb, yb = x[inside - 1], y[inside - 1], x[inside], y[inside]
            y_limit = ya + (yb - ya) * (fpr_limit - xa) / (xb - xa)
            area += (fpr_limit - xa) * (ya + y_limit) / 2
            break
        x0, y0 = x[-1], y[-1]
    return area / fpr_limit


def pixel_auroc(masks, maps) -> float:
    """Pixel-level ROC AUC over all images; NaN unless both defective and good pixels exist.

    Equal to ``sklearn.metrics.roc_auc_score`` on the concatenated pixels (ties: trapezoid over
    distinct thresholds), with the memory of ``aupro`` (8 bytes per pixel) and an exact integer
    area.
    """
    keys, (n_good, n_defective) = _sorted_keys(masks, maps, by_region=False)
    if not (n_good and n_defective):
        return float("nan")
    twice_area, fp0, tp0 = 0, 0, 0  # twice the area in units of (1 good pixel x 1 defective pixel)
    for fp, tp in _tie_groups(keys, np.array([0.0, 1.0])):  # integer-valued float64 sums: exact
        fp, tp = np.append(fp0, fp), np.append(tp0, tp.astype(np.int64))
        twice_area += int(np.dot(np.diff(fp), tp[1:] + tp[:-1]))
        fp0, tp0 = fp[-1], tp[-1]
    return twice_area / (2 * int(n_good) * int(n_defective))


def pointing_hits(masks, maps, dilation: float = 0.02) -> np.ndarray:
    """For every image whose mask holds a defect, in order: whether its anomaly map's maximum lies
    in the mask dilated by ``radius = max(1, ceil(dilation * max(h, w)))`` pixels, at the mask's
    resolution. The dilation is by a disk: a pixel within Euclidean distance ``radius`` of a defect
    pixel counts (the same as ``ndimage.binary_dilation`` with a disk of that radius), so a peak
    at the edge of a defect, where maps blur it, still points at it. Images with an empty mask are
    left out, so the result may be shorter than the input. Of tied maxima the first in row-major
    order counts."""
    if len(masks) != len(maps):
        raise ValueError(f"{len(masks)} masks but {len(maps)} anomaly maps")
    hits = []
    for mask, amap in zip(masks, maps):
        mask, amap = np.asarray(mask, dtype=bool), np.asarray(amap)
        if mask.shape != amap.shape:
            raise ValueError(f"mask shape {mask.shape} differs from anomaly map shape {amap.shape}")
        if np.isnan(amap).any():
            raise ValueError("anomaly maps contain NaN")
        if not mask.any():
            continue
        radius = max(1, math.ceil(dilation * max(mask.shape)))
        peak = np.array(np.unravel_index(np.argmax(amap), amap.shape))
        # distance from the peak to the nearest defect pixel: no dilated mask is ever built
        nearest = int(np.min(np.sum((np.argwhere(mask) - peak) ** 2, axis=1)))
        hits.append(nearest <= radius * radius)
    return np.array(hits, dtype=bool)


def pointing(masks, maps, dilation: float = 0.02) -> float:
    """The share of images with a defect whose anomaly-map maximum lies in their mask dilated by
    ``dilation`` of the longer side (see ``pointing_hits``); NaN when no mask holds a defect."""
    hits = pointing_hits(masks, maps, dilation)
    return float(hits.mean()) if hits.size else float("nan")
