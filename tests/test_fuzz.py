"""Issue 20's fuzz run: thousands of mutated images and malformed bodies sent to a live `vqc serve`
on loopback, then the same files through `vqc predict` in one batch; and the memory of one huge
image, in both.

The inputs come from a seeded generator (numpy's, seed SEED), not from hypothesis: the run is
the same every time, and a failure names the case by its index. It is bounded by count and by
DEADLINE_S, and talks only to 127.0.0.1.
"""
import csv
import http.client
import io
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqc.cli import main
from vqc.data import read_split
from vqc.viz import legend_height

SEED = 20
N_IMAGES = 1700  # mutated and odd images, one request each (every tenth as a batch of three)
N_BODIES = 300  # malformed request bodies
DEADLINE_S = 480
RSS_GROWTH_LIMIT_MB = 200
PEAK_LIMIT_MB = 1536  # 1.5 GB: a process that scores one huge image stays under this
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp", "GIF": ".png"}


# ---------------------------------------------------------------- the inputs

def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (a decompression bomb's shape)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data +
                                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) +
            chunk(b"IEND", b""))


def mutated_images(rng: np.random.Generator, sources: list[Path], n: int) -> list[tuple[str, str, bytes]]:
    """(kind, file name, bytes): damaged encodings of real images, odd but valid images, bombs."""
    bases = []
    for path in sources:
        image = Image.open(path).convert("RGB")
        for fmt in ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF"):
            bases.append((fmt, _encode(image, fmt)))
    kinds = ["bitflip", "truncate", "splice", "delete", "header", "duplicate", "random", "empty", "bomb",
             "odd", "intact"]
    out = []
    for i in range(n):
        kind = kinds[int(rng.integers(len(kinds)))]
        fmt, data = bases[int(rng.integers(len(bases)))]
        data = bytearray(data)
        if kind == "bitflip":
            for _ in range(int(rng.integers(1, 33))):
                position = int(rng.integers(len(data)))
                data[position] ^= 1 << int(rng.integers(8))
        elif kind == "truncate":
            data = data[:int(rng.integers(len(data)))]
        elif kind == "splice":
            position = int(rng.integers(len(data)))
            data[position:position] = rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes()
        elif kind == "delete":
            start = int(rng.integers(len(data)))
            del data[start:start + int(rng.integers(1, 500))]
        elif kind == "header":
            data[:48] = rng.integers(0, 256, 48, dtype=np.uint8).tobytes()
        elif kind == "duplicate":
            start = int(rng.integers(len(data)))
            data[start:start] = data[start:start + int(rng.integers(1, 2000))]
        elif kind == "random":
            data = bytearray(rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes())
        elif kind == "empty":
            data = bytearray()
        elif kind == "bomb":
            side = int(rng.choice([20000, 60000, 2**31 - 1]))
            fmt, data = "PNG", bytearray(_png_claiming(side, side))
        elif kind == "odd":
            mode = str(rng.choice(["L", "RGB", "RGBA", "P", "LA", "1", "I;16", "CMYK"]))
            size = (int(rng.integers(1, 200)), int(rng.integers(1, 200)))
            fmt = {"CMYK": "JPEG", "I;16": "PNG", "LA": "PNG", "RGBA": "PNG"}.get(mode, str(rng.choice(["PNG", "BMP", "TIFF"])))
            array = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
            image = Image.fromarray(array).convert(mode) if mode not in ("I;16",) else Image.fromarray(
                array.astype(np.uint16) * 257)
            data = bytearray(_encode(image, fmt))
        out.append((kind, f"f{i:04d}_{kind}{SUFFIXES[fmt]}", bytes(data)))
    return out


def _part(name: bytes, data: bytes, boundary: bytes = b"b0undary", field: bytes = b"file") -> bytes:
    return (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" + field + b"\"; filename=\"" + name +
            b"\"\r\nContent-Type: image/png\r\n\r\n" + data + b"\r\n")


