"""Load test of `vqc serve` on loopback, with and without a records database, then bad uploads,
then a server killed with SIGKILL in the middle of a run.

    python bench/load_test.py [--model MODEL] [--clients 8] [--seconds 30] [--postgres auto|off|URL]

Without --model it fits the demo model first. Each server runs with an API key file, and every
request sends the key. The runs, each `--clients` concurrent clients for `--seconds`:
1. good uploads against `vqc serve --db none`, `--db SQLITE_FILE` and `--db POSTGRES_URL`: every
   answer is checked against the model's own score; with a database, the rows added must equal
   the number of 200 answers and each answered id must be on record with its hash and score.
   Latency p50/p99 are printed side by side.
2. good + bad uploads (not an image, a truncated PNG, a 50 MB file) against the SQLite server: each
   bad one must be answered 4xx (and recorded nowhere), each good one correctly.
3. crash, per database: the server is killed with SIGKILL halfway through a run and started again
   on the same database; every inspection answered 200 must be on record, whole.
--postgres auto (the default) starts a throwaway PostgreSQL server (tests/throwaway_postgres.py)
when its binaries are found; off leaves PostgreSQL out.
4. batching, on the default engine: the SQLite server with batching on (`--batch-wait-ms 5`) and
   off (0), side by side: served images/s against the same engine's batch-32 model-only rate
   (measured in this process first), p99 latency, and rows added against answers. Targets:
   served >= 70 % of the model-only rate and p99 <= 150 ms with batching on.
Exit code 1 on any failure or missed target.
"""
import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import sqlalchemy as sa

