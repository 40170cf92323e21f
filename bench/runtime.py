"""The line runtime beside the full install: size, import time, cold start and memory of `vqc serve`.

    python bench/runtime.py [--model MODEL.safetensors] [--runtime-venv DIR] [--inspections 100]

The full install is this interpreter's environment; it serves the training model file (the
default engine, its export already cached). The runtime is a virtual environment with the
README's runtime command (`pip install .`, built in a temporary folder unless --runtime-venv
names one); it serves the line bundle exported from the same model. Printed side by side:
- installed size: `du` of site-packages;
- import time: a fresh interpreter importing what `vqc serve` needs for that model;
- cold start: from starting `vqc serve` to the first answered POST /v1/inspect;
- RSS after `--inspections` inspections of the demo's test images (VmRSS, and the peak VmHWM).
Targets for the runtime: cold start <= 3 s and RSS <= 400 MB; exit code 1 where one fails.
"""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLD_START_S, RSS_MB = 3.0, 400.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def inspect(port: int, path: Path) -> int:
    body, content_type = multipart(path)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", "/v1/inspect", body, {"Content-Type": content_type})
    response = connection.getresponse()
    response.read()
    return response.status


def memory_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def site_packages_mb(python: Path) -> int:
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    return int(subprocess.run(["du", "-sm", site], capture_output=True, text=True, check=True).stdout.split()[0])


def import_seconds(python: Path, modules: str) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([str(python), "-c", f"import {modules}"], check=True)
        best = min(best, time.perf_counter() - start)
    return best


def serve_run(vqc: Path, model: Path, images: list[Path], n: int, log: Path) -> dict:
    port = free_port()
    start = time.perf_counter()
    with open(log, "a") as out:
        server = subprocess.Popen([str(vqc), "serve", str(model), "--port", str(port), "--db", "none"],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"vqc serve {model} exited; its log: {log}")
            try:
                status = inspect(port, images[0])
                break
            except OSError:
                time.sleep(0.02)
        cold = time.perf_counter() - start
        assert status == 200, f"first inspection answered {status}"
        statuses = [inspect(port, images[i % len(images)]) for i in range(n)]
        rss, peak = memory_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"cold_start_s": cold, "rss_mb": rss, "peak_rss_mb": peak, "failed": sum(s != 200 for s in statuses)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a training model file (default: the demo model, fitted now)")
    parser.add_argument("--runtime-venv", help="a venv with the runtime install (default: built now)")
    parser.add_argument("--inspections", type=int, default=100)
    args = parser.parse_args()
    import vqc
    from vqc.training.demo import demo_data
    from vqc.training.export import export_bundle
    tmp = Path(tempfile.mkdtemp(prefix="vqc-runtime-"))
    model = Path(args.model) if args.model else vqc.AnomalyModel().fit(demo_data(), progress=False).save(tmp / "demo.safetensors")
    bundle = tmp / "bundle"
    export_bundle(vqc.load(model), bundle, source=model)
    venv = Path(args.runtime_venv) if args.runtime_venv else tmp / "runtime-venv"
    if not args.runtime_venv:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(ROOT)], check=True)
    images = sorted((demo_data() / "test").glob("*/*.png"))
    full_bin = Path(sys.executable).parent
    serve_run(full_bin / "vqc", model, images, 1, tmp / "warm.log")  # the full install's export cache, warmed
    sides = {
        "full install (model file)": (full_bin / "python", full_bin / "vqc", model, "vqc.serve, vqc.training.model"),
        "runtime (line bundle)": (venv / "bin" / "python", venv / "bin" / "vqc", bundle, "vqc.serve, vqc.bundle"),
    }
    rows = {}
    for name, (python, command, served, modules) in sides.items():
        rows[name] = {"site_packages_mb": site_packages_mb(python), "import_s": import_seconds(python, modules),
                      **serve_run(command, served, images, args.inspections, tmp / "serve.log")}
    print(f"vqc serve, demo model (efficientnet_lite0 + knn), {args.inspections} inspections, loopback; logs in {tmp}")
    print(f"| | installed (site-packages, MB) | import s | cold start to first answer s | RSS after "
          f"{args.inspections} MB | peak RSS MB | failed |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['site_packages_mb']} | {r['import_s']:.2f} | {r['cold_start_s']:.2f} | "
              f"{r['rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['failed']} |")
    runtime = rows["runtime (line bundle)"]
    misses = [f"cold start {runtime['cold_start_s']:.2f} s > {COLD_START_S} s"] * (runtime["cold_start_s"] > COLD_START_S)
    misses += [f"RSS {runtime['rss_mb']:.0f} MB > {RSS_MB} MB"] * (runtime["rss_mb"] > RSS_MB)
    misses += [f"{r['failed']} failed inspections ({n})" for n, r in rows.items() if r["failed"]]
    print("targets met" if not misses else "targets missed: " + "; ".join(misses))
    (tmp / "runtime.json").write_text(json.dumps(rows, indent=1))
    return 1 if misses else 0


if __name__ == "__main__":
    raise SystemExit(main())