def malformed_bodies(rng: np.random.Generator, image: bytes, n: int) -> list[tuple[str, str, str, bytes]]:
    """(kind, path, content type, body): multipart bodies broken in the ways clients break them."""
    b = b"b0undary"
    good = _part(b"a.png", image) + b"--" + b + b"--\r\n"
    makers = {
        "no boundary": lambda: ("multipart/form-data", good),
        "wrong boundary": lambda: ("multipart/form-data; boundary=other", good),
        "empty boundary": lambda: ("multipart/form-data; boundary=", good),
        "no closing boundary": lambda: ("multipart/form-data; boundary=b0undary", _part(b"a.png", image)),
        "garbage part header": lambda: ("multipart/form-data; boundary=b0undary",
                                        b"--b0undary\r\n" + rng.integers(0, 256, 64, dtype=np.uint8).tobytes() +
                                        b"\r\n\r\n" + image + b"\r\n--b0undary--\r\n"),
        "header without colon": lambda: ("multipart/form-data; boundary=b0undary",
                                         b"--b0undary\r\nContent-Disposition form-data\r\n\r\nx\r\n--b0undary--\r\n"),
        "long file name": lambda: ("multipart/form-data; boundary=b0undary",
                                   _part(b"a" * int(rng.integers(256, 6000)) + b".png", image) + b"--b0undary--\r\n"),
        "odd file name": lambda: ("multipart/form-data; boundary=b0undary",
                                  _part(rng.choice([b"../../etc/passwd", b"\xff\xfe.png", b"a\"b.png", b"", b"con"]),
                                        image) + b"--b0undary--\r\n"),
        "huge header line": lambda: ("multipart/form-data; boundary=b0undary",
                                     b"--b0undary\r\nX-Pad: " + b"x" * 20000 + b"\r\n" + good[len(b"--b0undary\r\n"):]),
        "no file field": lambda: ("multipart/form-data; boundary=b0undary",
                                  b"--b0undary\r\nContent-Disposition: form-data; name=\"station\"\r\n\r\nline3\r\n"
                                  b"--b0undary--\r\n"),
        "two files": lambda: ("multipart/form-data; boundary=b0undary",
                              _part(b"a.png", image) + _part(b"b.png", image) + b"--b0undary--\r\n"),
        "empty multipart": lambda: ("multipart/form-data; boundary=b0undary", b""),
        "random bytes as multipart": lambda: ("multipart/form-data; boundary=b0undary",
                                              rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes()),
        "lf only": lambda: ("multipart/form-data; boundary=b0undary", good.replace(b"\r\n", b"\n")),
        "json body": lambda: ("application/json", json.dumps({"image": "aGVsbG8="}).encode()),
        "form urlencoded": lambda: ("application/x-www-form-urlencoded", b"file=%89PNG&station=" + b"s" * 500),
        "mixed": lambda: ("multipart/mixed; boundary=b0undary", good),
        "station too long": lambda: ("multipart/form-data; boundary=b0undary",
                                     b"--b0undary\r\nContent-Disposition: form-data; name=\"station\"\r\n\r\n" +
                                     b"s" * 500 + b"\r\n" + good),
        "mutated part": lambda: ("multipart/form-data; boundary=b0undary",
                                 bytes(np.bitwise_xor(np.frombuffer(good, np.uint8),
                                                      (rng.random(len(good)) < 0.002).astype(np.uint8) * 0x40))),
    }
    names = list(makers)
    out = []
    for i in range(n):
        kind = names[i % len(names)] if i < len(names) else names[int(rng.integers(len(names)))]
        content_type, body = makers[kind]()
        path = "/v1/inspect/batch" if rng.random() < 0.2 else "/v1/inspect"
        query = rng.choice(["", "?heatmap=1", "?heatmap=maybe", "?part_id=1&part_id=2", "?station=" + "x" * 300])
        out.append((kind, path + query, content_type, body))
    return out


# ---------------------------------------------------------------- the live service

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for process {pid}")


