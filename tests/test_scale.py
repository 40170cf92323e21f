"""Scaling out on Ray: sources, the resumable score store, per-category fits, and a real two-node
Ray cluster on loopback (scores equal to the local path's, from a model file and from a line
bundle; --threads in the engine each worker opens; a worker killed mid-job; cells and fits as tasks)."""
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import vqc
from vqc.cli import main
from vqc.engines import EngineSettings
from vqc.errors import VqcError
from vqc.loading import open_model
from vqc.training import ray_predict
from vqc.training.ray_predict import BatchResult, ScoringWorker, list_sources, ship_model
from vqc.training.ray_session import ray_session
from vqc.training.score_store import ScoreStore

from .conftest import shared_set


def stored_rows(folder: Path) -> list[dict]:
    return [row for part in sorted(folder.glob("part-*.parquet")) for row in pq.read_table(part).to_pylist()]


def test_sources_folders_globs_text_and_parquet_lists(demo_root, tmp_path):
    good = sorted((demo_root / "test" / "good").glob("*.png"))
    (tmp_path / "list.txt").write_text(f"# camera 1\n{os.path.relpath(good[0], tmp_path)}\n\n{good[1]}\n")
    pq.write_table(pa.table({"path": [str(good[1]), str(good[2])]}), tmp_path / "list.parquet")
    paths = list_sources([tmp_path / "list.txt", tmp_path / "list.parquet", str(demo_root / "test" / "good" / "*.png")])
    assert paths[:3] == [str(good[0]), str(good[1]), str(good[2])]  # absolute, each once, in order
    assert sorted(paths) == sorted(map(str, good))
    assert list_sources([demo_root / "test" / "crack"]) == [str(p) for p in sorted((demo_root / "test" / "crack").glob("*.png"))]

    (tmp_path / "notes.doc").write_text("x")
    with pytest.raises(VqcError, match="notes.doc"):
        list_sources([tmp_path / "notes.doc"])
    pq.write_table(pa.table({"a": ["x"], "b": ["y"]}), tmp_path / "two.parquet")
    with pytest.raises(VqcError, match="two.parquet.*column named path"):
        list_sources([tmp_path / "two.parquet"])
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(VqcError, match="broken.parquet"):
        list_sources([tmp_path / "broken.parquet"])


def test_score_store_resumes_and_never_stores_a_path_twice(tmp_path):
    folder = tmp_path / "scores"
    store = ScoreStore(folder)
    with pytest.raises(VqcError, match="another run"):
        ScoreStore(folder)  # one writer per folder
    assert store.add("/a.png", 1.5, 0.5, "ok") and store.add("/b.png", 2.5, 1.5, "defective")
    assert not store.add("/a.png", 9.0, 9.0, "ok")  # already written in this run
    store.close()
    (folder / ".part-x-000001.parquet.k2j3.tmp").write_bytes(b"PAR1 half a part")  # a killed run's leftover

    store = ScoreStore(folder)
    assert store.done == {"/a.png", "/b.png"}
    assert not list(folder.glob("*.tmp"))
    assert not store.add("/b.png", 9.0, 9.0, "ok")  # stored by the first run
    assert store.add("/c.png", 3.0, 2.0, None)
    store.flush()
    assert store.write_csv(tmp_path / "scores.csv") == 3
    store.close()
    rows = stored_rows(folder)
    assert sorted((r["path"], r["score"]) for r in rows) == [("/a.png", 1.5), ("/b.png", 2.5), ("/c.png", 3.0)]
    header, first = (tmp_path / "scores.csv").read_text().splitlines()[:2]
    assert (header, first) == ("path,score,normalised_score,verdict,warning,overlay", "/a.png,1.5,0.5000,ok,,")

    (folder / "part-zzz-000000.parquet").write_bytes(b"not parquet")
    with pytest.raises(VqcError, match="part-zzz-000000.parquet"):
        ScoreStore(folder)


