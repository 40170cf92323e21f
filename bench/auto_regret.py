"""The regret table of `vqc fit --auto`: how good its choice, made from good images and synthetic
defects only, is on each data set's real test split.

For every set it runs the same selection `vqc fit DATA --auto` runs (vqc.training.selection.choose), and
also evaluates every fitted candidate on the real test split. It prints, per set: the real image
AUROC / pixel AUROC / AUPRO of the candidate --auto chose, of the best candidate, and of the old
default (efficientnet_lite0 + knn at 224, max score), the regret (best minus chosen image AUROC),
and Spearman's rank correlation between the selection score and the real image AUROC over the
candidates. Then every candidate's row. JSON goes to --json.

    python bench/auto_regret.py                                  # every set in ../shared/data
    python bench/auto_regret.py --sets mvtec_bottle,kolektorsdd --budget 600 --json regret.json
    python bench/auto_regret.py --from-json regret.json     # the tables again, from a stored run

The summary also gives the regret had the choice been made on the synthetic image AUROC alone
or the synthetic pixel AUROC alone: a diagnostic of the selection rule, which stays as written in
vqc.training.selection.selection_score (five sets are too few to fit a rule to).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from scipy.stats import spearmanr

from vqc.choices import AUTO_BUDGET_S
from vqc.training.selection import choose

SHARED = Path(os.environ.get("VQC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SETS = ("mvtec_bottle", "mpdd_metal_plate", "magnetic_tile_full", "mvtec3d_tire", "kolektorsdd")


def summary(name: str, result: dict) -> dict:
    ok = [r for r in result["candidates"] if r["status"] == "ok"]
    chosen = result["candidates"][result["chosen"]]
    best = max(ok, key=lambda r: r["test_image_auroc"])
    by = lambda key: max(ok, key=lambda r: r[key])["test_image_auroc"]
    default = ok[0]  # lite0 knn 224 with the max score: the candidates start with the old default
    rho = spearmanr([r["selection_score"] for r in ok], [r["test_image_auroc"] for r in ok]).statistic
    return {"set": name, "chosen": chosen["name"], "best": best["name"], "default": default["name"],
            "chosen_test": [chosen["test_image_auroc"], chosen["test_pixel_auroc"], chosen["test_aupro"]],
            "best_test": [best["test_image_auroc"], best["test_pixel_auroc"], best["test_aupro"]],
            "default_test": [default["test_image_auroc"], default["test_pixel_auroc"], default["test_aupro"]],
            "regret": round(best["test_image_auroc"] - chosen["test_image_auroc"], 4),
            "spearman": round(float(rho), 3), "candidates": len(ok), "seconds": result["seconds"],
            "regret_image_only": round(best["test_image_auroc"] - by("image_auroc"), 4),
            "regret_pixel_only": round(best["test_image_auroc"] - by("pixel_auroc"), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--budget", type=float, default=AUTO_BUDGET_S, help="seconds per set, as fit --auto")
    parser.add_argument("--json", help="write every set's candidates and summary here")
    parser.add_argument("--from-json", metavar="FILE", help="print the tables of a stored run; run nothing")
    args = parser.parse_args()
    results, rows = {}, []
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())["sets"]
        rows = [summary(name, result) for name, result in results.items()]
    for name in [] if args.from_json else args.sets.split(","):
        root = SHARED / name
        if not root.is_dir():
            print(f"{name}: not found under {SHARED} (set VQC_SHARED_DATA)", file=sys.stderr)
            continue
        print(f"{name}: judging candidates (budget {args.budget:.0f} s)", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = choose(root, budget_s=args.budget, test_data=root,
                        say=lambda line: print(line, file=sys.stderr, flush=True))
        results[name] = result
        rows.append(summary(name, result))
        print(f"{name}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"summary": rows, "sets": results}, indent=1))
    fmt = lambda v: " / ".join(f"{x:.3f}" for x in v)
    print("| set | --auto chose | its test image / pixel AUROC / AUPRO | best candidate (test image AUROC) | best's "
          "| old default's | regret (image AUROC) | Spearman (selection score vs test image AUROC) "
          "| regret, synthetic image AUROC alone / pixel AUROC alone |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['chosen']} | {fmt(r['chosen_test'])} | {r['best']} | {fmt(r['best_test'])} | "
              f"{fmt(r['default_test'])} | {r['regret']:.4f} | {r['spearman']:.3f} ({r['candidates']} candidates) | "
              f"{r['regret_image_only']:.4f} / {r['regret_pixel_only']:.4f} |")
    print()
    print("| set | candidate | synthetic image AUROC | synthetic pixel AUROC | false rejects | selection score | "
          "test image AUROC | test pixel AUROC | test AUPRO | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, result in results.items():
        for i, r in enumerate(result["candidates"]):
            if r["status"] != "ok":
                print(f"| {name} | {r['name']} | {r['status']} | | | | | | | |")
                continue
            mark = " (chosen)" if i == result["chosen"] else ""
            print(f"| {name} | {r['name']}{mark} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | "
                  f"{r['false_reject_rate']:.1%} | {r['selection_score']:.4f} | {r['test_image_auroc']:.4f} | "
                  f"{r['test_pixel_auroc']:.4f} | {r['test_aupro']:.4f} | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
