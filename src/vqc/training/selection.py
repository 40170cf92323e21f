"""`vqc fit --auto`: choose backbone, input size, geometry, head and image score for one product
from its good images alone.

The pipeline, top to bottom:
1. ``candidates(images)``: a short, ordered list of configurations, shaped by the images' size
   and aspect ratio (own scale and letterbox for elongated parts, tiles for large ones), the most
   different ones first.
2. The good training images are split: most fit each candidate, a held-out few are scored as
   they are and with synthetic defects painted on them (vqc.training.synthetic, masks known), at
   three contrasts, faint to plain (``CONTRASTS``).
3. ``judge``: image AUROC (held-out good against synthetic), pixel AUROC on the synthetic masks,
   and the false-reject rate of the held-out good images at the candidate's own threshold policy.
   Each fit is judged with two image scores (the map's maximum and its top-k mean) at no extra cost.
4. ``informative_level``: the candidates are compared at one contrast, the one at which they find
   about three synthetic defects in four. Defects that every candidate finds (a plain bottle) or
   that none finds (a busy, mottled surface) cannot tell candidates apart; the same rule picks
   faint defects on plain parts and plain ones on busy parts.
5. The best by ``selection_score`` is refitted on every good image; every candidate's numbers and
   the choice go into the model file (``info["auto"]``).
A time budget bounds the whole run, the final refit included: a candidate that would not leave
room for it is skipped and said so.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..choices import AUTO_BUDGET_S
from ..data import decode_image, read_split
from ..errors import VqcError
from ..geometry import score as canvas_score
from ..progress import progress_bar
from .metrics import auroc, false_reject_threshold, pixel_auroc
from .synthetic import defect_set

TOP_K = 10  # the second image score tried on every fit: the mean of the 10 highest map positions
CONTRASTS = ((0.3, 1.0), (1.0, 2.0), (2.0, 4.0))  # synthetic defects' contrast ranges (x the part's own spread)
INFORMATIVE_AUROC = 0.75  # the level compared at: where the candidates' mean synthetic image AUROC is nearest this
HELD_OUT = (5, 0.2, 40)  # held-out good images: at least 5, a fifth of them, at most 40


@dataclass(frozen=True)
class Candidate:
    """AnomalyModel keyword arguments (top_k aside: judged on every fit)."""
    name: str
    options: dict = field(default_factory=dict)

    def model_options(self, top_k: int = 0) -> dict:
        return {"backbone": "efficientnet_lite0", "head": "knn", "image_size": 224, **self.options, "top_k": top_k}


def image_sizes(paths: list[Path]) -> np.ndarray:
    """(h, w) of each image, from its header."""
    sizes = []
    for path in paths:
        with Image.open(path) as image:
            sizes.append(image.size[::-1])
    return np.array(sizes)


def candidates(paths: list[Path]) -> list[Candidate]:
    """The configurations worth a fit for these images, cheapest and most often right first."""
    sizes = image_sizes(paths)
    h, w = np.median(sizes, axis=0)
    aspect = max(h, w) / min(h, w)
    # the most different configurations first (feature depth, geometry), refinements after: a budget
    # that ends the list early has still tried what most often decides
    out = [Candidate("lite0 knn 224")]
    if aspect >= 1.3:  # elongated parts: squashing distorts them; own scale or letterbox keeps the shape
        out += [Candidate("lite0 knn own scale, layers 3,4", {"geometry": "native", "image_size": 0, "layers": (3, 4)}),
                Candidate("lite0 knn letterbox 448", {"geometry": "letterbox", "image_size": 448})]
    out += [Candidate("lite0 knn 224 layers 3,4", {"layers": (3, 4)}),
            Candidate("lite0 knn 320", {"image_size": 320})]
    if min(h, w) >= 448:  # large images: tiles keep the fine detail a squash to 224 loses
        out.append(Candidate("lite0 knn tiles 224", {"geometry": "tile", "image_size": 224}))
    if aspect >= 1.3:
        out.append(Candidate("lite0 knn letterbox 320", {"geometry": "letterbox", "image_size": 320}))
    out += [Candidate("lite2 knn 260", {"backbone": "efficientnet_lite2", "image_size": 260}),
            Candidate("lite0 gmm 224", {"head": "gmm"}),
            Candidate("lite0 nf 224", {"head": "nf"})]
    return out


def split_held_out(paths: list[Path], seed: int) -> tuple[list[Path], list[Path]]:
    """(fit, held out): the held-out good images are never fitted by any candidate."""
    least, share, most = HELD_OUT
    n = int(min(most, max(least, round(len(paths) * share))))
    if len(paths) - n < 5:
        raise VqcError(f"--auto needs at least {least + 5} good images (found {len(paths)}): "
                       f"{least} to judge candidates on, the rest to fit them")
    order = np.random.default_rng(seed).permutation(len(paths))
    held = set(order[:n].tolist())
    return [p for i, p in enumerate(paths) if i not in held], [paths[i] for i in sorted(held)]


def selection_score(judged: dict, false_reject_target: float) -> float:
    """What the choice maximises: detection of the synthetic defects, with their localisation as
    a tenth-weight tie-break, less the false-reject rate above the policy's target (a model that
    rejects good parts the policy promised to pass is worse than its AUROC says)."""
    excess = max(0.0, judged["false_reject_rate"] - false_reject_target)
    return judged["image_auroc"] + 0.1 * judged["pixel_auroc"] - excess


def informative_level(records: list[dict]) -> int:
    """The contrast level (index into CONTRASTS) at which the judged candidates' mean synthetic
    image AUROC is nearest INFORMATIVE_AUROC."""
    means = np.mean([[level["image_auroc"] for level in r["levels"]] for r in records], axis=0)
    return int(np.argmin(np.abs(means - INFORMATIVE_AUROC)))


def settle(records: list[dict], policy_rate: float) -> int | None:
    """Give every judged record the numbers of the informative level and its selection score;
    returns the level (None when nothing was judged)."""
    judged = [r for r in records if r["status"] == "ok"]
    if not judged:
        return None
    level = informative_level(judged)
    for r in judged:
        r.update(r["levels"][level])
        r["selection_score"] = round(selection_score(r, policy_rate), 4)
    return level


def judge(validation: list, good: list, synthetic: list, masks: list[np.ndarray], policy_rate: float) -> dict[int, dict]:
    """Per image score (top_k 0 and TOP_K), from Predictions of the model's own held-out fit
    images (`validation`: they set its threshold), the held-out good images and the synthetic
    defects: AUROC good vs synthetic, pixel AUROC on the masks, false-reject rate of the good ones."""
    labels = np.r_[np.zeros(len(good)), np.ones(len(synthetic))]
    pixel = pixel_auroc([np.zeros(p.anomaly_map.shape, bool) for p in good] + masks,
                        [p.anomaly_map for p in good + synthetic])
    out = {}
    for k in (0, TOP_K):
        scores = np.array([canvas_score(p.canvas, k) for p in good + synthetic])
        threshold = false_reject_threshold([canvas_score(p.canvas, k) for p in validation], policy_rate)
        out[k] = {"image_auroc": auroc(labels, scores), "pixel_auroc": pixel,
                  "false_reject_rate": float(np.mean(scores[:len(good)] >= threshold))}
    return out


def real_test_metrics(model, test_data: str | Path) -> dict[int, dict]:
    """The real test split's metrics for both image scores (the benchmark's regret table only)."""
    from .evaluation import evaluate
    real = evaluate(model, test_data, progress=False, keep_predictions=True)
    labels = [s.label for s, _ in real["predictions"]]
    return {k: {"test_image_auroc": auroc(labels, [canvas_score(p.canvas, k) for _, p in real["predictions"]]),
                "test_pixel_auroc": real["pixel_auroc"], "test_aupro": real["aupro"]} for k in (0, TOP_K)}


def choose(data: str | Path, policy_rate: float = 0.01, budget_s: float = AUTO_BUDGET_S, seed: int = 0,
           pool: list[Candidate] | None = None, test_data: str | Path | None = None,
           progress: bool = True, say=tqdm.write) -> dict:
    """Judge the candidates on `data`'s good images; returns {"candidates": [...], "chosen": i, ...}.
    With test_data (the benchmark's regret table), each fitted candidate is also evaluated on the
    real test split."""
    from .model import AnomalyModel, validation_split
    root = Path(data)
    paths = [s.path for s in read_split(root, "train")] if root.is_dir() else []
    if not paths:
        raise VqcError(f"--auto needs a folder of good images or a data set root (got {data})")
    fit_paths, held = split_held_out(paths, seed)
    good_images = [decode_image(p) for p in held]
    levels = [defect_set(good_images, seed, contrast=contrast) for contrast in CONTRASTS]
    pool = pool or candidates(paths)
    started = time.perf_counter()
    records, slowest, outside = [], 0.0, 0.0  # outside: the regret table's test-split evaluations, not --auto's
    refit_share = len(paths) / len(fit_paths)  # the final refit fits every good image, not only these
    for candidate in progress_bar(pool, desc="auto", unit="candidate", shown=progress):
        # room for one more candidate and for refitting the slowest so far: the budget covers the whole run
        if records and time.perf_counter() - started - outside + slowest * (1 + refit_share) > budget_s:
            records.append({"name": candidate.name, "options": _plain(candidate.options),
                            "status": f"skipped: the time budget of {budget_s:.0f} s would be passed"})
            say(f"  {candidate.name}: skipped (time budget)")
            continue
        start = time.perf_counter()
        try:
            # held-out fit images, not leave-one-out: judge() sets each image score's threshold on their canvases;
            # the chosen configuration is refitted on every image with the default (leave-one-out for knn)
            model = AnomalyModel(**candidate.model_options(), leave_one_out=False).fit(fit_paths, progress=False)
            _, val_index = validation_split(len(fit_paths), model.config.validation_fraction, model.config.seed)
            validation = list(model.predict_iter([fit_paths[i] for i in val_index] or fit_paths))
            good = list(model.predict_iter(good_images))
            judged = [judge(validation, good, list(model.predict_iter([image for image, _, _ in defects])),
                            [mask for _, mask, _ in defects], policy_rate) for defects in levels]
            seconds = time.perf_counter() - start
            real = real_test_metrics(model, test_data) if test_data is not None else {}
        except VqcError as exc:
            records.append({"name": candidate.name, "options": _plain(candidate.options), "status": f"failed: {exc}"})
            say(f"  {candidate.name}: failed: {exc}")
            continue
        outside += time.perf_counter() - start - seconds
        slowest = max(slowest, seconds)
        for k in (0, TOP_K):
            records.append({"name": candidate.name + (f", top-{k} score" if k else ""), "candidate": candidate.name,
                            "options": _plain(candidate.options), "top_k": k, "status": "ok",
                            "seconds": round(seconds, 1),
                            "levels": [{m: round(v, 4) for m, v in level[k].items()} for level in judged],
                            **{m: round(v, 4) for m, v in real.get(k, {}).items()}})
    level = settle(records, policy_rate)
    if level is None:
        raise VqcError("--auto: no candidate could be fitted: " + "; ".join(r["status"] for r in records))
    judged_ok = [i for i, r in enumerate(records) if r["status"] == "ok"]
    chosen = max(judged_ok, key=lambda i: (records[i]["selection_score"], -records[i]["seconds"]))
    return {"candidates": records, "chosen": chosen, "held_out_good": len(held),
            "synthetic_defects": sum(map(len, levels)), "contrast": list(CONTRASTS[level]),
            "fit_images": len(fit_paths), "budget_s": budget_s, "seconds": round(time.perf_counter() - started, 1),
            "policy_false_reject_rate": policy_rate}


def chosen_options(result: dict) -> dict:
    """AnomalyModel keyword arguments of the chosen candidate."""
    record = result["candidates"][result["chosen"]]
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in record["options"].items()}
    return Candidate(record["name"], options).model_options(record["top_k"])


def _plain(options: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
