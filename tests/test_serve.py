import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from vqc.data import read_split
from vqc.serve import create_app
from vqc.viz import picture_size


@pytest.fixture(scope="module")
def client(demo_model, tmp_path_factory):
    path = demo_model.save(tmp_path_factory.mktemp("serve") / "tiles.safetensors")
    return TestClient(create_app(path, max_upload_mb=1))


def _png(path) -> bytes:
    return path.read_bytes()


def test_inspect_multipart_and_raw_give_the_model_score(client, demo_model, demo_root):
    sample = next(s for s in read_split(demo_root, "test") if s.label)
    want = demo_model.predict([sample.path])[0]
    r = client.post("/v1/inspect", files={"file": (sample.path.name, _png(sample.path), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["score"] == pytest.approx(want.score, rel=1e-6)
    assert body["verdict"] == want.verdict and body["threshold"] == demo_model.threshold.value
    assert body["filename"] == sample.path.name and body["model"] == "tiles" and body["latency_ms"] > 0
    raw = client.post("/v1/inspect?heatmap=1", content=_png(sample.path), headers={"content-type": "image/png"})
    assert raw.json()["score"] == pytest.approx(want.score, rel=1e-6)
    heat = Image.open(io.BytesIO(base64.b64decode(raw.json()["heatmap_png"])))
    width, height = Image.open(sample.path).size
    assert heat.size == picture_size(width, height)  # the colour legend beneath


def test_batch(client, demo_root):
    samples = read_split(demo_root, "test")[:3]
    files = [("files", (s.path.name, _png(s.path), "image/png")) for s in samples]
    r = client.post("/v1/inspect/batch", files=files)
    assert r.status_code == 200, r.text
    assert [x["filename"] for x in r.json()["results"]] == [s.path.name for s in samples]


def test_bad_uploads_get_4xx_and_the_service_keeps_running(client, demo_root):
    r = client.post("/v1/inspect", files={"file": ("notes.txt", b"hello, not an image", "text/plain")})
    assert r.status_code == 422 and "notes.txt" in r.json()["detail"]
    good = _png(read_split(demo_root, "test")[0].path)
    r = client.post("/v1/inspect", files={"file": ("cut.png", good[: len(good) // 2], "image/png")})
    assert r.status_code == 422 and "cut.png" in r.json()["detail"]
    r = client.post("/v1/inspect", content=b"\0" * (2 * 2**20), headers={"content-type": "image/png"})
    assert r.status_code == 413
    r = client.post("/v1/inspect", content=b"", headers={"content-type": "image/png"})
    assert r.status_code == 400
    assert client.get("/health").json()["status"] == "ok"
    assert client.post("/v1/inspect", content=good, headers={"content-type": "image/png"}).status_code == 200


def test_model_info_docs_and_page(client, demo_model):
    info = client.get("/v1/model").json()
    assert info["backbone"] == "efficientnet_lite0" and info["head"] == "knn"
    assert info["threshold"]["policy"] == demo_model.threshold.policy
    assert client.get("/openapi.json").json()["paths"].keys() >= {
        "/v1/inspect", "/v1/inspect/batch", "/health", "/metrics", "/v1/inspections", "/v1/inspections/{inspection_id}",
        "/v1/stats"}
    page = client.get("/")
    assert page.status_code == 200 and "vqc inspection" in page.text


def test_serve_on_a_busy_port_says_so_in_one_line_and_starts_nothing(demo_model_file, capsys):
    import socket

    from vqc.cli import main
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(demo_model_file), "--port", str(port), "--db", "none"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"vqc: error: cannot listen on 127.0.0.1:{port}: Address already in use (another "
                                "program there? choose another --port or --host)"]


def test_without_records_the_keyless_warning_does_not_speak_of_records(demo_model_file, caplog):
    import logging
    with caplog.at_level(logging.WARNING, logger="vqc.serve"):
        create_app(demo_model_file, db="none")
    warning = next(r.getMessage() for r in caplog.records if "--api-key-file" in r.getMessage())
    assert "records" not in warning and "anyone who can reach this service can inspect;" in warning


def test_every_positional_model_and_the_address_options_say_what_they_take(capsys):
    from vqc.cli import main
    for command, names in (("predict", ["model"]), ("evaluate", ["model"]), ("export", ["model"]),
                           ("serve", ["--host HOST", "--port PORT"])):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        lines = text[text.index("positional arguments"):].splitlines()
        for name in names:
            at = next(i for i, line in enumerate(lines) if line.strip().startswith(name))
            indent = len(lines[at]) - len(lines[at].lstrip())
            following = lines[at + 1]  # help too long for the name's line starts deeper on the next
            assert (lines[at].strip()[len(name):].strip() or
                    len(following) - len(following.lstrip()) > indent + len(name)), f"{command} {name}: no help"
