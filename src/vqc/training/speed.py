"""`vqc benchmark --speed`: how fast each backbone x head scores, model-only and end to end.

For each model, engine and device: batch-1 latency (median and p99 after warm-up), throughput
at batch 32/128/256 on ready uint8 tensors, the head's share of the model's time (for knn: the
nearest-neighbour search), decoding + geometry alone, end-to-end images/s from image files
(decoding overlapped with the model, exactly as `predict` runs; the fastest of three passes),
fit seconds and peak memory.
Each case runs in its own process, so its peak memory is its own.

Speed does not depend on weight values, so the trained heads (nf, mdn, ae) are fitted for one
epoch; knn and gmm are fitted as usual (their bank size and K set their speed).
"""
from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import VqcError

BATCHES = (32, 128, 256)
END_TO_END_IMAGES = 256  # the test images, repeated to this many
ONE_EPOCH = {"nf": {"max_epochs": 1}, "mdn": {"max_epochs": 1}, "ae": {"max_epochs": 1}}


@dataclass(frozen=True)
class SpeedCase:
    backbone: str
    head: str
    data: str  # a data set root: its train split is fitted, its test split is scored
    engine: str = "auto"  # auto | torch | onnx | openvino
    device: str = "cpu"
    precision: str = "fp32"
    image_size: int = 224
    batches: tuple[int, ...] = BATCHES
    end_to_end_images: int = END_TO_END_IMAGES
    end_to_end_passes: int = 3  # the fastest pass counts: the one least disturbed by other work on the machine


def machine() -> dict:
    import torch

    from ..version import __version__
    info = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "vqc": __version__,
            "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for package in ("onnxruntime", "openvino"):
        try:
            info[package] = __import__(package).__version__.split("-")[0]
        except ImportError:
            pass
    return info