def test_fit_per_category_skips_fitted_categories(demo_root, tmp_path, capsys):
    root = tmp_path / "root"
    root.mkdir()
    (root / "tile").symlink_to(demo_root)
    args = ["fit", str(root), "--per-category", "--option", "coreset_method=random", "--coreset", "0.02",
            "--out", str(tmp_path / "models")]
    assert main(args) == 0
    model = vqc.load(tmp_path / "models" / "tile.safetensors")
    assert model.info["n_train"] == 60 and model.threshold.policy == "false-reject-rate=0.01"
    before = (tmp_path / "models" / "tile.safetensors").stat().st_mtime_ns
    assert main(args) == 0
    assert "already fitted" in capsys.readouterr().out
    assert (tmp_path / "models" / "tile.safetensors").stat().st_mtime_ns == before
    assert main(["fit", str(root), "--per-category", "--threshold", "f1"]) == 2
    assert main(["fit", str(demo_root), "--ray"]) == 2
    assert "--per-category" in capsys.readouterr().err


# ---------------------------------------------------------------- a real Ray cluster on loopback

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(temp: Path, name: str, head_port: int, head: bool) -> subprocess.Popen:
    """`ray start` for one node on 127.0.0.1, in the foreground (--block) in its own process group,
    so stopping it stops exactly this node's processes; every port chosen free, so two nodes share
    this machine and nothing else is touched."""
    ray = str(Path(sys.executable).with_name("ray"))
    args = [ray, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
            "--object-store-memory", "300000000", "--temp-dir", str(temp), "--disable-usage-stats",
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
            "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port())]
    if head:
        args += ["--head", "--port", str(head_port), "--include-dashboard", "false"]
    else:
        args += ["--address", f"127.0.0.1:{head_port}"]
    log = temp / f"{name}.log"
    node = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while "Ray runtime started" not in log.read_text():
        if node.poll() is not None or time.time() > deadline:
            stop_node(node)
            pytest.fail(f"ray start ({name}) did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    return node


def stop_node(node: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(node.pid, sig)
        except ProcessLookupError:
            return
        try:
            node.wait(timeout=10)
            time.sleep(1)  # the group's other processes leave after the node's own
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and one worker node (1 CPU each), stopped however the tests end."""
    temp = Path(tempfile.mkdtemp(prefix="vqcray", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port = free_port()
    nodes = []
    with pytest.MonkeyPatch.context() as env:
        # Ray turns token authentication on for a head node when ~/.ray/auth_token exists (a local
        # ray.init() writes one) but not for a joining node or driver: the nodes and drivers of this
        # loopback cluster (they inherit the variable) say explicitly that they use none.
        env.setenv("RAY_AUTH_MODE", "disabled")
        try:
            nodes.append(start_node(temp, "head", port, head=True))
            nodes.append(start_node(temp, "worker", port, head=False))
            yield {"address": f"127.0.0.1:{port}", "temp": temp, "nodes": nodes}
        finally:
            for node in reversed(nodes):
                stop_node(node)
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def model_file(demo_model, tmp_path_factory) -> Path:
    return demo_model.save(tmp_path_factory.mktemp("ray") / "demo.safetensors")


def test_an_unreachable_cluster_is_one_line(model_file, demo_root, tmp_path, capsys):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    assert main(["predict", str(model_file), str(demo_root / "test" / "good"), "--ray-address", address,
                 "--out", str(tmp_path)]) == 2
    assert f"vqc: error: cannot reach the Ray cluster at {address}" in capsys.readouterr().err


def vqc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vqc.cli", *args]


def test_ray_scores_equal_the_local_scores(ray_cluster, model_file, tmp_path):
    bottle = shared_set("mvtec_bottle")
    images = sorted((bottle / "test").rglob("*.png"))
    out = tmp_path / "out"

    def predict(source: Path, *extra: str) -> str:
        run = subprocess.run(vqc_command("predict", str(model_file), str(source), "--ray", "--ray-address",
                                         ray_cluster["address"], "--workers", "2", "--out", str(out), *extra),
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stdout

    assert f"scored {len(images)} images (0 already scored" in predict(bottle / "test", "--csv")
    rows = {r["path"]: r for r in stored_rows(out / "scores")}
    assert len(rows) == len(stored_rows(out / "scores")) and sorted(rows) == [str(p) for p in images]

    local = vqc.load(model_file).scorer(EngineSettings("auto"))  # the local path: ONNX Runtime on this CPU
    for image, prediction in zip(images, local.predict_iter(images)):
        row = rows[str(image)]
        assert abs(row["score"] - prediction.score) <= 1e-5 * max(1.0, abs(prediction.score)), image
        assert abs(row["normalised_score"] - prediction.normalised_score) <= 1e-5 * max(1.0, abs(prediction.score))
        assert row["verdict"] == prediction.verdict
    assert len((out / "scores.csv").read_text().splitlines()) == len(images) + 1

    assert f"scored 0 images ({len(images)} already scored" in predict(bottle / "test")
    assert len(stored_rows(out / "scores")) == len(images)


@pytest.fixture(scope="module")
def bundle(model_file, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bundle") / "demo"
    assert main(["export", str(model_file), "--out", str(folder)]) == 0
    return folder


def read_csv(path: Path) -> tuple[list[str], dict[str, dict]]:
    with open(path, newline="") as f:
        table = csv.DictReader(f)
        rows = {row["path"]: row for row in table}
        return table.fieldnames, rows


def test_ray_scores_a_line_bundle_as_local_predict_does(ray_cluster, bundle, demo_root, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    good, crack = (sorted((demo_root / "test" / kind).glob("*.png")) for kind in ("good", "crack"))
    for source in good + crack:
        (images / f"{source.parent.name}-{source.name}").symlink_to(source)
    Image.open(good[0]).resize((120, 52)).save(images / "small.png")  # far smaller than the fitted ones: a warning
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    run = subprocess.run(vqc_command("predict", str(bundle), str(images), "--ray", "--ray-address",
                                     ray_cluster["address"], "--workers", "2", "--threads", "1", "--csv",
                                     "--out", str(ray_out)), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"vqc: warning: \S+small.png: image is 120 x 52 pixels", run.stderr)
    assert main(["predict", str(bundle), str(images), "--no-overlays", "--out", str(local_out)]) == 0

    ray_header, ray_rows = read_csv(ray_out / "scores.csv")
    local_header, local_rows = read_csv(local_out / "scores.csv")
    assert ray_header == local_header and "warning" in ray_header and "overlay" in ray_header
    assert sorted(ray_rows) == sorted(local_rows) == sorted(str(p) for p in images.iterdir())
    assert ray_rows[str(images / "small.png")]["warning"].startswith("image is 120 x 52 pixels")
    text = ("path", "verdict", "warning", "overlay")  # the overlay column empty in both (no overlays asked for)
    for path, local in local_rows.items():
        assert [ray_rows[path][k] for k in text] == [local[k] for k in text], path
    local_model = open_model(bundle, EngineSettings())  # as `vqc predict BUNDLE` opens it
    stored = {row["path"]: row for row in stored_rows(ray_out / "scores")}
    for prediction in local_model.predict_iter(sorted(images.iterdir())):
        row = stored[str(prediction.path)]
        assert abs(row["score"] - prediction.score) <= 1e-6, prediction.path
        assert abs(row["normalised_score"] - prediction.normalised_score) <= 1e-6, prediction.path
        assert abs(float(local_rows[str(prediction.path)]["score"]) - prediction.score) <= 6e-6 * abs(prediction.score)


def test_threads_reach_the_engine_each_worker_opens(ray_cluster, bundle, demo_root, tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(ray_predict, "predict_on_ray", lambda model, images, out, options, settings, **_:
                        asked.append((options, settings)) or BatchResult(1, 0, 1))
    assert main(["predict", str(bundle), str(demo_root / "test" / "good"), "--ray", "--threads", "3",
                 "--cpus-per-worker", "2", "--out", str(tmp_path)]) == 0
    ((options, settings),) = asked
    assert settings == EngineSettings("auto", 3, "fp32", False)
    with ray_session(ray_cluster["address"]) as ray:
        for given, threads in ((settings, 3), (EngineSettings(), 2)):  # without --threads: --cpus-per-worker
            worker = ScoringWorker(ship_model(ray, bundle, given, options, cluster_has_gpus=False,
                                              scratch=tmp_path))
            assert worker.model.engine_name == "onnx"
            assert worker.model.engine.session.get_session_options().intra_op_num_threads == threads


def scorer_processes(temp: Path) -> list[int]:
    """PIDs of the scoring actors of the cluster rooted at `temp`: `ray::` processes whose
    parent is one of this cluster's raylets."""
    def cmdline(pid: str) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    def parent(pid: str) -> str:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        except OSError:
            return ""

    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    raylets = {p for p in pids if "raylet" in cmdline(p) and str(temp) in cmdline(p)}
    return [int(p) for p in pids if parent(p) in raylets and cmdline(p).startswith("ray::")
            and "ScoringWorker" in cmdline(p)]


def test_a_killed_worker_costs_nothing_every_image_scored_once(ray_cluster, model_file, demo_root, tmp_path):
    """...and an unreadable image is reported in one line naming it, not scored, not fatal."""
    sources = sorted(demo_root.rglob("*.png"))
    sources = [p for p in sources if "ground_truth" not in p.parts]
    archive, n = tmp_path / "archive", 300  # several hundred distinct paths
    archive.mkdir()
    for i in range(n):
        (archive / f"{i:04d}.png").symlink_to(sources[i % len(sources)])
    (archive / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    job = subprocess.Popen(vqc_command("predict", str(model_file), str(archive), "--ray", "--ray-address",
                                       ray_cluster["address"], "--workers", "2", "--out", str(out)),
                           stdout=open(tmp_path / "stdout.txt", "w"), stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(iter(lambda: job.stderr.read(64), "")))
    reader.start()

    def images_done() -> int:
        counts = re.findall(rf"(\d+)/{n + 1}", "".join(stderr))
        return int(counts[-1]) if counts else 0

    deadline = time.time() + 240
    while images_done() < 40 and job.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    scorers = scorer_processes(ray_cluster["temp"])
    assert job.poll() is None and scorers, f"no job to interrupt: {''.join(stderr)[-2000:]}"
    done_at_kill = images_done()
    os.kill(scorers[0], signal.SIGKILL)  # one scoring worker, midway through the job

    job.wait(timeout=300)
    reader.join()
    assert job.returncode == 1, "".join(stderr)[-3000:]  # 1: one image skipped
    assert re.search(r"vqc: skipped: cannot read image \S+broken.png", "".join(stderr))
    assert done_at_kill < n
    rows = stored_rows(out / "scores")
    assert len(rows) == n and {r["path"] for r in rows} == {str(archive / f"{i:04d}.png") for i in range(n)}
    assert all(np.isfinite(r["score"]) for r in rows)
    assert f"scored {n} images (0 already scored, 1 unreadable)" in (tmp_path / "stdout.txt").read_text()


def test_benchmark_cells_and_category_fits_as_ray_tasks(ray_cluster, demo_root, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    for name in ("tile_a", "tile_b"):
        (root / name).symlink_to(demo_root)
    fit = vqc_command("fit", str(root), "--per-category", "--ray", "--ray-address", ray_cluster["address"],
                      "--option", "coreset_method=random", "--coreset", "0.02", "--out", str(tmp_path / "models"))
    run = subprocess.run(fit, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("tile_a", "tile_b"):
        assert vqc.load(tmp_path / "models" / f"{name}.safetensors").info["n_train"] == 60

    (tmp_path / "matrix.yaml").write_text(f"backbones: [efficientnet_lite0]\nheads: [knn]\ndata: [{root / 'tile_a'}]\n"
                                          "head_options:\n  knn: {coreset: 0.02, coreset_method: random}\n")
    bench = vqc_command("benchmark", "--config", str(tmp_path / "matrix.yaml"), "--out", str(tmp_path / "bench"),
                        "--ray", "--ray-address", ray_cluster["address"])
    run = subprocess.run(bench, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (cell,) = (tmp_path / "bench" / "cells").glob("*.json")
    record = json.loads(cell.read_text())
    assert record["status"] == "ok" and record["image_auroc"] > 0.6
    assert all((tmp_path / "bench" / o["file"]).is_file() for o in record["overlays"])  # stored by the driver
    assert (tmp_path / "bench" / "report.html").is_file()
    before = cell.read_text()
    rerun = subprocess.run(bench, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0 and cell.read_text() == before  # the same resumable store: nothing rerun
