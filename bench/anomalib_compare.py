"""Speed of vqc against anomalib on the same images, backbone and CPU threads: images per second.

    flock /tmp/cpu.lock python bench/anomalib_compare.py [--json PATH] [--vqc-engine auto|torch|onnx|openvino]
                                                         [--vqc-precision fp32|bf16]

Two pairs of detectors, both at 224 x 224 input, random weights (speed does not depend on their values):

- vqc ``knn`` against anomalib ``Patchcore``. Same backbone: timm's ``tf_efficientnet_lite0``, the
  stride-8 (40 channels) and stride-16 (112 channels) levels; anomalib names them "blocks.2" and
  "blocks.4" (its TimmFeatureExtractor maps module names to timm's features_only out_indices 2 and 3,
  vqc's levels). Both: 3 x 3 neighbourhood averaging, greedy coreset of 10 % of the training patches,
  nearest-neighbour distance per patch, map upsampled to 224 and smoothed (Gaussian, sigma 4). Image
  score: vqc, the maximum of its smoothed map; anomalib, the worst patch re-weighted by its 9 nearest
  bank entries.
- vqc ``nf`` against anomalib ``Fastflow``. Same flow: FrEIA AllInOneBlocks, 20 steps alternating
  3 x 3 and 1 x 1 subnets, hidden ratio 0.16 (vqc's defaults, passed to both; anomalib's own defaults
  are 8 steps, ratio 1.0). NOT the same backbone: anomalib's Fastflow accepts only resnet18,
  wide_resnet50_2, cait_m48_448 and deit_base_distilled_patch16_384, so it runs resnet18 (the closest:
  the smallest), with a flow on each of its stride 4, 8 and 16 levels (64, 128, 256 channels), where
  vqc runs its default for lite0: three flows, on the stride 8, 16 and 32 levels (40, 112, 320
  channels). This pair compares whole detectors, not the same network.

Both tools fit on the same first --train good training images (vqc holds 10 % of them out to learn
its normal score range), the flows for --epochs epochs: enough to score, not to detect well; only
speed is measured. anomalib fits with the steps of its Lightning training_step in a plain loop, then
exports with its own ``to_torch``; the timing process loads that file as its TorchInferencer does.
Then each tool is timed on the bottle test PNGs (83 files):

- end to end: a list of PNG paths -> one score per image. vqc: ``AnomalyModel.predict(paths)``, its
  ``.score`` read (decoding and resizing in its thread pool, the Detector or engine). anomalib: what its
  TorchInferencer.predict does, batched: ``anomalib.data.utils.read_image`` per path, 32 images stacked,
  then the exported module called on them (its PreProcessor resizes to 224 and normalises, then the
  torch model). The module has no post-processor: anomalib's score normalisation needs statistics from
  a labelled validation run, and would add only element-wise work.
- model only: the first 32 test images, resized to 224 x 224 beforehand, each tool given them as its
  own pipeline hands them to its model. vqc: uint8, channels-last in memory (numpy's stacking), to its
  Detector (or to the ONNX engine, when one is in use); anomalib: float in [0, 1], contiguous NCHW (as
  read_image and torch.stack give), to the module (PreProcessor + torch model). The layout matters:
  both tools' convolutions run faster on channels-last input on this CPU.

Each is warmed up once, then timed --repeats times; the fastest counts. Both run batch 32, 2 torch
threads and ``torch.inference_mode``. Process start, imports, model building, fitting and loading are
not timed. vqc runs in this interpreter; anomalib in its own virtual environment (--anomalib-python;
created with pip when missing), in subprocesses running this same file with --anomalib-job.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mvtec_bottle"
ANOMALIB_VENV = Path(__file__).resolve().parents[2] / "anomalib-venv"
BATCH = 32
CORESET = 0.1
FLOW_STEPS, HIDDEN_RATIO = 20, 0.16
PAIRS = {  # vqc head: (anomalib model, what anomalib runs)
    "knn": ("Patchcore", "tf_efficientnet_lite0, layers blocks.2 + blocks.4, coreset 0.1"),
    "nf": ("Fastflow", f"resnet18 (Fastflow takes no lite0), {FLOW_STEPS} steps, hidden ratio {HIDDEN_RATIO}"),
}


def best_rate(run, n_images: int, repeats: int) -> float:
    """Images per second: one warm-up call, then the fastest of `repeats` timed calls (the least
    disturbed by anything else on the machine)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return n_images / min(times)


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def ready_batch(paths: list[str]) -> torch.Tensor:
    """The model-only input: the first 32 test images resized to 224 x 224 (Pillow, bilinear), uint8
    [32, 3, 224, 224], channels last in memory (as numpy stacked them). Real images, not noise."""
    from PIL import Image

    images = [np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR)) for p in paths[:BATCH]]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


# ------------------------------------------------------------------ vqc (this interpreter)