@pytest.fixture(scope="module")
def live_service(demo_model_file, tmp_path_factory):
    """`vqc serve` in its own process on a free loopback port, records in SQLite beside the model."""
    if not Path("/proc/self/status").exists():
        pytest.skip("reads the server's memory from /proc (Linux)")
    folder = tmp_path_factory.mktemp("fuzz-serve")
    model = folder / "tiles.safetensors"
    model.write_bytes(demo_model_file.read_bytes())
    port = _free_port()
    log = open(folder / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "vqc.cli", "serve", str(model), "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline:
        assert process.poll() is None, (folder / "server.log").read_text()[-2000:]
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("vqc serve did not answer /health within 240 s")
    yield port, process, folder / "server.log"
    process.terminate()
    process.wait(timeout=30)
    log.close()


class Client:
    """One keep-alive connection; counts the times the server dropped it without an answer."""

    def __init__(self, port: int):
        self.port, self.resets, self.closed = port, 0, 0
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def send(self, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, bytes]:
        try:
            self.connection.request(method, path, body=body, headers=headers or {})
            response = self.connection.getresponse()
            data = response.read()
        except (ConnectionError, http.client.HTTPException, BrokenPipeError) as exc:
            self.resets += 1
            self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            return -1, repr(exc).encode()
        if (response.getheader("connection") or "").lower() == "close":  # said so: not a reset
            self.closed += 1
            self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        return response.status, data


def _multipart(files: list[tuple[str, bytes]], field: str = "file") -> tuple[bytes, str]:
    body = b"".join(_part(name.encode(), data, field=field.encode()) for name, data in files) + b"--b0undary--\r\n"
    return body, "multipart/form-data; boundary=b0undary"


def test_fuzz_the_live_service_and_predict_on_the_same_files(live_service, demo_root, demo_model_file, tmp_path):
    port, process, _ = live_service
    rng = np.random.default_rng(SEED)
    sources = [s.path for s in read_split(demo_root, "test")][::7]
    images = mutated_images(rng, sources, N_IMAGES)
    bodies = malformed_bodies(rng, sources[0].read_bytes(), N_BODIES)
    client = Client(port)
    for _ in range(10):  # warm-up: the engine's first batches, the records database's first rows
        client.send("POST", "/v1/inspect", sources[0].read_bytes(), {"content-type": "image/png"})
    start_rss = _rss_mb(process.pid)
    peak_rss = start_rss
    statuses: Counter = Counter()
    failures = []
    started = time.monotonic()
    sent = 0
    for i, (kind, name, data) in enumerate(images):
        if i % 10 == 9:
            batch = [(name, data), images[i - 1][1:], images[i - 2][1:]]
            body, content_type = _multipart(batch, "files")
            status, answer = client.send("POST", "/v1/inspect/batch", body, {"content-type": content_type})
        elif i % 2:
            body, content_type = _multipart([(name, data)])
            status, answer = client.send("POST", "/v1/inspect?heatmap=1", body, {"content-type": content_type})
        else:
            status, answer = client.send("POST", f"/v1/inspect?filename={name}", data, {"content-type": "image/png"})
        statuses[status] += 1
        sent += 1
        if status >= 500 or status < 0:
            failures.append((i, kind, name, status, answer[:200]))
        if i % 50 == 0:
            peak_rss = max(peak_rss, _rss_mb(process.pid))
        assert time.monotonic() - started < DEADLINE_S, f"the fuzz run passed its {DEADLINE_S} s bound at {sent}"
    for i, (kind, path, content_type, body) in enumerate(bodies):
        status, answer = client.send("POST", path, body, {"content-type": content_type})
        statuses[status] += 1
        sent += 1
        if status >= 500 or status < 0:
            failures.append((f"body {i}", kind, path, status, answer[:200]))
    end_rss = _rss_mb(process.pid)
    peak_rss = max(peak_rss, end_rss)
    seconds = time.monotonic() - started
    print(f"\nfuzz: {sent} requests ({N_IMAGES} mutated images, {N_BODIES} malformed bodies) in {seconds:.1f} s; "
          f"statuses {dict(sorted(statuses.items()))}; 5xx {sum(v for k, v in statuses.items() if k >= 500)}, "
          f"resets {client.resets}, closed by the server with 'Connection: close' {client.closed}; server RSS "
          f"{start_rss:.0f} MB after warm-up, {end_rss:.0f} MB at the end, {peak_rss:.0f} MB at most "
          f"(growth {end_rss - start_rss:+.0f} MB)")
    assert sent >= 2000
    assert not failures, failures[:10]
    assert client.resets == 0
    assert end_rss - start_rss < RSS_GROWTH_LIMIT_MB and peak_rss - start_rss < RSS_GROWTH_LIMIT_MB
    assert statuses[200] > 100  # the odd but valid images were scored, not all refused

    # the same image files through `vqc predict`, in one batch: rows + listed failures = files
    folder = tmp_path / "fuzz-files"
    folder.mkdir()
    for _, name, data in images:
        (folder / name).write_bytes(data)
    out = tmp_path / "predicted"
    code = main(["predict", str(demo_model_file), str(folder), "--out", str(out)])
    rows = list(csv.DictReader(open(out / "scores.csv")))
    listed = list(csv.DictReader(open(out / "unreadable.csv")))
    print(f"predict on the fuzz folder: {len(images)} files, {len(rows)} rows, {len(listed)} listed unreadable")
    assert code == 1
    assert len(rows) + len(listed) == len(images)
    assert {Path(r["path"]).name for r in rows} | {Path(r["path"]).name for r in listed} == {n for _, n, _ in images}
    assert all((out / r["overlay"]).is_file() for r in rows)


def test_a_malformed_body_leaves_the_keep_alive_connection_usable(live_service, demo_root):
    port, _, _ = live_service
    image = read_split(demo_root, "test")[0].path.read_bytes()
    rng = np.random.default_rng(SEED + 1)
    client = Client(port)
    body, content_type = _multipart([("ok.png", image)])
    for kind, path, broken_type, broken in malformed_bodies(rng, image, 19):  # each kind once
        status, answer = client.send("POST", path, broken, {"content-type": broken_type})
        assert 0 < status < 500, (kind, status, answer)
        status, answer = client.send("POST", "/v1/inspect", body, {"content-type": content_type})
        assert status == 200, (kind, status, answer)
    assert client.resets == 0


def test_no_key_sent_in_a_url_reaches_the_service_log(live_service):
    port, _, log = live_service
    client = Client(port)
    client.send("GET", "/v1/model?api_key=vqc_TOPSECRET123&station=s1")
    client.send("GET", "/v1/model?token=vqc_TOPSECRET456")
    time.sleep(0.5)
    text = log.read_text()
    assert "/v1/model?api_key=***&station=s1" in text  # the request is logged, its key is not
    assert "TOPSECRET" not in text


def _peak_while(pid: int, action) -> float:
    """The process's peak RSS (MB) while `action` runs: VmHWM reset first where the kernel allows."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        action()
        return _rss_mb(pid, "VmHWM")
    except OSError:  # no reset allowed: sample instead
        peak, done = [_rss_mb(pid)], threading.Event()

        def sample():
            while not done.is_set():
                peak.append(_rss_mb(pid))
                time.sleep(0.005)
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            action()
        finally:
            done.set()
            sampler.join()
        return max(peak)


def test_a_6000_square_upload_stays_under_1_5_gb(live_service, tmp_path):
    port, process, _ = live_service
    image = Image.new("L", (6000, 6000), 90)
    image.paste(200, (2900, 2900, 3100, 3100))  # a bright square: something to see on the overlay
    data = _encode(image, "PNG")
    answers = []
    peak = _peak_while(process.pid, lambda: answers.append(
        Client(port).send("POST", "/v1/inspect?heatmap=1", data, {"content-type": "image/png"})))
    status, body = answers[0]
    print(f"\n6000 x 6000 PNG of {len(data) // 1024} KB to /v1/inspect?heatmap=1: {status}, server peak RSS {peak:.0f} MB")
    assert status == 200
    heat = Image.open(io.BytesIO(__import__("base64").b64decode(json.loads(body)["heatmap_png"])))
    assert heat.size == (2048, 2048 + legend_height(2048))  # drawn at a bounded size, legend beneath
    assert peak < PEAK_LIMIT_MB


def test_predict_on_a_12000_square_png_stays_under_1_5_gb(demo_model_file, tmp_path):
    big = tmp_path / "huge.png"
    Image.new("L", (12000, 12000), 90).save(big)
    out = tmp_path / "o"
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(r.returncode); print(r.stderr.strip().splitlines()[-1]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "vqc.cli", "predict",
                           str(demo_model_file), str(big), "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    code, message, peak_kb = done.stdout.strip().splitlines()
    print(f"\npredict on a 12000 x 12000 PNG of {big.stat().st_size // 1024} KB: exit {code}, peak RSS "
          f"{int(peak_kb) / 1024:.0f} MB; {message}")
    assert code == "2" and message.startswith("vqc: error: image") and "huge.png is 12000 x 12000" in message
    assert int(peak_kb) / 1024 < PEAK_LIMIT_MB
    assert not (out / "scores.csv").exists()