def timed(fn, repeats: int, sync) -> list[float]:
    """Wall seconds of `repeats` calls of fn, each between two syncs (a device's queue drained)."""
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def measure_case(case: SpeedCase) -> dict:
    """Fit, then time; runs inside the case's own process."""
    import numpy as np
    import torch

    from ..data import decode_image, read_split
    from ..engines import EngineSettings
    from .efficiency import peak_memory_mb
    from .model import AnomalyModel
    from .torch_engine import TorchEngine

    device = torch.device(case.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    model = AnomalyModel(backbone=case.backbone, head=case.head, image_size=case.image_size,
                         head_options=ONE_EPOCH.get(case.head, {}), device=case.device)
    model.fit(case.data, progress=False)
    start = time.perf_counter()
    scorer = model.scorer(EngineSettings(case.engine, precision=case.precision))
    engine_seconds = time.perf_counter() - start
    record = {**asdict(case), "engine_used": scorer.engine_name, "fit_seconds": model.info["fit_seconds"],
              "engine_setup_seconds": round(engine_seconds, 2)}

    paths = [s.path for s in read_split(case.data, "test")]
    paths = (paths * (case.end_to_end_images // len(paths) + 1))[:case.end_to_end_images]
    plans = [plan for chunk in scorer.planned_chunks(paths[:64]) for plan in chunk]
    decode = timed(lambda: [model.geometry.plan(decode_image(p)) for p in paths[:64]], 3, lambda: None)
    record["decode_ms_per_image"] = round(statistics.median(decode) / 64 * 1000, 3)

    inputs = np.stack([plan.inputs[0] for plan in plans])  # uint8 [n, H, W, 3], real images
    def batch_of(n: int) -> np.ndarray:
        return np.ascontiguousarray(np.resize(inputs, (n, *inputs.shape[1:])).transpose(0, 3, 1, 2))

    one = batch_of(1)
    scorer.run_batch(one, None)  # warm-up
    latency = sorted(timed(lambda: scorer.run_batch(one, None), 30, sync))
    record["latency_ms"] = round(statistics.median(latency) * 1000, 3)
    record["latency_p99_ms"] = round(latency[min(len(latency) - 1, int(0.99 * len(latency)))] * 1000, 3)
    for n in case.batches:
        batch = batch_of(n)
        scorer.run_batch(batch, None)
        seconds = statistics.median(timed(lambda batch=batch: scorer.run_batch(batch, None), 3, sync))
        record[f"images_per_second_b{n}"] = round(n / seconds, 1)
    if isinstance(scorer.engine, TorchEngine):  # the head's share: the whole model against the backbone alone
        batch = torch.from_numpy(batch_of(case.batches[0])).to(device)
        dtype = scorer.engine.trunk_dtype
        with torch.inference_mode():
            whole = statistics.median(timed(lambda: model.detector(batch, trunk_dtype=dtype), 3, sync))
            trunk = statistics.median(timed(lambda: model.detector.features(batch, dtype), 3, sync))
        record["head_share"] = round(max(0.0, 1 - trunk / whole), 3)

    list(scorer.predict_iter(paths[:scorer.batch_size]))  # warm-up
    passes = timed(lambda: [p.score for p in scorer.predict_iter(paths)], case.end_to_end_passes, sync)
    record["end_to_end_images_per_second"] = round(len(paths) / min(passes), 1)
    record["peak_memory_mb"] = round(peak_memory_mb(device), 1)
    record["status"] = "ok"
    return record


def run_speed(cases: list[SpeedCase], say=print) -> list[dict]:
    """Every case in a fresh interpreter, one after another (they would compete for the cores)."""
    records = []
    for case in cases:
        done = subprocess.run([sys.executable, "-m", "vqc.training.speed", json.dumps(asdict(case))],
                              capture_output=True, text=True, check=False)
        lines = done.stdout.strip().splitlines()
        if done.returncode == 0 and lines:
            record = json.loads(lines[-1])
        else:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            record = {**asdict(case), "status": "error", "error": f"exit {done.returncode}: {tail}"}
        say(f"{case.backbone} + {case.head} [{case.engine}, {case.device}]: " + (
            f"{record['end_to_end_images_per_second']} images/s end to end" if record["status"] == "ok"
            else record["error"]))
        records.append(record)
    return records


def speed_table(records: list[dict]) -> str:
    """Markdown: one row per case."""
    batches = sorted({int(k[len("images_per_second_b"):]) for r in records for k in r if k.startswith("images_per_second_b")})
    head = ["model", "engine", "device", "latency b1 ms (p50 / p99)", *[f"img/s b{b}" for b in batches],
            "head share", "decode ms/img", "end to end img/s", "fit s", "peak MB"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        if r["status"] != "ok":
            rows.append(f"| {r['backbone']} + {r['head']} | {r['engine']} | {r['device']} | {r['error']} |")
            continue
        share = f"{r['head_share']:.0%}" if "head_share" in r else "-"
        cells = [f"{r['backbone']} + {r['head']}", r["engine_used"], r["device"],
                 f"{r['latency_ms']:.1f} / {r['latency_p99_ms']:.1f}",
                 *[str(r.get(f"images_per_second_b{b}", "-")) for b in batches], share,
                 f"{r['decode_ms_per_image']:.2f}", str(r["end_to_end_images_per_second"]),
                 f"{r['fit_seconds']:.1f}", f"{r['peak_memory_mb']:.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def speed_cases(backbones: list[str], heads: list[str], data: str, engines: list[str],
                devices: list[str] | None = None, batches: tuple[int, ...] = BATCHES,
                precision: str = "fp32", end_to_end_images: int = END_TO_END_IMAGES) -> list[SpeedCase]:
    import torch
    if not Path(data, "train").is_dir() or not Path(data, "test").is_dir():
        raise VqcError(f"--speed needs one data set root with train/ and test/ (got {data})")
    devices = devices or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    if end_to_end_images < 1:
        raise VqcError(f"--end-to-end-images must be at least 1, not {end_to_end_images}")
    return [SpeedCase(backbone, head, str(data), engine, device, precision, batches=tuple(batches),
                      end_to_end_images=end_to_end_images)
            for backbone in backbones for head in heads for device in devices
            for engine in (engines if device == "cpu" else ["torch"])]


if __name__ == "__main__":  # one case: python -m vqc.training.speed CASE_JSON; the record is the last stdout line
    fields = json.loads(sys.argv[1])
    print(json.dumps(measure_case(SpeedCase(**{**fields, "batches": tuple(fields["batches"])}))))