import vqc
from vqc.access import add_key
from vqc.data import read_split
from vqc.training.demo import demo_data
from vqc.records import Inspection, Records

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = [c.name for c in Inspection.__table__.columns if not c.nullable]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`vqc serve MODEL` in a subprocess on a free loopback port, its log in a file."""

    def __init__(self, model: str, db: str, key_file: Path, engine: str, log: Path, extra: tuple = ()):
        self.args = [sys.executable, "-m", "vqc.cli", "serve", model, "--engine", engine, "--db", db,
                     "--api-key-file", str(key_file), *extra]
        self.log, self.process, self.url = log, None, None

    def start(self, timeout: float = 300) -> "Server":
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with open(self.log, "a") as log:
            self.process = subprocess.Popen([*self.args, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"server did not start; its log: {self.log}\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def run(url: str, payloads: list[tuple[str, bytes, float | None]], clients: int, seconds: float, key: str,
        kill: Server | None = None) -> dict:
    """payloads: (name, body, expected score or None for a bad upload). With `kill`, that server
    gets SIGKILL halfway through; requests after that fail, and only the answered ones matter."""
    results, answered, lock = [], [], threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(seed: int):
        rng = random.Random(seed)
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
            while time.perf_counter() < deadline:
                name, body, expected = rng.choice(payloads)
                start = time.perf_counter()
                try:
                    r = http.post(f"{url}/v1/inspect", files={"file": (name, body, "image/png")})
                    status, answer = r.status_code, (r.json() if r.headers.get("content-type", "").startswith(
                        "application/json") else {})
                except httpx.HTTPError as exc:
                    status, answer = 0, {"detail": repr(exc)}
                    time.sleep(0.05)  # a killed server: do not spin on refused connections
                latency = time.perf_counter() - start
                if expected is None:
                    ok = 400 <= status < 500
                else:
                    ok = status == 200 and abs(answer["score"] - expected) <= 1e-4 * abs(expected)
                with lock:
                    results.append((expected is not None, ok, status, latency))
                    if status == 200:
                        answered.append(answer)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    killer = threading.Timer(seconds / 2, kill.kill) if kill else None
    start = time.perf_counter()
    for t in threads + ([killer] if killer else []):
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    good = sorted(lat for is_good, ok, _, lat in results if is_good and ok)
    return {"requests": len(results), "good": sum(r[0] for r in results),
            "bad": sum(not r[0] for r in results), "failed": sum(not r[1] for r in results),
            "statuses": sorted({r[2] for r in results}), "answered": answered,
            "p50_ms": 1000 * statistics.median(good) if good else float("nan"),
            "p99_ms": 1000 * good[min(len(good) - 1, int(0.99 * len(good)))] if good else float("nan"),
            "throughput_rps": len(results) / elapsed}


def check_records(url: str, answered: list[dict]) -> dict:
    """Which answered inspections are missing from the database (or differ), which rows lack a
    value, and (SQLite) whether the file passes its integrity check."""
    records = Records(url)
    try:
        with records.database.connect() as connection:
            rows = {row.id: row for row in connection.execute(sa.select(Inspection.__table__))}
            integrity = (connection.exec_driver_sql("PRAGMA integrity_check").scalar()
                         if records.database.dialect.name == "sqlite" else "n/a")
    finally:
        records.close()
    missing = [a["id"] for a in answered if a["id"] not in rows or rows[a["id"]].sha256 != a["sha256"]
               or rows[a["id"]].score != a["score"]]
    incomplete = [i for i, row in rows.items() if any(getattr(row, c) is None for c in REQUIRED)]
    return {"rows": len(rows), "missing": missing, "incomplete": incomplete, "integrity": integrity}


def crash_run(model: str, db: str, key_file: Path, key: str, payloads: list, clients: int, seconds: float,
              engine: str, log: Path) -> dict:
    """Load the server, SIGKILL it halfway, start it again on the same database, check the records."""
    server = Server(model, db, key_file, engine, log).start()
    try:
        before = check_records(db, [])["rows"]
        r = run(server.url, payloads, clients, seconds, key, kill=server)
        check = check_records(db, r["answered"])
        restarted = Server(model, db, key_file, engine, log).start()  # the same database, after the crash
        try:
            health = httpx.get(f"{restarted.url}/health", timeout=10).json()
        finally:
            restarted.stop()
    finally:
        server.stop()
    return {"answered": len(r["answered"]), "rows_added": check["rows"] - before, **check,
            "healthy_after_restart": health.get("database") == "ok"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--only-batching", action="store_true", help="run part 4 only")
    parser.add_argument("--postgres", default="auto", help="auto: a throwaway server if PostgreSQL is installed; "
                        "off; or a postgresql:// URL")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vqc-load-"))
    model_path = args.model or str(vqc.AnomalyModel().fit(demo_data(), progress=False).save(tmp / "demo.safetensors"))
    model = vqc.load(model_path)
    samples = read_split(demo_data(), "test")
    good = [(s.path.name, s.path.read_bytes(), p.score)
            for s, p in zip(samples, model.predict([s.path for s in samples]))]
    png = good[0][1]
    bad = [("notes.txt", b"this is not an image" * 10, None), ("truncated.png", png[: len(png) // 3], None),
           ("huge.png", os.urandom(50 * 2**20), None)]
    key_file = tmp / "keys.txt"
    key = add_key(key_file, "load-test")
    log = tmp / "servers.log"

    with ExitStack() as stack:
        databases = {"none": "none", "sqlite": f"sqlite:///{tmp / 'records.sqlite'}"}
        if args.postgres == "auto":
            sys.path.insert(0, str(ROOT))  # the tests' throwaway server
            from tests.throwaway_postgres import binaries, fresh_database, throwaway_postgres
            if binaries():
                databases["postgresql"] = fresh_database(stack.enter_context(throwaway_postgres()))
            else:
                print("no PostgreSQL binaries found: PostgreSQL left out (apt-get install postgresql)")
        elif args.postgres != "off":
            databases["postgresql"] = args.postgres
        failures = 0 if args.only_batching else _runs(model_path, databases, good, bad, key_file, key, args, log)
        return max(failures, _batching_runs(model_path, good, key_file, key, args, log, tmp))


def model_only_rate(model_path: str, engine: str, batch: int = 32) -> float:
    """Images/s of the engine on ready uint8 inputs, batch `batch`: what serving could reach."""
    from vqc.loading import open_model
    from vqc.engines import EngineSettings
    model = open_model(model_path, EngineSettings(engine))
    plans = [plan for chunk in model.planned_chunks([s.path for s in read_split(demo_data(), "test")]) for plan in chunk]
    inputs = np.stack([plan.inputs[0] for plan in plans])
    images = np.ascontiguousarray(np.resize(inputs, (batch, *inputs.shape[1:])).transpose(0, 3, 1, 2))
    model.run_batch(images, None)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        model.run_batch(images, None)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def _batching_runs(model_path, good, key_file, key, args, log, tmp) -> int:
    rate = model_only_rate(model_path, args.engine)
    print(f"batching, engine {args.engine}: model-only rate at batch 32 {rate:.1f} images/s; target: served >= "
          f"{0.7 * rate:.1f} images/s (70 %) and p99 <= 150 ms with batching on")
    print(f"{'batching':>12}: {'requests':>8} {'failed':>6} {'200s':>6} {'rows added':>10} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'images/s':>9} {'of model-only':>13}")
    failures = 0
    for name, wait in (("on (5 ms)", "5"), ("off", "0")):
        db = f"sqlite:///{tmp / f'batching-{wait}.sqlite'}"
        server = Server(model_path, db, key_file, args.engine, log, ("--batch-wait-ms", wait)).start()
        try:
            start = time.perf_counter()
            r = run(server.url, good, args.clients, args.seconds, key)
            served = len(r["answered"]) / (time.perf_counter() - start)
            check = check_records(db, r["answered"])
        finally:
            server.stop()
        failures += r["failed"] + len(check["missing"]) + abs(check["rows"] - len(r["answered"]))
        print(f"{name:>12}: {r['requests']:>8} {r['failed']:>6} {len(r['answered']):>6} {check['rows']:>10} "
              f"{r['p50_ms']:>7.0f} {r['p99_ms']:>7.0f} {served:>9.1f} {served / rate:>12.0%}")
        if wait != "0" and (served < 0.7 * rate or r["p99_ms"] > 150):
            print(f"target missed with batching on: {served:.1f} images/s ({served / rate:.0%} of model-only), "
                  f"p99 {r['p99_ms']:.0f} ms")
            failures += 1
    return 1 if failures else 0


def _runs(model_path, databases, good, bad, key_file, key, args, log) -> int:
    print(f"vqc serve on 127.0.0.1, engine {args.engine}, {args.clients} clients x {args.seconds:.0f} s, "
          f"{os.cpu_count()} CPUs, every request with an API key; server logs: {log}")
    failures = 0
    print(f"{'--db':>12}: {'requests':>8} {'failed':>6} {'200s':>6} {'rows added':>10} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'requests/s':>10}")
    for name, db in databases.items():
        server = Server(model_path, db, key_file, args.engine, log).start()
        try:
            before = check_records(db, [])["rows"] if db != "none" else 0
            r = run(server.url, good, args.clients, args.seconds, key)
            check = check_records(db, r["answered"]) if db != "none" else None
        finally:
            server.stop()
        rows = "-" if check is None else str(check["rows"] - before)
        failures += r["failed"] + (0 if check is None else len(check["missing"]) + len(check["incomplete"]) + abs(
            check["rows"] - before - len(r["answered"])))
        print(f"{name:>12}: {r['requests']:>8} {r['failed']:>6} {len(r['answered']):>6} {rows:>10} "
              f"{r['p50_ms']:>7.0f} {r['p99_ms']:>7.0f} {r['throughput_rps']:>10.1f}")

    db = databases["sqlite"]
    server = Server(model_path, db, key_file, args.engine, log).start()
    try:
        before = check_records(db, [])["rows"]
        r = run(server.url, good + bad * 3, args.clients, args.seconds, key)
        alive = httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    finally:
        server.stop()
    check = check_records(db, r["answered"])
    added = check["rows"] - before
    failures += r["failed"] + len(check["missing"]) + abs(added - len(r["answered"])) + (not alive)
    print(f"good + bad uploads (sqlite): {r['requests']} requests ({r['good']} good, {r['bad']} bad), {r['failed']} "
          f"failed, statuses {r['statuses']}, good p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms; "
          f"{added} rows added for {len(r['answered'])} answers 200; healthy after the run: {alive}")

    for name, db in databases.items():
        if db == "none":
            continue
        c = crash_run(model_path, db, key_file, key, good, args.clients, args.seconds, args.engine, log)
        failures += len(c["missing"]) + len(c["incomplete"]) + (c["integrity"] not in ("ok", "n/a")) + (
            not c["healthy_after_restart"]) + (c["answered"] == 0)
        print(f"crash ({name}): SIGKILL at {args.seconds / 2:.0f} s; {c['answered']} answered 200 before it, "
              f"{c['rows_added']} rows added, {len(c['missing'])} answered but missing, {len(c['incomplete'])} "
              f"incomplete rows, integrity check {c['integrity']}, restarted healthy: {c['healthy_after_restart']}")
    key_logged = key in log.read_text()
    print(f"API key found in the server logs: {key_logged}")
    return 0 if failures == 0 and not key_logged else 1


if __name__ == "__main__":
    sys.exit(main())