def run_vqc(head: str, train: list[str], test: list[str], job: dict, engine: str, precision: str) -> dict:
    from vqc.engines import EngineSettings
    from vqc.training.model import AnomalyModel

    options = {"coreset": CORESET} if head == "knn" else \
        {"steps": FLOW_STEPS, "hidden_ratio": HIDDEN_RATIO, "max_epochs": job["epochs"]}
    model = AnomalyModel(backbone="efficientnet_lite0", head=head, weights="random", head_options=options,
                         batch_size=BATCH, device="cpu").fit(train, progress=False)
    scorer = model.scorer(EngineSettings(engine, job["threads"], precision))
    batch = ready_batch(test).numpy()  # channels last in memory, as the docstring says; graph engines copy it

    return {"end_to_end": best_rate(lambda: [p.score for p in scorer.predict(test)], len(test), job["repeats"]),
            "model_only": best_rate(lambda: scorer.run_batch(batch, None), BATCH, job["repeats"]),
            "engine": scorer.engine_name}


# ------------------------------------------------------------------ anomalib (its own venv)

def fit_patchcore(train_batches):
    from anomalib.models import Patchcore

    module = Patchcore(backbone="tf_efficientnet_lite0", layers=("blocks.2", "blocks.4"), pre_trained=False,
                       coreset_sampling_ratio=CORESET, pre_processor=Patchcore.configure_pre_processor((224, 224)),
                       post_processor=False, evaluator=False, visualizer=False)
    module.train()
    with torch.no_grad():  # Patchcore.training_step: store the patch embeddings; then fit: the coreset
        for images in train_batches:
            module.model(module.pre_processor(images))
        module.fit()
    return module


