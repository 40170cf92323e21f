"""The service with records, keys and metrics (SQLite and PostgreSQL); predict --db; records export."""
import base64
import csv
import hashlib
import io

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from vqc.engines import EngineSettings
from vqc.access import add_key
from vqc.cli import main
from vqc.data import read_split
from vqc.errors import VqcError
from vqc.records import Records
from vqc.serve import create_app
from vqc.training.thresholds import choose_threshold
from vqc.viz import picture_size


@pytest.fixture(scope="module")
def model_path(demo_model, demo_root, tmp_path_factory):
    """The demo model with a threshold that separates the demo set, so both verdicts occur."""
    saved = demo_model.threshold
    # the demo's test split is 71 % defective: its F1-best threshold rejects most good parts
    demo_model.threshold = choose_threshold(demo_model, "f1", demo_root, allow_high_reject=True)
    path = demo_model.save(tmp_path_factory.mktemp("records-serve") / "tiles.safetensors")
    demo_model.threshold = saved
    return path


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    return path, add_key(path, "line1")


@pytest.fixture(scope="module")
def samples(demo_root):
    test = read_split(demo_root, "test")
    return [s for s in test if s.label == 0][:3] + [s for s in test if s.label == 1][:3]


@pytest.fixture
def service(model_path, key_file, db_url, tmp_path):
    keys, key = key_file
    app = create_app(model_path, engine=EngineSettings("torch"), db=db_url, image_store=str(tmp_path / "images"), keep_good=0,
                     api_key_file=str(keys))
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


def _metrics(client) -> dict:
    text = client.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_answer_is_on_record_and_can_be_queried(service, samples):
    answers = []
    for i, sample in enumerate(samples[:4]):
        r = service.post(f"/v1/inspect?station=cam1&part_id=P-{i}",
                         files={"file": (sample.path.name, sample.path.read_bytes(), "image/png")})
        assert r.status_code == 200, r.text
        answers.append((sample, r.json()))
    batch = [("files", (s.path.name, s.path.read_bytes(), "image/png")) for s in samples[4:]]
    r = service.post("/v1/inspect/batch", files=batch, data={"station": "cam2", "part_id": ["B-1", "B-2"]})
    assert r.status_code == 200, r.text
    answers += list(zip(samples[4:], r.json()["results"]))
    assert {a["verdict"] for _, a in answers} == {"ok", "defective"}

    for sample, answer in answers:
        row = service.get(f"/v1/inspections/{answer['id']}").json()
        data = sample.path.read_bytes()
        assert row["sha256"] == hashlib.sha256(data).hexdigest() == answer["sha256"]
        assert row["score"] == answer["score"] and row["verdict"] == answer["verdict"]
        assert (row["station"], row["part_id"]) == (answer["station"], answer["part_id"])
        assert row["size_bytes"] == len(data) and row["filename"] == sample.path.name
        assert row["model_version"] == answer["model_version"] and len(row["model_sha256"]) == 64
        assert row["engine"] == "torch" and row["latency_ms"] > 0 and row["policy"] == "f1"
        if answer["verdict"] == "defective":  # kept with its overlay; good ones not (keep_good=0)
            overlay = Image.open(io.BytesIO(base64.b64decode(row["overlay_png"])))
            assert (row["width"], row["height"]) == Image.open(sample.path).size
            assert overlay.size == picture_size(row["width"], row["height"])  # legend beneath
        else:
            assert row["overlay_png"] is None and row["image_path"] is None
    assert answers[5][1]["part_id"] == "B-2" and answers[0][1]["part_id"] == "P-0"

    def ids(query):
        r = service.get(f"/v1/inspections{query}")
        assert r.status_code == 200, r.text
        return {item["id"] for item in r.json()["items"]}
    assert ids("?verdict=defective") == {a["id"] for _, a in answers if a["verdict"] == "defective"}
    assert ids("?station=cam2") == {a["id"] for _, a in answers[4:]}
    median = sorted(a["score"] for _, a in answers)[3]
    assert ids(f"?min_score={median}") == {a["id"] for _, a in answers if a["score"] >= median}
    assert ids("?since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z") == set()
    pages, before = [], ""
    while True:
        page = service.get(f"/v1/inspections?limit=2{before}").json()
        pages.append([item["id"] for item in page["items"]])
        if page["next_before"] is None:
            break
        before = f"&before={page['next_before']}"
    assert sum(pages, []) == sorted((a["id"] for _, a in answers), reverse=True)

    stats = service.get("/v1/stats").json()["buckets"]
    assert sum(b["inspections"] for b in stats) == len(answers)
    assert sum(b["defective"] for b in stats) == sum(a["verdict"] == "defective" for _, a in answers)
    assert service.get("/v1/stats?by=shift&shifts=6,18&tz=Europe/Berlin").status_code == 200
    assert service.get("/v1/inspections/999999").status_code == 404
    assert service.get("/v1/inspections?verdict=bad").status_code == 422
    assert service.get("/v1/stats?tz=Mars/Olympus").status_code == 422
    r = service.post("/v1/inspect/batch", files=batch, data={"part_id": ["only one"]})
    assert r.status_code == 400 and "one part_id per image" in r.json()["detail"]

    metrics = _metrics(service)
    defective = sum(a["verdict"] == "defective" for _, a in answers)
    assert metrics[("vqc_inspections_total", (("verdict", "defective"),))] == defective
    assert metrics[("vqc_inspections_total", (("verdict", "ok"),))] == len(answers) - defective
    assert metrics[("vqc_model_latency_seconds_count", ())] == len(answers)
    assert metrics[("vqc_normalised_score_count", ())] == len(answers)
    assert metrics[("vqc_inspect_request_seconds_count", ())] == 5  # four single requests and one batch
    info = next(k for k in metrics if k[0] == "vqc_model_info")
    assert ("version", answers[0][1]["model_version"]) in info[1]


