"""bench/gpu.py on the CPU: its tiny setting on the shipped demo data, as a subprocess."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from vqc.training.demo import demo_data

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
MODELS = ["lite0-knn", "lite0-nf"]
BATCHES = ["2", "4"]
PRECISIONS = ["fp32", "bf16"]


def test_gpu_bench_tiny_on_cpu(tmp_path):
    out = tmp_path / "out"
    # torch.compile on a CPU costs ~40 s of C++ compilation per model: left out here (the
    # compiled row then says so); the hand-run tiny setting covers it. One thread: on a small,
    # shared machine OpenMP threads spinning against other processes' can make batch-1 passes
    # seconds long.
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--data", str(demo_data()), "--out", str(out),
         "--models", ",".join(MODELS), "--precisions", ",".join(PRECISIONS), "--compile-precisions", "none"],
        capture_output=True, text=True, timeout=85, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]

    result = json.loads((out / "gpu_bench.json").read_text())
    assert result["device"] == "cpu" and result["date"] and result["machine"]["torch"]
    assert [r["model"] for r in result["records"]] == MODELS
    for record in result["records"]:
        assert record["status"] == "ok"
        assert record["n_train"] <= 8 and record["fit_seconds"] > 0
        assert list(record["precisions"]) == PRECISIONS
        for precision, p in record["precisions"].items():
            assert sorted(p["throughput"]) == BATCHES
            for batch in BATCHES:
                assert p["throughput"][batch]["status"] == "ok"
                assert p["throughput"][batch]["images_per_second"] > 0
            eager = p["latency_b1"]["eager"]
            assert eager["status"] == "ok" and 0 < eager["p50_ms"] <= eager["p99_ms"]
            assert p["latency_b1"]["cuda_graph"]["status"] == "n/a (needs CUDA)"
            assert p["latency_b1"]["compiled"]["status"].startswith("not asked")
            assert p["end_to_end_images_per_second"] > 0
            assert p["n_test"] <= 8
            for metric in ("image_auroc", "pixel_auroc"):
                assert not math.isnan(p[metric]) and 0 <= p[metric] <= 1, (record["model"], precision, metric)
            assert p["peak_memory_mb"] > 0
    assert record["head_fit"]["epochs"] == 1  # lite0-nf: --nf-epochs 1 from --tiny reached the head

    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("machine:") and result["date"] in lines[0]
    table = lines[1:]
    assert table[0].startswith("| model | precision | img/s b2 | img/s b4 |") and "peak RSS MB" in table[0]
    assert table[1].startswith("|---|")
    assert len(table) == 2 + len(MODELS) * len(PRECISIONS)
    for row in table[2:]:
        assert "n/a (needs CUDA)" in row and row.count("|") == table[0].count("|")
    assert (out / "gpu_bench.md").read_text().strip() == "\n".join(table)