def fit_fastflow(train_batches, epochs: int):
    from anomalib.models import Fastflow

    module = Fastflow(backbone="resnet18", pre_trained=False, flow_steps=FLOW_STEPS, hidden_ratio=HIDDEN_RATIO,
                      pre_processor=Fastflow.configure_pre_processor((224, 224)),
                      post_processor=False, evaluator=False, visualizer=False)
    optimizer = module.configure_optimizers()
    module.train()
    for _ in range(epochs):  # Fastflow.training_step, in a plain loop
        for images in train_batches:
            loss = module.loss(*module.model(module.pre_processor(images)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return module


def time_anomalib(module, test: list[str], test_batches, repeats: int) -> dict:
    module.eval()
    batch = (ready_batch(test).float() / 255).contiguous()  # as its pipeline hands it over: float, NCHW

    @torch.inference_mode()
    def end_to_end():
        return [module(images).pred_score for images in test_batches()]

    @torch.inference_mode()
    def model_only():
        return module(batch)

    return {"end_to_end": best_rate(end_to_end, len(test), repeats),
            "model_only": best_rate(model_only, BATCH, repeats)}


def run_anomalib_job(phase: str, folder: str) -> None:
    """Inside anomalib's virtual environment. "fit": fit each model of the job, export it with anomalib's
    to_torch. "time": load each export (as TorchInferencer does), time it, write results.json."""
    import anomalib
    import timm
    from anomalib.data.utils import read_image

    folder = Path(folder)
    job = json.loads((folder / "job.json").read_text())
    torch.set_num_threads(job["threads"])

    def batches(paths):  # decoded as TorchInferencer.predict does, 32 at a time
        for start in range(0, len(paths), BATCH):
            yield torch.stack([read_image(p, as_tensor=True) for p in paths[start:start + BATCH]])

    if phase == "fit":
        train = list(batches(job["train"]))
        for head in job["heads"]:
            module = fit_patchcore(train) if head == "knn" else fit_fastflow(train, job["epochs"])
            module.to_torch(folder, model_file_name=head)
        return
    results = {"versions": {"anomalib": anomalib.__version__, "torch": torch.__version__,
                            "timm": timm.__version__, "python": platform.python_version()}}
    for head in job["heads"]:
        module = torch.load(folder / "weights" / "torch" / f"{head}.pt", weights_only=False)["model"]
        results[head] = time_anomalib(module, job["test"], lambda: batches(job["test"]), job["repeats"])
    (folder / "results.json").write_text(json.dumps(results))


def anomalib_python(path: Path) -> Path:
    if not path.exists():
        venv = path.parents[1]
        print(f"anomalib: no interpreter at {path}; creating the virtual environment {venv} with pip "
              f"(anomalib 2.x and its own torch; a few minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "anomalib>=2,<3"], check=True)
    return path


def run_anomalib(python: Path, job: dict) -> dict:
    """Fit in one process, time in a fresh one. The fit process gets a fixed glibc mmap threshold: with
    glibc's default, Patchcore's coreset loop (KCenterGreedy) grew the heap here by one 25 MB temporary
    per step (2,500 steps for 32 images) until the kernel killed it. The timed process runs as is."""
    with tempfile.TemporaryDirectory(prefix="vqc-anomalib-") as folder:
        (Path(folder) / "job.json").write_text(json.dumps(job))
        for phase, env in (("fit", {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}), ("time", {})):
            done = subprocess.run([str(python), __file__, "--anomalib-job", phase, folder], check=False,
                                  capture_output=True, text=True, env={**os.environ, **env})
            if done.returncode:  # its warnings and progress bars are shown on failure only
                sys.exit(f"anomalib {phase} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
        return json.loads((Path(folder) / "results.json").read_text())


# ------------------------------------------------------------------ main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="an MVTec-layout data set (train/good, test/*)")
    parser.add_argument("--train", type=int, default=32, help="good training images to fit on")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of the flows (nf, Fastflow)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the fastest counts")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both tools")
    parser.add_argument("--pairs", default="knn,nf", help="vqc heads to compare: knn (Patchcore), nf (Fastflow)")
    parser.add_argument("--vqc-engine", default="auto", choices=["auto", "torch", "onnx", "openvino"],
                        help="vqc's engine (auto: what `vqc predict` uses, ONNX Runtime on a CPU)")
    parser.add_argument("--vqc-precision", default="fp32", choices=["fp32", "bf16"],
                        help="vqc's precision (bf16: OpenVINO on CPUs with bf16 units; anomalib stays fp32)")
    parser.add_argument("--anomalib-python", type=Path, default=ANOMALIB_VENV / "bin" / "python")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--anomalib-job", nargs=2, metavar=("PHASE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.anomalib_job:
        run_anomalib_job(*args.anomalib_job)
        return

    import vqc

    heads = args.pairs.split(",")
    unknown = set(heads) - set(PAIRS)
    if unknown:
        parser.error(f"unknown pair(s) {', '.join(sorted(unknown))}; choose from {', '.join(PAIRS)}")
    train = [str(p) for p in sorted((args.data / "train" / "good").glob("*.png"))[:args.train]]
    test = [str(p) for p in sorted((args.data / "test").glob("*/*.png"))]
    job = {"heads": heads, "train": train, "test": test, "epochs": args.epochs, "repeats": args.repeats,
           "threads": args.threads}
    torch.set_num_threads(args.threads)

    print(f"fit on {len(train)} good images of {args.data} (flows: {args.epochs} epochs), random weights; "
          f"timed on {len(test)} test PNGs; batch {BATCH}, {args.threads} threads, best of {args.repeats}",
          flush=True)
    ours = {head: run_vqc(head, train, test, job, args.vqc_engine, args.vqc_precision) for head in heads}
    theirs = run_anomalib(anomalib_python(args.anomalib_python), job)

    machine = {"platform": platform.platform(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
               "threads": args.threads, "date": datetime.date.today().isoformat(),
               "vqc": {"version": vqc.__version__, "torch": torch.__version__, "python": platform.python_version(),
                       "engine": args.vqc_engine, "precision": args.vqc_precision},
               "anomalib": theirs["versions"]}
    print(f"\nmachine: {machine['cpu']}, {machine['cpu_count']} CPUs, {machine['platform']}, {machine['date']}")
    versions = theirs["versions"]
    print(f"vqc {vqc.__version__} (torch {torch.__version__}); anomalib {versions['anomalib']} "
          f"(torch {versions['torch']}, timm {versions['timm']}), separate virtual environments")
    for head in heads:
        print(f"{head} vs {PAIRS[head][0]}: vqc efficientnet_lite0 (engine {ours[head]['engine']}); "
              f"anomalib {PAIRS[head][1]}")
    print("\n| vqc vs anomalib | measure | vqc img/s | anomalib img/s | vqc / anomalib |")
    print("|---|---|---:|---:|---:|")
    measures = {"end_to_end": f"end to end, {len(test)} PNGs", "model_only": f"model only, batch {BATCH}"}
    rows = []
    for head in heads:
        for measure, label in measures.items():
            a, b = ours[head][measure], theirs[head][measure]
            rows.append({"vqc": head, "vqc_engine": ours[head]["engine"], "anomalib": PAIRS[head][0],
                         "anomalib_config": PAIRS[head][1], "measure": measure,
                         "vqc_images_per_s": a, "anomalib_images_per_s": b, "ratio": a / b})
            print(f"| {head} vs {PAIRS[head][0]} | {label} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    print(f"\nfit on {len(train)} images (flows {args.epochs} epochs). model only: vqc gets uint8 channels-last, "
          f"anomalib float NCHW, as each pipeline hands batches to its model.")
    if "nf" in heads:
        print("nf vs Fastflow: different backbones (lite0 vs resnet18, 3 flows each, on different levels): whole detectors compared.")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "train_images": len(train), "test_images": len(test),
                                         "flow_epochs": args.epochs, "batch": BATCH, "repeats": args.repeats,
                                         "results": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
