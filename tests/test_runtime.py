"""The line runtime: `pip install vqc-inspect` (or `pip install .`) without the training stack scores exported bundles.

The first test blocks the training stack's imports in a fresh interpreter and drives the
torch-free modules; the second builds a real runtime virtual environment from this checkout
(from the package registry, as the README's runtime command does) and checks that it holds no
torch and scores the bottle test set as the full install does.
"""
from __future__ import annotations

import csv
import http.client
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from .conftest import shared_set

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "torchvision", "timm", "FrEIA", "scipy", "sklearn", "matplotlib", "safetensors", "onnx",
           "onnxscript", "yaml")
TORCH_FREE = ("vqc", "vqc.cli", "vqc.cli.options", "vqc.cli.fit", "vqc.cli.scoring", "vqc.cli.bench",
              "vqc.cli.serve", "vqc.cli.records", "vqc.cli.station", "vqc.cli.models", "vqc.bundle", "vqc.loading",
              "vqc.inspection", "vqc.batching", "vqc.scorefiles", "vqc.scoring", "vqc.geometry", "vqc.data", "vqc.engines",
              "vqc.engines.onnx", "vqc.engines.openvino", "vqc.serve", "vqc.records", "vqc.monitoring",
              "vqc.access", "vqc.viz", "vqc.files", "vqc.choices", "vqc.version", "vqc.errors", "vqc.progress",
              "vqc.station.config", "vqc.station.sources", "vqc.station.aravis", "vqc.station.delivery",
              "vqc.station.opcua", "vqc.station.mqtt", "vqc.station.webhook", "vqc.station.station",
              "vqc.station.line", "vqc.station.page", "vqc.station.run", "vqc.station.fake_camera",
              "vqc.live", "vqc.serve_lifecycle", "vqc.modelfile", "vqc.store.tables",
              "vqc.store.versions", "vqc.store.reviews", "vqc.store.shadow")
SITE_PACKAGES_LIMIT_MB = 400


