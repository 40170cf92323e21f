"""Fit and evaluate one backbone + head on each shared data set; print a Markdown table.

    python bench/foundation.py [--data ../shared/data] [--backbone efficientnet_lite0] [--head knn]
"""
import argparse
import platform
import time
from pathlib import Path

import torch

import vqc
from vqc.training.evaluation import evaluate

parser = argparse.ArgumentParser()
parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
parser.add_argument("--sets", default="mvtec_bottle,mpdd_metal_plate,magnetic_tile")
parser.add_argument("--backbone", default="efficientnet_lite0")
parser.add_argument("--head", default="knn")
args = parser.parse_args()

print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
      f"torch {torch.__version__}, vqc {vqc.__version__}, {time.strftime('%Y-%m-%d')}")
print("| data set | backbone + head | image AUROC | image AP | pixel AUROC | fit s | eval s |")
print("|---|---|---|---|---|---|---|")
for name in args.sets.split(","):
    root = Path(args.data) / name
    start = time.perf_counter()
    model = vqc.AnomalyModel(backbone=args.backbone, head=args.head).fit(root, progress=False)
    fitted = time.perf_counter()
    r = evaluate(model, root, progress=False)
    done = time.perf_counter()
    print(f"| {name} | {args.backbone} + {args.head} | {r['image_auroc']:.4f} | {r['image_ap']:.4f} | "
          f"{r['pixel_auroc']:.4f} | {fitted - start:.1f} | {done - fitted:.1f} |", flush=True)
