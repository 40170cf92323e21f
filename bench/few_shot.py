"""Few-shot: how image AUROC grows with the number of good images fitted.

For each set, the default detector (`vqc fit`: efficientnet_lite0 + knn) is fitted on 5, 10, 20
and 50 good images drawn from train/good (three seeded draws each) and on all of them, then
evaluated on the whole test split. It prints the mean and the spread (min - max) of image AUROC
and the mean pixel AUROC per size.

    python bench/few_shot.py --json few_shot.json
    python bench/few_shot.py --from-json few_shot.json
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("VQC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SETS = ("mvtec_bottle", "mpdd_metal_plate", "mvtec3d_tire")
SIZES = (5, 10, 20, 50)
SEEDS = (0, 1, 2)


def run_set(root: Path) -> dict:
    from vqc import AnomalyModel
    from vqc.data import read_split
    from vqc.training.evaluation import evaluate
    good = [s.path for s in read_split(root, "train")]
    runs = {}
    for n in [n for n in SIZES if n < len(good)] + [len(good)]:
        draws = SEEDS if n < len(good) else (0,)
        runs[n] = []
        for seed in draws:
            pick = np.random.default_rng(seed).choice(len(good), n, replace=False)
            model = AnomalyModel().fit([good[i] for i in sorted(pick)], progress=False)
            result = evaluate(model, root, progress=False)
            runs[n].append({"seed": seed, "image_auroc": result["image_auroc"], "pixel_auroc": result["pixel_auroc"]})
            print(f"{root.name} n={n} seed={seed}: image AUROC {result['image_auroc']:.4f}, "
                  f"pixel AUROC {result['pixel_auroc']:.4f}", flush=True)
    return {"n_good": len(good), "runs": runs}


def table(results: dict) -> str:
    lines = ["| set | good images fitted | image AUROC mean (min - max over draws) | pixel AUROC mean |",
             "|---|---|---|---|"]
    for name, result in results.items():
        for n, runs in result["runs"].items():
            image = [r["image_auroc"] for r in runs]
            pixel = [r["pixel_auroc"] for r in runs]
            spread = f" ({min(image):.3f} - {max(image):.3f})" if len(image) > 1 else " (all images, one fit)"
            lines.append(f"| {name} | {n} | {np.mean(image):.3f}{spread} | {np.mean(pixel):.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--json", help="write every run here")
    parser.add_argument("--from-json", metavar="FILE", help="print the table of a stored run; run nothing")
    args = parser.parse_args()
    if args.from_json:
        print(table(json.loads(Path(args.from_json).read_text())))
        return 0
    results = {}
    for name in args.sets.split(","):
        root = SHARED / name
        if not root.is_dir():
            print(f"skipped {name}: {root} is absent")
            continue
        results[name] = run_set(root)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