def test_keys_are_asked_on_v1_only_and_cors_is_off_by_default(model_path, key_file, samples, tmp_path):
    keys, key = key_file
    image = samples[0].path.read_bytes()
    app = create_app(model_path, engine=EngineSettings("torch"), db=str(tmp_path / "r.sqlite"), api_key_file=str(keys))
    with TestClient(app) as client:
        for method, path in (("post", "/v1/inspect"), ("get", "/v1/model"), ("get", "/v1/inspections"),
                             ("get", "/v1/inspections/1"), ("get", "/v1/stats")):
            r = getattr(client, method)(path, **({"content": image} if method == "post" else {}))
            assert r.status_code == 401 and "API key" in r.json()["detail"], path
        wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
        r = client.post("/v1/inspect", content=image, headers={"Authorization": f"Bearer {wrong}"})
        assert r.status_code == 401 and wrong not in r.text
        assert client.post("/v1/inspect", content=image, headers={"X-API-Key": wrong}).status_code == 401
        assert client.post("/v1/inspect", content=image, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert client.post("/v1/inspect", content=image, headers={"X-API-Key": key}).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/metrics").status_code == 200
        assert client.get("/").status_code == 200  # the page itself asks for the key
        r = client.get("/health", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in r.headers
    protected = create_app(model_path, engine=EngineSettings("torch"), db="none", api_key_file=str(keys), protect_monitoring=True,
                           cors_origins=("https://dash.plant",))
    with TestClient(protected) as client:
        assert client.get("/health").status_code == 401 and client.get("/metrics").status_code == 401
        r = client.get("/health", headers={"X-API-Key": key, "Origin": "https://dash.plant"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://dash.plant"
        assert client.get("/v1/inspections", headers={"X-API-Key": key}).status_code == 404  # --db none


def test_an_inspection_the_database_refuses_is_answered_503_never_200(model_path, samples, tmp_path):
    db = tmp_path / "r.sqlite"
    image = samples[0].path.read_bytes()
    with TestClient(create_app(model_path, engine=EngineSettings("torch"), db=str(db))) as client:
        assert client.post("/v1/inspect", content=image).status_code == 200
        records = client.app.state.inspector.records
        with records.database.begin() as connection:  # a real refusal by the database, as a full disk would be
            connection.execute(sa.text("CREATE TRIGGER refuse BEFORE INSERT ON inspections "
                                       "BEGIN SELECT RAISE(ABORT, 'disk full'); END"))
        r = client.post("/v1/inspect", content=image)
        assert r.status_code == 503 and "not recorded" in r.json()["detail"]
        assert records.count() == 1
        assert _metrics(client)[("vqc_inspections_unrecorded_total", ())] == 1
        with records.database.begin() as connection:
            connection.execute(sa.text("DROP TRIGGER refuse"))
        assert client.post("/v1/inspect", content=image).status_code == 200  # still running
        assert records.count() == 2


def test_predict_records_and_records_export(model_path, db_url, samples, tmp_path, capsys):
    images = [str(s.path) for s in samples]
    assert main(["predict", str(model_path), *images, "--out", str(tmp_path / "p"), "--no-overlays",
                 "--engine", "torch", "--db", db_url, "--station", "bench", "--image-store", str(tmp_path / "im"),
                 "--keep-good", "0"]) == 0
    records = Records(db_url, tmp_path / "im")
    rows = records.find()[::-1]
    scored = list(csv.DictReader(open(tmp_path / "p" / "scores.csv")))
    assert [r["filename"] for r in rows] == [s.path.name for s in samples]
    assert [f"{r['score']:.6g}" for r in rows] == [s["score"] for s in scored]
    assert {r["station"] for r in rows} == {"bench"} and all(r["size_bytes"] > 0 for r in rows)
    assert {r["verdict"] for r in rows} == {"ok", "defective"}
    assert [bool(records.stored_file(r["overlay_path"])) for r in rows] == [r["verdict"] == "defective" for r in rows]
    records.close()
    out = tmp_path / "x.parquet"
    assert main(["records", "export", "--db", db_url, "--since", "2000-01-01", "--format", "parquet",
                 "--out", str(out)]) == 0
    import pyarrow.parquet as pq
    assert pq.read_table(out).column("sha256").to_pylist() == [r["sha256"] for r in rows]
    assert "exported 6 inspections" in capsys.readouterr().out
    assert main(["records", "export", "--db", db_url, "--since", "yesterday"]) == 2
    assert "not ISO 8601" in capsys.readouterr().err
    assert main(["records", "export", "--db", str(tmp_path / "typo.sqlite")]) == 2
    assert "typo.sqlite does not exist" in capsys.readouterr().err and not (tmp_path / "typo.sqlite").exists()


def test_keys_add_prints_the_key_once_and_stores_its_hash(tmp_path, capsys):
    from vqc.access import ApiKeys
    path = tmp_path / "keys.txt"
    assert main(["keys", "add", str(path), "--name", "line3"]) == 0
    key = capsys.readouterr().out.splitlines()[-1]
    assert key.startswith("vqc_") and key not in path.read_text() and (path.stat().st_mode & 0o777) == 0o600
    assert ApiKeys.from_file(path).check(key) == "line3" and ApiKeys.from_file(path).check(key + "x") is None
    assert ApiKeys.from_file(path).role("line3") == "operator"  # the least a key may do, unless asked
    assert main(["keys", "add", str(path), "--name", "lead", "--role", "admin"]) == 0
    assert capsys.readouterr().out.startswith("admin key lead") and ApiKeys.from_file(path).role("lead") == "admin"
    assert main(["keys", "list", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["  line3 (operator)", "  lead (admin)"]
    text = path.read_text()
    path.write_text(text.replace(" admin\n", "\n"))  # a line from before roles: an operator key
    assert ApiKeys.from_file(path).role("lead") == "operator"
    path.write_text(text.replace(" admin\n", " root\n"))
    with pytest.raises(VqcError, match="role 'root' is not one of operator, admin"):
        ApiKeys.from_file(path)
    path.write_text(text)
    assert main(["keys", "add", str(path), "--name", "line3"]) == 2
    assert "already has a key named line3" in capsys.readouterr().err
    path.write_text(f"line4 {key}\n")  # a key pasted in by mistake: refused, and not echoed
    assert main(["serve", "model.safetensors", "--api-key-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "line 1 is not 'NAME sha256:HEX [ROLE]'" in err and key not in err