def _blocking_prelude() -> str:
    return textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name.split(".")[0])
        sys.meta_path.insert(0, Block())
    """)


def test_the_torch_free_part_imports_no_training_package(demo_model, demo_root, tmp_path):
    """Every torch-free module imports with the training stack blocked, a bundle scores through
    them, and a training-only command says which install it needs in one line."""
    from vqc.training.export import export_bundle
    bundle = tmp_path / "tiles"
    export_bundle(demo_model, bundle)
    image = next((demo_root / "test" / "good").glob("*.png"))
    script = _blocking_prelude() + textwrap.dedent(f"""
        import importlib
        for name in {TORCH_FREE!r}:
            importlib.import_module(name)
        from vqc.loading import open_model
        pred = open_model({str(bundle)!r}).predict({str(image)!r})[0]
        print(repr(pred.score))
        from vqc.cli import main
        sys.exit(main(["fit", {str(demo_root)!r}, "--out", {str(tmp_path / 'm.safetensors')!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert float(done.stdout.split()[0]) == pytest.approx(demo_model.predict(image)[0].score, rel=1e-5)
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("vqc: error: vqc fit needs the training stack") and 'pip install "vqc-inspect[train]"' in error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scores(csv_path: Path) -> dict[str, float]:
    with open(csv_path, newline="") as f:
        return {Path(row["path"]).as_posix(): float(row["score"]) for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """A virtual environment with the runtime install of this checkout and its line extra (the README's command)."""
    shared_set("mvtec_bottle")  # its one user scores bottle: skip before the install, not after it
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", f"{REPO}[line]"],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        if "Could not find a version" in done.stderr or "No matching distribution" in done.stderr \
                or "Failed to establish a new connection" in done.stderr:
            pytest.skip(f"the runtime install needs the package registry: {done.stderr.strip().splitlines()[-1]}")
        raise AssertionError(done.stderr[-3000:])
    return venv


def test_the_runtime_install_holds_no_torch_and_scores_bottle_as_the_full_install(runtime_venv, bottle_knn, tmp_path):
    import vqc
    from vqc.cli import main
    from vqc.training.export import export_bundle
    root = shared_set("mvtec_bottle")
    listed = subprocess.run([str(runtime_venv / "bin" / "pip"), "list", "--format", "json"],
                            capture_output=True, text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert not names & {"torch", "torchvision", "timm", "freia"}, names
    assert not [n for n in names if n.startswith("nvidia-")], names
    site = next((runtime_venv / "lib").glob("python3*/site-packages"))
    size_mb = int(subprocess.run(["du", "-sm", str(site)], capture_output=True, text=True, check=True).stdout.split()[0])
    assert size_mb <= SITE_PACKAGES_LIMIT_MB, f"runtime site-packages take {size_mb} MB"

    knn, _ = bottle_knn
    nf = vqc.AnomalyModel(head="nf", head_options={"max_epochs": 2}).fit(root, progress=False)
    test_images = str(root / "test")
    for name, model in (("knn", knn), ("nf", nf)):
        source = model.save(tmp_path / f"bottle-{name}.safetensors")
        export_bundle(model, tmp_path / f"bottle-{name}", source=source)
        assert main(["predict", str(source), test_images, "--no-overlays", "--out", str(tmp_path / f"full-{name}")]) == 0
        done = subprocess.run([str(runtime_venv / "bin" / "vqc"), "predict", str(tmp_path / f"bottle-{name}"),
                               test_images, "--no-overlays", "--out", str(tmp_path / f"runtime-{name}")],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        full, runtime = _scores(tmp_path / f"full-{name}" / "scores.csv"), _scores(tmp_path / f"runtime-{name}" / "scores.csv")
        assert len(full) == 83 and full.keys() == runtime.keys()
        worst = max(abs(runtime[k] - full[k]) / abs(full[k]) for k in full)
        assert worst <= 1e-5, f"{name}: runtime and full install differ by {worst:.2e} relative"

    # the service and the records on the runtime: one inspection answered, recorded and exported
    bundle, port = tmp_path / "bottle-knn", _free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([str(runtime_venv / "bin" / "vqc"), "serve", str(bundle), "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        image = next((root / "test" / "broken_large").glob("*.png"))
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{image.name}\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        deadline, answer = time.time() + 60, None
        while time.time() < deadline and answer is None:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("POST", "/v1/inspect", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
                response = connection.getresponse()
                answer = (response.status, json.loads(response.read()))
            except OSError:
                time.sleep(0.3)
        assert answer is not None and answer[0] == 200, answer
        result = answer[1]["results"][0] if "results" in answer[1] else answer[1]
        assert result["score"] == pytest.approx(knn.predict(image)[0].score, rel=1e-5)
        assert result["verdict"] == "defective" and result["engine"] == "onnx"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    db = tmp_path / "bottle-knn.records.sqlite"
    done = subprocess.run([str(runtime_venv / "bin" / "vqc"), "records", "export", "--db", str(db), "--out",
                           str(tmp_path / "records.csv")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "records.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["filename"] == image.name and rows[0]["engine"] == "onnx"

    # a station on the runtime: a folder camera, the OPC UA server's nodes, the records
    from .line_peers import Plc
    folder, endpoint = tmp_path / "camera", f"opc.tcp://127.0.0.1:{_free_port()}/vqc/"
    folder.mkdir()
    parts = sorted((root / "test" / "broken_large").glob("*.png"))[:2]
    for part in parts:
        shutil.copy(part, folder / part.name)
    line = tmp_path / "line.yaml"
    line.write_text(f"opcua: {{server: '{endpoint}'}}\nstations:\n  cam1:\n    model: {bundle}\n"
                    f"    trigger: camera\n    camera: {{kind: folder, folder: {folder}, trigger: free}}\n")
    log = open(tmp_path / "station.log", "w")
    station = subprocess.Popen([str(runtime_venv / "bin" / "vqc"), "station", "run", str(line)], stdout=log,
                               stderr=subprocess.STDOUT)
    plc = None
    try:
        deadline = time.time() + 90
        while plc is None:
            assert station.poll() is None and time.time() < deadline, (tmp_path / "station.log").read_text()[-2000:]
            try:
                plc = Plc(endpoint).connect(["cam1"])
            except Exception:  # not listening yet
                time.sleep(0.5)
        while plc.read("cam1", "Sequence") < len(parts):
            assert time.time() < deadline, (tmp_path / "station.log").read_text()[-2000:]
            time.sleep(0.2)
        assert plc.read("cam1", "Result") == "NG"
        assert plc.read("cam1", "Score") == pytest.approx(knn.predict(parts[-1])[0].score, rel=1e-5)
    finally:
        if plc is not None:
            plc.close()
        station.terminate()
        station.wait(timeout=30)
        log.close()
    with sqlite3.connect(tmp_path / "line.records.sqlite") as records:
        assert [r for (r,) in records.execute("select filename from inspections order by id")] == \
            [f"cam1-{p.name}" for p in parts]


def test_the_runtime_install_names_a_model_path_that_is_no_model_as_such(tmp_path, demo_model_file, monkeypatch):
    """Only a real training model file is answered 'needs the full install'; a path that is not
    there, a text file and a picture are named for what they are."""
    from vqc.errors import VqcError
    from vqc.loading import open_model
    monkeypatch.setitem(sys.modules, "torch", None)  # the runtime install: no torch to find or import
    monkeypatch.setitem(sys.modules, "vqc.training.model", None)
    (tmp_path / "notes.txt").write_text("the model is on the other PC\n")
    from PIL import Image
    Image.new("RGB", (32, 32)).save(tmp_path / "part.png")
    answers = {}
    for name in ("missing.safetensors", "notes.txt", "part.png"):
        with pytest.raises(VqcError) as caught:
            open_model(tmp_path / name)
        answers[name] = str(caught.value)
    assert answers["missing.safetensors"] == f"model {tmp_path}/missing.safetensors does not exist"
    assert answers["notes.txt"].startswith(f"model file {tmp_path}/notes.txt is not a vqc model")
    assert answers["part.png"].startswith(f"model file {tmp_path}/part.png is not a vqc model")
    with pytest.raises(VqcError, match="is a training model file, which needs the full install"):
        open_model(demo_model_file)
