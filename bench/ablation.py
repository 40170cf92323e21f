"""The issue-21 ablation: what each change does to quality and speed, on every data set.

Each variant changes one setting of the default (efficientnet_lite0 + knn, 224 x 224 squash,
max image score), is fitted on the set's train/good images (`vqc fit DATA` with that setting) and
evaluated on its test split (`vqc evaluate`). It prints one table: image AUROC / pixel AUROC /
AUPRO per set, and the end-to-end images/s of the evaluation (decoding, scoring and reading the
masks, PyTorch engine). The top-10 image score is evaluated on the default's fit: it changes only
how the map becomes a score (the pixel metrics are the default's).

    python bench/ablation.py --json ablation.json           # every variant on every set
    python bench/ablation.py --sets mvtec_bottle --variants default,input-320
    python bench/ablation.py --from-json ablation.json      # the table again, from a stored run

A finished (set, variant) pair is written to --json at once, and a rerun with the same --json
skips the pairs already there, so an interrupted run goes on where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

SHARED = Path(os.environ.get("VQC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SETS = ("mvtec_bottle", "mpdd_metal_plate", "magnetic_tile_full", "mvtec3d_tire", "kolektorsdd")
VARIANTS = {  # name: (what it changes, AnomalyModel options)
    "default": ("lite0 knn 224 squash, max score", {}),
    "top-10": ("image score: mean of the 10 highest map positions", {"top_k": 10}),
    "input-320": ("input 320 x 320", {"image_size": 320}),
    "letterbox-448": ("aspect kept: letterbox 448", {"geometry": "letterbox", "image_size": 448}),
    "lite2-260": ("efficientnet_lite2 at its native 260", {"backbone": "efficientnet_lite2", "image_size": 260}),
    "layers-3-4": ("deeper features: layers 3,4", {"layers": (3, 4)}),
    "layers-2-3-4": ("multi-scale: layers 2,3,4", {"layers": (2, 3, 4)}),
}


def run_one(root: Path, options: dict, top_k_too: bool = False) -> list[dict]:
    """Fit and evaluate; with top_k_too, evaluate the same fit again with the top-10 image score."""
    from dataclasses import replace

    from vqc import AnomalyModel
    from vqc.training.evaluation import evaluate
    start = time.perf_counter()
    model = AnomalyModel(**options).fit(root, progress=False)
    fit_s = time.perf_counter() - start
    results = []
    for top_k in (0, 10) if top_k_too else (options.get("top_k", 0),):
        model.config = replace(model.config, top_k=top_k)
        model.detector.top_k = top_k
        result = evaluate(model, root, progress=False)
        results.append({"image_auroc": result["image_auroc"], "pixel_auroc": result["pixel_auroc"],
                        "aupro": result["aupro"], "images_per_second": result["images_per_second"],
                        "fit_seconds": fit_s})
    return results


def table(rows: dict, sets: list[str], variants: list[str]) -> str:
    head = "| variant | " + " | ".join(sets) + " | images/s end to end (mean over sets) |"
    lines = [head, "|" + "---|" * (len(sets) + 2)]
    for v in variants:
        cells, rates = [], []
        for s in sets:
            r = rows.get(f"{s}/{v}")
            if r is None:
                cells.append("not run")
                continue
            cells.append(f"{r['image_auroc']:.3f} / {r['pixel_auroc']:.3f} / {r['aupro']:.3f}")
            rates.append(r["images_per_second"])
        rate = f"{sum(rates) / len(rates):.1f}" if rates else ""
        lines.append(f"| {v}: {VARIANTS[v][0]} | " + " | ".join(cells) + f" | {rate} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", help="results, one entry per (set, variant), written as they finish")
    parser.add_argument("--from-json", metavar="FILE", help="print the table of a stored run; run nothing")
    args = parser.parse_args()
    sets, variants = args.sets.split(","), args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.from_json:
        print(table(json.loads(Path(args.from_json).read_text()), sets, variants))
        return 0
    store = Path(args.json) if args.json else None
    rows = json.loads(store.read_text()) if store and store.exists() else {}
    for s in sets:
        root = SHARED / s
        if not root.is_dir():
            print(f"skipped {s}: {root} is absent")
            continue
        for v in variants:
            if f"{s}/{v}" in rows or (v == "top-10" and "default" in variants):
                continue  # top-10 comes with the default's fit
            both = v == "default" and "top-10" in variants
            for name, result in zip(("default", "top-10") if both else (v,), run_one(root, VARIANTS[v][1], both)):
                rows[f"{s}/{name}"] = result
                print(f"{s}/{name}: {json.dumps({k: round(x, 4) for k, x in result.items()})}", flush=True)
            if store:
                store.write_text(json.dumps(rows, indent=1))
    print(table(rows, sets, variants))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
