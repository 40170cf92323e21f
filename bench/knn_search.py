"""Where the knn head's time goes, and the nearest-neighbour searches it could use instead.

    python bench/knn_search.py [--data ../shared/data/mvtec_bottle] [--images 64]

Fits the default `efficientnet_lite0` + `knn` on the data set, then on the patch features of its
test images (the head's real queries and its real bank) times each search and compares its
distances with the exact ones. Also prints the search's share of the exported model's time in
ONNX Runtime (the default CPU engine), from ONNX Runtime's own profile. faiss-cpu is timed when
it is installed (`pip install faiss-cpu`); it is not a vqc dependency.
"""
import argparse
import collections
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import vqc
from vqc.data import read_split
from vqc.training.export import cached_onnx
from vqc.training.heads.patches import flatten_positions, patch_features

parser = argparse.ArgumentParser()
parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mvtec_bottle"))
parser.add_argument("--images", type=int, default=64, help="test images whose patches are the queries")
args = parser.parse_args()
threads = torch.get_num_threads()

model = vqc.AnomalyModel(backbone="efficientnet_lite0", head="knn").fit(args.data, progress=False)
head = model.detector.head
paths = [s.path for s in read_split(args.data, "test")][:args.images]
levels = [torch.cat(parts) for parts in zip(*model.feature_batches(paths, progress=False))]
queries = flatten_positions(patch_features(levels, head.pool)).contiguous()
bank = head.bank
per_image = len(queries) // len(paths)
exact = torch.cdist(queries.double(), bank.double()).amin(1).float()


def timed(search, repeats=3) -> tuple[float, torch.Tensor]:
    """(ms per image, distances): the median of `repeats` runs after one warm-up."""
    out = search()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        search()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds) / len(paths) * 1000, out


def head_search():  # the shipped head itself: pooling, then one matmul and a min per bank block, fp32
    with torch.inference_mode():
        return head(levels).flatten()  # positions in flatten_positions' order, as `queries`


def relative_error(distances: torch.Tensor) -> float:
    return ((distances - exact).abs() / exact.clamp_min(1e-6)).max().item()


def bf16_then_exact(candidates=4):  # bf16 matmul picks candidates, fp32 re-ranks them
    keys = (-2 * bank).bfloat16()
    with torch.inference_mode():
        approx = (queries.bfloat16() @ keys.T).float() + (bank * bank).sum(1)
        nearest = approx.topk(candidates, dim=1, largest=False).indices
        return (queries[:, None, :] - bank[nearest]).pow(2).sum(-1).amin(1).sqrt()


rows = []  # (method, ms per image, max relative error against exact)
for name, search in [("vqc KnnHead: pooling, matmul + min, fp32 (shipped, PyTorch)", head_search),
                     ("bf16 matmul, fp32 re-rank of 4 (PyTorch)", bf16_then_exact)]:
    ms, out = timed(search)
    rows.append((name, ms, relative_error(out)))
try:
    import faiss
    faiss.omp_set_num_threads(threads)
    flat = faiss.IndexFlatL2(bank.shape[1])
    flat.add(bank.numpy())
    q = queries.numpy()
    ms, out = timed(lambda: torch.from_numpy(flat.search(q, 1)[0][:, 0]).clamp_min(0).sqrt())
    rows.append((f"faiss {faiss.__version__} IndexFlatL2 (exact)", ms, relative_error(out)))
    hnsw = faiss.IndexHNSWFlat(bank.shape[1], 32)
    hnsw.add(bank.numpy())
    hnsw.hnsw.efSearch = 64
    ms, out = timed(lambda: torch.from_numpy(hnsw.search(q, 1)[0][:, 0]).clamp_min(0).sqrt())
    rows.append(("faiss IndexHNSWFlat M=32, efSearch 64 (approximate)", ms, relative_error(out)))
except ImportError:
    rows.append(("faiss: not installed (pip install faiss-cpu)", float("nan"), float("nan")))

# The search's share of the whole exported model in ONNX Runtime, from its profiler.
import onnxruntime as ort  # noqa: E402

with tempfile.TemporaryDirectory() as tmp:
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tmp) / "profile")
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(cached_onnx(model)), options, providers=["CPUExecutionProvider"])
    plans = [plan for chunk in model.planned_chunks(paths[:32]) for plan in chunk]
    batch = np.ascontiguousarray(np.stack([plan.inputs[0] for plan in plans]).transpose(0, 3, 1, 2))
    for _ in range(4):
        session.run(None, {"images": batch})
    events = json.loads(Path(session.end_profiling()).read_text())
by_op = collections.Counter()
for event in events:
    if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
        by_op[event["args"]["op_name"]] += event["dur"]
total = sum(by_op.values())

print(f"machine: {platform.processor() or platform.machine()}, {threads} threads, torch {torch.__version__}, "
      f"onnxruntime {ort.__version__}, vqc {vqc.__version__}, {time.strftime('%Y-%m-%d')}")
print(f"queries: {per_image} patches per image x {len(paths)} test images of {Path(args.data).name}; "
      f"bank: {bank.shape[0]} x {bank.shape[1]}")
print("| search | ms per image | max relative distance error |")
print("|---|---:|---:|")
for name, ms, error in rows:
    print(f"| {name} | {ms:.2f} | {error:.1e} |")
print(f"ONNX Runtime, whole model, batch 32: {total / 4 / 32 / 1000:.2f} ms per image; search (MatMul + ReduceMin) "
      f"{(by_op['MatMul'] + by_op['ReduceMin']) / total:.0%}, convolutions {by_op['Conv'] / total:.0%}")
