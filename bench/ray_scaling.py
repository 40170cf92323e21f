"""Batch inspection on Ray against the single-process path, on this machine; and the driver's memory.

    python bench/ray_scaling.py [--data ../shared/data/mvtec_bottle] [--model MODEL] [--images 2000]
                                [--memory 500,5000]

Without --model it fits `efficientnet_lite0` + `knn` (defaults) on the data's train split. The
archive is the data's train and test images repeated under distinct names (symbolic links).
- single process: `predict_iter` with the default engine (ONNX Runtime on a CPU, all cores),
  decoding overlapped with the model, as `vqc predict` runs it;
- Ray, 1 and 2 workers: `vqc predict --ray --workers N` on a local Ray instance it starts
  itself (each worker 1 CPU, ONNX Runtime on 1 thread); images/s is counted from the first
  result to the last (start-up: starting Ray and loading the model in every worker, shown apart);
- memory: the same Ray job on the --memory sizes, each driver in its own process, printing the
  driver's peak RSS (its own, RUSAGE_SELF: the Ray processes are others) and its RSS at the end.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import vqc
from vqc.data import read_split
from vqc.engines import EngineSettings

ROOT = Path(__file__).resolve().parents[1]

# One Ray job in a fresh interpreter; prints its result, its own peak RSS and its RSS once the job
# is done (the peak is reached while loading torch and the model; the RSS at the end shows whether
# streaming the results made the driver grow), as JSON.
DRIVER = """
import json, resource, sys
from vqc.training.ray_predict import predict_on_ray
from vqc.training.ray_session import RayOptions
model, archive, out, workers = sys.argv[1:5]
result = predict_on_ray(model, [archive], out, RayOptions(workers=int(workers)), progress=False)
status = open("/proc/self/status").read()
print(json.dumps({"scored": result.scored, "seconds": result.seconds, "start_up": result.first_row_seconds,
                  "images_per_second": result.images_per_second,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "end_rss_mb": int(status.split("VmRSS:")[1].split()[0]) / 1024}))
"""


def archive_of(data: Path, n: int, folder: Path) -> Path:
    images = [s.path for s in read_split(data, "train")] + [s.path for s in read_split(data, "test")]
    folder.mkdir(parents=True)
    for i in range(n):
        source = images[i % len(images)].resolve()
        (folder / f"{i:05d}{source.suffix}").symlink_to(source)
    return folder


def single_process(model_path: Path, archive: Path) -> float:
    model = vqc.load(model_path).scorer(EngineSettings("auto"))
    paths = sorted(archive.iterdir())
    list(model.predict_iter(paths[:32]))  # warm-up: the engine's first batches
    start = time.perf_counter()
    count = sum(1 for _ in model.predict_iter(paths))
    return count / (time.perf_counter() - start)


def ray_job(model_path: Path, archive: Path, out: Path, workers: int) -> dict:
    env = {**os.environ, "RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES": "500000000"}  # not 30 % of a shared machine
    done = subprocess.run([sys.executable, "-c", DRIVER, str(model_path), str(archive), str(out), str(workers)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"ray job failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mvtec_bottle")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--images", type=int, default=2000,
                        help="images per throughput run (enough that both workers' start-up hardly counts)")
    parser.add_argument("--memory", default="500,5000", help="archive sizes for the driver's memory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vqc-ray-bench-") as tmp:
        tmp = Path(tmp)
        model_path = args.model
        if model_path is None:
            model_path = vqc.AnomalyModel().fit(args.data, progress=False).save(tmp / "model.safetensors")
        archive = archive_of(args.data, args.images, tmp / "archive")
        rows = [("single process (predict_iter, ONNX Runtime, all cores)", single_process(model_path, archive), None)]
        for workers in (1, 2):
            job = ray_job(model_path, archive, tmp / f"out-{workers}", workers)
            assert job["scored"] == args.images, job
            rows.append((f"Ray, {workers} worker{'s' if workers > 1 else ''} (local instance)",
                         job["images_per_second"], job["start_up"]))
        print(f"\n{args.images} images from {args.data}, model {model_path.name}; {os.cpu_count()} CPUs\n")
        print("| path | images/s | start-up s |\n|---|---:|---:|")
        for name, rate, start_up in rows:
            print(f"| {name} | {rate:.1f} | {'-' if start_up is None else f'{start_up:.1f}'} |")

        sizes = [int(n) for n in args.memory.split(",")]
        jobs = {}
        for n in sizes:
            jobs[n] = job = ray_job(model_path, archive_of(args.data, n, tmp / f"memory-{n}"), tmp / f"memory-out-{n}", 2)
            assert job["scored"] == n, job
            print(f"\nRay job of {n} images, 2 workers: driver peak RSS {job['peak_rss_mb']:.0f} MB, "
                  f"RSS at the end {job['end_rss_mb']:.0f} MB, {job['images_per_second']:.1f} images/s")
        first, last = jobs[sizes[0]], jobs[sizes[-1]]
        for key, name in (("peak_rss_mb", "peak RSS"), ("end_rss_mb", "RSS at the end")):
            growth = last[key] / first[key] - 1
            print(f"driver {name}, {sizes[-1]} against {sizes[0]} images: {growth:+.1%} "
                  f"({'within' if abs(growth) <= 0.2 else 'NOT within'} 20 %)")


if __name__ == "__main__":
    main()
