"""Does `vqc predict` give what the Speed section promises? The command against the end-to-end figure.

    python bench/predict_speed.py [--heads knn,nf] [--presets fast,balanced,best] [--images 256]

For each head and preset (`vqc fit --preset`; fast is the default), the detector fitted on ../shared/data/mvtec_bottle (nf for one epoch:
speed does not depend on weights) is timed two ways on the same `--images` bottle test PNGs
(the test split repeated), the same engine (auto):
- the Speed section's end-to-end figure: `predict_iter` over the files in this process, the
  fastest of three passes (vqc.training.speed's measure);
- `vqc predict MODEL FOLDER --no-overlays` as a command, its own rate from the first file read
  to the last row written (model loading and process start excluded), the fastest of three runs.
It prints both and their ratio; exit code 1 where the command reaches under 90 % of the figure.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(os.environ.get("VQC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TARGET = 0.9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", default="knn,nf")
    parser.add_argument("--presets", default="fast", help="comma-separated `vqc fit --preset` names")
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    import vqc
    from vqc.choices import PRESETS
    from vqc.data import read_split
    from vqc.engines import EngineSettings
    root = SHARED / "mvtec_bottle"
    tmp = Path(tempfile.mkdtemp(prefix="vqc-predict-speed-"))
    paths = [s.path for s in read_split(root, "test")]
    paths = (paths * (args.images // len(paths) + 1))[:args.images]
    folder = tmp / "images"
    folder.mkdir()
    for i, path in enumerate(paths):  # distinct names: the command scores each file once
        (folder / f"{i:04d}.png").symlink_to(path)
    files = sorted(folder.glob("*.png"))
    misses = 0
    print(f"bottle, {len(files)} PNGs, engine auto, {os.cpu_count()} CPUs")
    print("| head | preset | fit s | Speed end to end images/s | vqc predict images/s | ratio |")
    print("|---|---|---|---|---|---|")
    for head, preset in [(h, p) for h in args.heads.split(",") for p in args.presets.split(",")]:
        options = {"max_epochs": 1} if head == "nf" else {}
        model = vqc.AnomalyModel(head=head, head_options=options, **PRESETS[preset]).fit(root, progress=False)
        model_file = model.save(tmp / f"bottle-{head}-{preset}.safetensors")
        scorer = model.scorer(EngineSettings("auto"))
        list(scorer.predict_iter(files[:scorer.batch_size]))  # warm-up
        passes = []
        for _ in range(3):
            start = time.perf_counter()
            [p.score for p in scorer.predict_iter(files)]
            passes.append(time.perf_counter() - start)
        figure = len(files) / min(passes)
        rates = []
        for run in range(3):
            done = subprocess.run([sys.executable, "-m", "vqc.cli", "predict", str(model_file), str(folder),
                                   "--no-overlays", "--out", str(tmp / f"out-{head}-{preset}-{run}")],
                                  capture_output=True, text=True, check=True)
            rates.append(float(re.search(r"\(([\d.]+) images/s", done.stdout).group(1)))
        command = max(rates)
        misses += command < TARGET * figure
        print(f"| {head} | {preset} | {model.info['fit_seconds']:.0f} | {figure:.1f} | {command:.1f} | "
              f"{command / figure:.0%} |", flush=True)
    print("targets met" if not misses else f"{misses} head(s) under {TARGET:.0%} of the figure")
    return 1 if misses else 0


if __name__ == "__main__":
    raise SystemExit(main())
