"""Load test of `vqc serve` on loopback: concurrent clients for a fixed time, then a run with bad uploads.

    python bench/load_test.py [--model MODEL] [--clients 8] [--seconds 30]

Without --model it fits the demo model first. It starts `vqc serve` on 127.0.0.1, sends the demo
test images from every client, checks each answer against the model's own score, and prints
latency p50/p99 and throughput. The second run mixes in bad uploads (not an image, a truncated
PNG, a 50 MB file): each must be answered 4xx, each good one correctly. Exit code 1 on any failure.
"""
import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

import vqc
from vqc.data import read_split
from vqc.demo import demo_data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(url: str, payloads: list[tuple[str, bytes, float | None]], clients: int, seconds: float) -> dict:
    """payloads: (name, body, expected score or None for a bad upload)."""
    results, lock = [], threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(seed: int):
        rng = random.Random(seed)
        with httpx.Client(timeout=60) as http:
            while time.perf_counter() < deadline:
                name, body, expected = rng.choice(payloads)
                start = time.perf_counter()
                try:
                    r = http.post(f"{url}/v1/inspect", files={"file": (name, body, "image/png")})
                    status, answer = r.status_code, (r.json() if r.headers.get("content-type", "").startswith(
                        "application/json") else {})
                except httpx.HTTPError as exc:
                    status, answer = 0, {"detail": repr(exc)}
                latency = time.perf_counter() - start
                if expected is None:
                    ok = 400 <= status < 500
                else:
                    ok = status == 200 and abs(answer["score"] - expected) <= 1e-4 * abs(expected)
                with lock:
                    results.append((expected is not None, ok, status, latency))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    good = sorted(lat for is_good, ok, _, lat in results if is_good and ok)
    return {"requests": len(results), "good": sum(r[0] for r in results),
            "bad": sum(not r[0] for r in results), "failed": sum(not r[1] for r in results),
            "statuses": sorted({r[2] for r in results}),
            "p50_ms": 1000 * statistics.median(good) if good else float("nan"),
            "p99_ms": 1000 * good[min(len(good) - 1, int(0.99 * len(good)))] if good else float("nan"),
            "throughput_rps": len(results) / elapsed}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--engine", default="torch")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="vqc-load-")
    model_path = args.model or str(vqc.AnomalyModel().fit(demo_data(), progress=False).save(Path(tmp) / "demo.safetensors"))
    model = vqc.load(model_path)
    samples = read_split(demo_data(), "test")
    good = [(s.path.name, s.path.read_bytes(), p.score)
            for s, p in zip(samples, model.predict([s.path for s in samples]))]
    png = good[0][1]
    bad = [("notes.txt", b"this is not an image" * 10, None), ("truncated.png", png[: len(png) // 3], None),
           ("huge.png", os.urandom(50 * 2**20), None)]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "vqc.cli", "serve", model_path, "--port", str(port),
                               "--engine", args.engine], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise SystemExit("server did not start")
        print(f"vqc serve on {url}, engine {args.engine}, {args.clients} clients x {args.seconds:.0f} s, "
              f"{os.cpu_count()} CPUs")
        failed = 0
        for title, payloads in (("good uploads", good), ("good + bad uploads", good + bad * 3)):
            r = run(url, payloads, args.clients, args.seconds)
            failed += r["failed"]
            print(f"{title:>20}: {r['requests']} requests ({r['good']} good, {r['bad']} bad), {r['failed']} failed, "
                  f"statuses {r['statuses']}, good p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
                  f"{r['throughput_rps']:.1f} requests/s")
        alive = httpx.get(f"{url}/health", timeout=5).status_code == 200
        print(f"server still healthy after the runs: {alive}")
        return 0 if failed == 0 and alive else 1
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
