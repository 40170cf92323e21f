"""Compare input geometries (resize, letterbox, native, tile) with one head; print a Markdown table.

    python bench/geometry.py [--data ../shared/data] [--sets magnetic_tile,mvtec_bottle] [--head knn]

images/s is the end-to-end rate of `evaluate`'s scoring loop (decode, geometry, network, stitching,
maps back at the original resolution), one process on this machine's CPU threads.
"""
import argparse
import platform
import time
from pathlib import Path

import torch

import vqc
from vqc.evaluation import evaluate

VARIANTS = [  # (label, AnomalyModel keyword arguments)
    ("resize 224", {}),
    ("letterbox 224", {"geometry": "letterbox"}),
    ("native, short side 224", {"geometry": "native"}),
    ("tile 224, stride 192, scale 1.0", {"geometry": "tile", "tile_stride": 192}),
    ("resize 224, layers 3,4", {"layers": (3, 4)}),
    ("tile 224, stride 192, layers 3,4", {"geometry": "tile", "tile_stride": 192, "layers": (3, 4)}),
]

parser = argparse.ArgumentParser()
parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
parser.add_argument("--sets", default="magnetic_tile,mvtec_bottle")
parser.add_argument("--backbone", default="efficientnet_lite0")
parser.add_argument("--head", default="knn")
args = parser.parse_args()

print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
      f"torch {torch.__version__}, vqc {vqc.__version__}, {time.strftime('%Y-%m-%d')}; "
      f"{args.backbone} + {args.head}, default head options")
print("| data set | geometry | image AUROC | pixel AUROC | AUPRO | fit s | images/s |")
print("|---|---|---|---|---|---|---|")
for name in args.sets.split(","):
    root = Path(args.data) / name
    for label, kwargs in VARIANTS:
        start = time.perf_counter()
        model = vqc.AnomalyModel(backbone=args.backbone, head=args.head, **kwargs).fit(root, progress=False)
        fit_seconds = time.perf_counter() - start
        r = evaluate(model, root, progress=False)
        print(f"| {name} | {label} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | {r['aupro']:.4f} | "
              f"{fit_seconds:.1f} | {r['images_per_second']:.1f} |", flush=True)
