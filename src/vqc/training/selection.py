"""`vqc fit --auto`: choose backbone, input size, geometry, head and image score for one product
from its good images alone.

The pipeline, top to bottom:
1. ``candidates(images)``: a short, ordered list of configurations, shaped by the images' size
   and aspect ratio (letterbox for elongated parts, tiles for large ones).
2. The good training images are split: most fit each candidate, a held-out few are scored as
   they are and with synthetic defects painted on them (vqc.training.synthetic, masks known).
3. ``judge``: image AUROC (held-out good against synthetic), pixel AUROC on the synthetic masks,
   and the false-reject rate of the held-out good images at the candidate's own threshold policy.
   Each fit is judged with two image scores (the map's maximum and its top-k mean) at no extra cost.
4. The best by ``selection_score`` is refitted on every good image; every candidate's numbers and
   the choice go into the model file (``info["auto"]``).
A time budget bounds the whole run: a candidate that would not finish in it is skipped and said so.
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
    out = [Candidate("lite0 knn 224"),
           Candidate("lite0 knn 320", {"image_size": 320})]
    if aspect >= 1.3:  # elongated parts: squashing distorts them, letterbox keeps the shape
        out += [Candidate("lite0 knn letterbox 320", {"geometry": "letterbox", "image_size": 320}),
                Candidate("lite0 knn letterbox 448", {"geometry": "letterbox", "image_size": 448}),
                Candidate("lite0 knn own scale, layers 3,4", {"geometry": "native", "image_size": 0, "layers": (3, 4)})]
    if min(h, w) >= 448:  # large images: tiles keep the fine detail a squash to 224 loses
        out.append(Candidate("lite0 knn tiles 224", {"geometry": "tile", "image_size": 224}))
    out += [Candidate("lite2 knn 260", {"backbone": "efficientnet_lite2", "image_size": 260}),
            Candidate("lite0 knn 224 layers 3,4", {"layers": (3, 4)}),
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
    """What the choice maximises: detection and localisation of the synthetic defects in equal
    parts, less the false-reject rate above the policy's target (a model that rejects good parts
    the policy promised to pass is worse than its AUROC says)."""
    excess = max(0.0, judged["false_reject_rate"] - false_reject_target)
    return 0.5 * judged["image_auroc"] + 0.5 * judged["pixel_auroc"] - excess


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
    defects = defect_set(good_images, seed)
    pool = pool or candidates(paths)
    started = time.perf_counter()
    records, slowest = [], 0.0
    for candidate in progress_bar(pool, desc="auto", unit="candidate", shown=progress):
        if records and time.perf_counter() - started + slowest > budget_s:
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
            synthetic = list(model.predict_iter([image for image, _, _ in defects]))
            judged = judge(validation, good, synthetic, [mask for _, mask, _ in defects], policy_rate)
            real = real_test_metrics(model, test_data) if test_data is not None else {}
        except VqcError as exc:
            records.append({"name": candidate.name, "options": _plain(candidate.options), "status": f"failed: {exc}"})
            say(f"  {candidate.name}: failed: {exc}")
            continue
        seconds = time.perf_counter() - start
        slowest = max(slowest, seconds)
        for k, numbers in judged.items():
            records.append({"name": candidate.name + (f", top-{k} score" if k else ""), "candidate": candidate.name,
                            "options": _plain(candidate.options), "top_k": k, "status": "ok",
                            "seconds": round(seconds, 1), **{m: round(v, 4) for m, v in numbers.items()},
                            "selection_score": round(selection_score(numbers, policy_rate), 4),
                            **{m: round(v, 4) for m, v in real.get(k, {}).items()}})
    judged_ok = [i for i, r in enumerate(records) if r["status"] == "ok"]
    if not judged_ok:
        raise VqcError("--auto: no candidate could be fitted: " + "; ".join(r["status"] for r in records))
    chosen = max(judged_ok, key=lambda i: (records[i]["selection_score"], -records[i]["seconds"]))
    return {"candidates": records, "chosen": chosen, "held_out_good": len(held), "synthetic_defects": len(defects),
            "fit_images": len(fit_paths), "budget_s": budget_s, "seconds": round(time.perf_counter() - started, 1),
            "policy_false_reject_rate": policy_rate}


def chosen_options(result: dict) -> dict:
    """AnomalyModel keyword arguments of the chosen candidate."""
    record = result["candidates"][result["chosen"]]
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in record["options"].items()}
    return Candidate(record["name"], options).model_options(record["top_k"])


def _plain(options: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
