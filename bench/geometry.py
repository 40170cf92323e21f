"""Compare input geometries (resize, letterbox, native, tile) with one head; print a Markdown table.

    python bench/geometry.py [--data ../shared/data] [--sets magnetic_tile,mvtec_bottle] [--head knn]
                             [--variants "resize 224;letterbox 224"]

images/s is the end-to-end rate of `evaluate`'s scoring loop (decode, geometry, network, stitching,
maps back at the original resolution), one process on this machine's CPU threads.
"""
import argparse
import platform
import time
from pathlib import Path

import torch

import vqc
from vqc.training.evaluation import evaluate

VARIANTS = [  # (label, AnomalyModel keyword arguments)
    ("resize 224", {}),
    ("letterbox 224", {"geometry": "letterbox"}),
    ("native, short side 224", {"geometry": "native"}),
    ("tile 224, stride 192, scale 1.0", {"geometry": "tile", "tile_stride": 192}),
    ("resize 224, layers 3,4", {"layers": (3, 4)}),
    ("tile 224, stride 192, layers 3,4", {"geometry": "tile", "tile_stride": 192, "layers": (3, 4)}),
    # Each knn patch averaged over 13 x 13 positions (a third of the 40 x 40 grid's side): a texture
    # descriptor for defects that are a region of the surface finished differently (magnetic_tile's uneven).
    ("resize 320, layers 2,3, pool 13", {"image_size": 320, "layers": (2, 3), "head_options": {"pool": 13}}),
]

parser = argparse.ArgumentParser()
parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
parser.add_argument("--sets", default="magnetic_tile,mvtec_bottle")
parser.add_argument("--backbone", default="efficientnet_lite0")
parser.add_argument("--head", default="knn")
parser.add_argument("--variants", default="", help="labels to run, separated by ';' (default: all)")
args = parser.parse_args()
chosen = [v for v in VARIANTS if not args.variants or v[0] in args.variants.split(";")]
if not chosen:
    parser.error(f"no variant named {args.variants!r}; known: {'; '.join(label for label, _ in VARIANTS)}")

print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
      f"torch {torch.__version__}, vqc {vqc.__version__}, {time.strftime('%Y-%m-%d')}; "
      f"{args.backbone} + {args.head}, default head options unless the label names one")
print("| data set | geometry | image AUROC | pixel AUROC | AUPRO | fit s | images/s |")
print("|---|---|---|---|---|---|---|")
for name in args.sets.split(","):
    root = Path(args.data) / name
    for label, kwargs in chosen:
        start = time.perf_counter()
        model = vqc.AnomalyModel(backbone=args.backbone, head=args.head, **kwargs).fit(root, progress=False)
        fit_seconds = time.perf_counter() - start
        r = evaluate(model, root, progress=False)
        print(f"| {name} | {label} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | {r['aupro']:.4f} | "
              f"{fit_seconds:.1f} | {r['images_per_second']:.1f} |", flush=True)
