"""The model store (issue 24): versions, promotion and rollback under load, shadow, reviews, roles, update."""
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

import vqc
from vqc.engines import EngineSettings
from vqc.access import add_key
from vqc.data import read_split
from vqc.errors import VqcError
from vqc.modelfile import read_metadata, rewrite_metadata
from vqc.records import Inspection
from vqc.store.tables import AuditEntry, Review, ShadowScore
from vqc.store.versions import ModelStore
from vqc.threshold import Threshold

from .served import free_port


@pytest.fixture
def store(tmp_path, demo_model_file) -> ModelStore:
    store = ModelStore.open(tmp_path / "store", create=True)
    store.add(demo_model_file, "test")
    return store


def test_a_folder_that_is_no_store_is_refused_in_one_line_and_left_as_it_was(tmp_path, capsys):
    from vqc.cli import main
    empty = tmp_path / "empty"
    empty.mkdir()
    refusal = ("vqc: error: {0} is not a model store (no records.sqlite in it): make one with vqc models add "
               "MODEL --store {0}")
    for folder in (tmp_path / "nostore", empty):
        assert main(["models", "list", "--store", str(folder)]) == 2
        assert capsys.readouterr().err.splitlines() == [refusal.format(folder)]
    for source, said in ((empty, refusal.format(empty)),  # reviews: a store, or a records database
                         (tmp_path / "nostore", f"vqc: error: database file {tmp_path / 'nostore'} does not exist")):
        assert main(["evaluate", str(tmp_path / "m.safetensors"), "--from-records", str(source)]) == 2
        assert capsys.readouterr().err.splitlines() == [said]
    assert not (tmp_path / "nostore").exists() and not any(empty.iterdir())


def test_the_store_says_where_its_parts_are_and_a_line_on_a_folder_that_is_no_store_is_refused(store, tmp_path):
    from vqc.station.run import check_line
    version = store.versions()[0]["version"]
    assert store.path_of(version) == store.models_folder / f"{version}.safetensors"
    assert store.path_of(version).is_file() and Path(store.records_url) == store.folder / "records.sqlite"
    camera, nostore = tmp_path / "camera", tmp_path / "nostore"
    camera.mkdir()
    config = tmp_path / "line.yaml"
    config.write_text(f"store: {nostore}\nstations:\n  cam1:\n    trigger: camera\n"
                      f"    camera: {{kind: folder, folder: {camera}, trigger: free}}\n")
    with pytest.raises(VqcError) as refused:
        check_line(config)
    assert str(refused.value).splitlines() == [f"line.yaml: store: {nostore} is not a model store (no records.sqlite "
                                               f"in it): make one with vqc models add MODEL --store {nostore}"]
    assert not nostore.exists()


def test_promote_refuses_another_products_model_on_a_target_unless_asked(store, demo_model_file, tmp_path, capsys):
    from vqc.cli import main
    other = tmp_path / "metal_plate.safetensors"  # another part's model: another file, another name
    rewrite_metadata(demo_model_file, other, info={**read_metadata(demo_model_file)["info"], "note": "plates"})
    tire, plate = store.versions()[0], store.add(other, "test")
    s = ["--store", str(store.folder), "--target", "tire-line"]
    assert main(["models", "promote", tire["version"], *s]) == 0
    capsys.readouterr()
    assert main(["models", "promote", plate["version"], *s]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"vqc: error: {plate['version']} is a metal_plate model and tire-line runs {tire['name']} ({tire['version']}): "
        "to put another product's model on tire-line, promote it with --other-product (API: other_product true)"]
    assert store.deployment("tire-line")["live"] == tire["version"]
    assert main(["models", "promote", plate["version"], *s, "--other-product"]) == 0
    assert store.deployment("tire-line")["live"] == plate["version"]


def _halved(version: dict) -> Threshold:
    """The version's threshold at half its value."""
    stored = Threshold.of(version["evidence"]["threshold"])
    return Threshold(stored.value * 0.5, stored.policy, stored.details)


def _images(demo_root) -> list[Path]:
    return [s.path for s in read_split(demo_root, "test")]


def test_versions_are_file_hashes_with_parents_and_every_change_audited(store, demo_model_file, tmp_path):
    first = store.versions()[0]
    assert first["version"] == vqc.records.ModelIdentity.of(demo_model_file, "").version
    assert store.add(demo_model_file, "again")["version"] == first["version"]  # the same file: one version
    assert len(first["fit_manifest"]) == vqc.load(demo_model_file).info["n_train"]
    stored = Threshold.of(first["evidence"]["threshold"])
    lower = Threshold(stored.value * 0.5, "manual", stored.details)
    second = store.with_threshold(first["version"], lower, "ann")
    assert second["parent"] == first["version"] and second["version"] != first["version"]
    assert vqc.load(store.path_of(second["version"])).threshold == lower
    assert store.find(first["version"][:6])["version"] == first["version"]
    with pytest.raises(VqcError, match="no model version ffff"):
        store.get("ffff")
    with pytest.raises(VqcError, match="no earlier live version"):
        store.rollback("line", "ann")
    store.promote("line", first["version"], "ann")
    store.set_shadow("line", second["version"], "ann")
    assert store.deployment("line") == {"live": first["version"], "shadow": second["version"]}
    store.promote("line", second["version"], "bob")  # the shadow promoted: the slot empties
    assert store.deployment("line") == {"live": second["version"], "shadow": None}
    assert store.rollback("line", "bob") == first["version"]
    assert store.rollback("line", "bob") == second["version"]  # a rollback of a rollback goes forward again
    actions = [(r["actor"], r["action"], r["version"]) for r in store.audit_trail()][::-1]
    assert actions == [("test", "add", first["version"]), ("ann", "add", second["version"]),
                       ("ann", "promote", first["version"]), ("ann", "shadow", second["version"]),
                       ("bob", "promote", second["version"]), ("bob", "rollback", first["version"]),
                       ("bob", "rollback", second["version"])]


def test_header_rewrite_keeps_every_tensor(demo_model_file, demo_root, tmp_path):
    """The torch-free threshold change: the same scores before and after, a new threshold."""
    target = tmp_path / "rewritten.safetensors"
    rewrite_metadata(demo_model_file, target, threshold={"policy": "manual", "value": 1.5})
    assert read_metadata(target)["threshold"] == {"policy": "manual", "value": 1.5}
    before, after = vqc.load(demo_model_file), vqc.load(target)
    images = _images(demo_root)[:4]
    assert [p.score for p in after.predict(images)] == pytest.approx([p.score for p in before.predict(images)], rel=1e-6)
    assert after.info == before.info and after.threshold.value == 1.5
    with pytest.raises(VqcError, match="not a vqc model"):
        read_metadata(demo_root / "SOURCE.md")


class Service:
    """vqc serve on a model store, in a thread, on a free port."""

    def __init__(self, store: ModelStore, keys: Path | None, **settings):
        import uvicorn

        from vqc.serve import create_app
        self.app = create_app(None, store=store, target="line", api_key_file=str(keys) if keys else None,
                              engine=EngineSettings("onnx"), keep_good=1.0, **settings)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def served(store, tmp_path):
    keys = tmp_path / "keys.txt"
    admin, operator = add_key(keys, "alice", "admin"), add_key(keys, "oscar")
    first = store.versions()[0]
    second = store.with_threshold(first["version"], _halved(first), "test")
    store.promote("line", first["version"], "test")
    service = Service(store, keys)
    yield service, {"admin": admin, "operator": operator}, first["version"], second["version"]
    service.close()


def _bearer(key):
    return {"Authorization": f"Bearer {key}"}


def test_promote_and_rollback_under_8_clients_drop_nothing(served, store, demo_root):
    service, keys, first, second = served
    images = [p.read_bytes() for p in _images(demo_root)[:8]]
    answers, failures, stop = [], [], threading.Event()

    def client(n):
        with httpx.Client(base_url=service.url, headers=_bearer(keys["operator"]), timeout=60) as http:
            i = n
            while not stop.is_set():
                sent = time.monotonic()
                response = http.post("/v1/inspect", content=images[i % len(images)])
                if response.status_code != 200:
                    failures.append((response.status_code, response.text))
                else:
                    answers.append({**response.json(), "sent": sent})
                i += 1
    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    with httpx.Client(base_url=service.url, headers=_bearer(keys["admin"]), timeout=120) as admin:
        steps = []
        for action, body in (("promote", {"version": second}), ("rollback", None), ("promote", {"version": second})):
            time.sleep(1.5)
            response = admin.post(f"/v1/models/{action}", json=body)
            assert response.status_code == 200, response.text
            steps.append((response.json()["live"], time.monotonic()))
        time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert [live for live, _ in steps] == [second, first, second]
    with store.database.connect() as connection:
        recorded = {row.id: row.model_version for row in connection.execute(sa.select(Inspection.id, Inspection.model_version))}
    assert len(recorded) == len(answers) > 40
    assert all(recorded[a["id"]] == a["model_version"] for a in answers)  # each record names the version that judged
    assert {a["model_version"] for a in answers} == {first, second}
    tail = [a["model_version"] for a in answers if a["sent"] > steps[-1][1]]  # sent after the last promotion returned
    assert tail and set(tail) == {second}
    threshold_of = {v: vqc.load(store.path_of(v)).threshold.value for v in (first, second)}
    assert all(a["threshold"] == pytest.approx(threshold_of[a["model_version"]]) for a in answers)


def test_operator_keys_cannot_change_models_and_admin_actions_are_audited(served, store, demo_root):
    service, keys, first, second = served
    with httpx.Client(base_url=service.url, timeout=120) as http:
        for path, body in (("/v1/models/promote", {"version": second}), ("/v1/models/rollback", None),
                           ("/v1/models/shadow", {"version": second}), ("/v1/threshold", {"value": 1.0})):
            response = http.post(path, json=body, headers=_bearer(keys["operator"]))
            assert response.status_code == 403 and "oscar is an operator key" in response.json()["detail"]
        assert http.get("/v1/audit", headers=_bearer(keys["operator"])).status_code == 403
        assert http.post("/v1/models/promote", json={"version": "ffffffff"},
                         headers=_bearer(keys["admin"])).status_code == 404
        before = len(store.audit_trail())
        response = http.post("/v1/threshold", json={"value": 7.5, "note": "shift B"}, headers=_bearer(keys["admin"]))
        assert response.status_code == 200, response.text
        live = response.json()["live"]
        assert live not in (first, second) and store.get(live)["parent"] == first
        inspected = http.post("/v1/inspect", content=_images(demo_root)[0].read_bytes(),
                              headers=_bearer(keys["operator"])).json()
        assert inspected["model_version"] == live and inspected["threshold"] == 7.5
        assert http.post("/v1/models/rollback", headers=_bearer(keys["admin"])).json()["live"] == first
        trail = http.get("/v1/audit", headers=_bearer(keys["admin"])).json()["items"]
    new = trail[:len(trail) - before]
    assert [(r["actor"], r["action"]) for r in new][::-1] == [("alice", "add"), ("alice", "threshold"),
                                                              ("alice", "promote"), ("alice", "rollback")]
    with store.database.connect() as connection:  # nothing the operator tried left a row
        assert connection.execute(sa.select(sa.func.count()).select_from(AuditEntry)
                                  .where(AuditEntry.actor == "oscar")).scalar_one() == 0


def test_no_key_file_no_admin(store, demo_root):
    store.promote("line", store.versions()[0]["version"], "test")
    service = Service(store, None)
    try:
        response = httpx.post(f"{service.url}/v1/models/rollback", timeout=30)
        assert response.status_code == 403 and "without --api-key-file" in response.json()["detail"]
    finally:
        service.close()


def test_reviews_shadow_and_compare(served, store, demo_root):
    from vqc.store.reviews import reviewed_pool
    from vqc.store.shadow import compare
    service, keys, first, second = served
    operator = _bearer(keys["operator"])
    samples = read_split(demo_root, "test")
    with httpx.Client(base_url=service.url, timeout=120) as http:
        response = http.post("/v1/models/shadow", json={"version": second}, headers=_bearer(keys["admin"]))
        assert response.json() == {"target": "line", "live": first, "shadow": second}
        results = [http.post("/v1/inspect", content=s.path.read_bytes(), headers=operator).json() for s in samples]
        for sample, result in zip(samples, results):  # the operator tells the truth about each part
            label = "defective" if sample.label else "good"
            body = {"label": label, "defect_type": sample.defect if sample.label else None, "note": "checked"}
            reviewed = http.post(f"/v1/inspections/{result['id']}/review", json=body, headers=operator)
            assert reviewed.status_code == 200 and reviewed.json()["reviewer"] == "oscar"
        assert http.post("/v1/inspections/999999/review", json={"label": "good"}, headers=operator).status_code == 404
        assert http.post(f"/v1/inspections/{results[0]['id']}/review", json={"label": "fine"},
                         headers=operator).status_code == 422
    service.app.state.inspector.models.drain()
    candidate = vqc.load(store.path_of(second))
    expected = {r["id"]: p.score for r, p in zip(results, candidate.predict([s.path for s in samples]))}
    with store.database.connect() as connection:
        shadow = {row.inspection_id: row for row in connection.execute(sa.select(ShadowScore.__table__))}
        assert connection.execute(sa.select(sa.func.count()).select_from(Review)).scalar_one() == len(samples)
    assert set(shadow) == set(expected) and all(row.model_version == second for row in shadow.values())
    assert [shadow[i].score for i in expected] == pytest.approx(list(expected.values()), rel=1e-4)
    result = compare(store.database, first, second)
    truth = {r["id"]: s.label for r, s in zip(results, samples)}
    live_verdicts = {r["id"]: r["verdict"] for r in results}
    shadow_verdicts = {i: row.verdict for i, row in shadow.items()}
    good = [i for i in truth if truth[i] == 0]
    assert result["inspections"] == len(samples) and result["confirmed_good"] == len(good)
    assert result["agreement"] == pytest.approx(np.mean([live_verdicts[i] == shadow_verdicts[i] for i in truth]))
    assert result["live_side"]["false_rejects"] == sum(live_verdicts[i] == "defective" for i in good)
    assert result["candidate_side"]["false_rejects"] == sum(shadow_verdicts[i] == "defective" for i in good)
    assert result["candidate_side"]["confirmed_defects_passed"] == sum(
        shadow_verdicts[i] == "ok" for i in truth if truth[i] == 1)
    pool = reviewed_pool(store.database, store.images_folder, "reviews")
    assert [s.label for s in pool.samples] == [s.label for s in samples] and pool.unavailable == 0


def test_a_shadow_set_from_another_shell_scores_the_parts_inspected_while_it_opens(served, store, demo_root):
    """`vqc update` or `vqc models shadow` beside a running service: opening a new version takes a
    while (its graph is exported first, tens of seconds on a CPU); the parts inspected meanwhile
    wait in the shadow's queue and are scored by it once it is open, not left out of the comparison."""
    from vqc.store.shadow import compare
    service, keys, first, second = served
    models = service.app.state.inspector.models
    open_judge, opening = models.open_judge, threading.Event()

    def slow_open(path, shadow=False):  # as slow as a new version's export
        opening.set()
        time.sleep(3)
        return open_judge(path, shadow=shadow)
    models.open_judge = slow_open
    store.set_shadow("line", second, "another shell")
    assert opening.wait(10)  # the service follows the store within poll_s
    images = _images(demo_root)[:5]
    with httpx.Client(base_url=service.url, headers=_bearer(keys["operator"]), timeout=60) as http:
        ids = [http.post("/v1/inspect", content=p.read_bytes()).json()["id"] for p in images]
    assert models.shadow is None  # still opening: these parts were answered by the live model alone
    deadline = time.time() + 30
    while models.shadow is None and time.time() < deadline:
        time.sleep(0.1)
    assert models.shadow.identity.version == second
    models.drain()
    with store.database.connect() as connection:
        scored = dict(connection.execute(sa.select(ShadowScore.inspection_id, ShadowScore.model_version)).all())
    assert scored == {i: second for i in ids}
    assert compare(store.database, first, second)["inspections"] == len(images)


def test_update_adds_confirmed_false_rejects_to_the_knn_bank(demo_root, tmp_path):
    from vqc.training.update import update_model
    good = sorted((demo_root / "train" / "good").iterdir())
    model = vqc.AnomalyModel(backbone="efficientnet_lite0", head="knn").fit(good[:6], progress=False)
    new = [s.path for s in read_split(demo_root, "test") if s.label == 0][:2]
    before = [p.score for p in model.predict(new)]
    bank = len(model.detector.head.bank)
    threshold = model.threshold
    done = update_model(model, new + new[:1])  # an image confirmed twice counts once
    per_image = done["patches_offered"] // 2
    assert done["images_added"] == 2 and done["bank"] - bank == int(np.ceil(2 * per_image * 0.1)) == len(
        model.detector.head.bank) - bank
    after = [p.score for p in model.predict(new)]
    assert all(a < b for a, b in zip(after, before))  # their own patches are in the bank now
    assert all(loo <= b + 1e-4 for loo, b in zip(done["added_leave_one_out_scores"], before))
    assert model.threshold.value == pytest.approx(threshold.value)  # the fit's normal scores, as documented
    assert len(model.info["fit_manifest"]) == 8
    with pytest.raises(VqcError, match="in the model already"):
        update_model(model, new)
    saved = vqc.load(model.save(tmp_path / "updated.safetensors"))
    assert [p.score for p in saved.predict(new)] == pytest.approx(after, rel=1e-5)


def test_a_station_follows_its_store_live_and_shadow_without_stopping(store, demo_root, tmp_path):
    """vqc station on a model store: promotion while parts come, and a shadow scoring beside it."""
    import shutil

    from vqc.station.config import load_line
    from vqc.station.line import Line
    first = store.versions()[0]
    second = store.with_threshold(first["version"], _halved(first), "test")["version"]
    first = first["version"]
    store.promote("cam1", first, "test")
    camera = tmp_path / "camera"
    camera.mkdir()
    config = tmp_path / "line.yaml"
    config.write_text(f"store: {store.folder}\nkeep_good: 1.0\nstations:\n  cam1:\n    trigger: camera\n"
                      f"    engine: onnx\n    camera: {{kind: folder, folder: {camera}, trigger: free}}\n")
    line = Line(load_line(config))
    images = _images(demo_root)

    def parts(batch, n):
        for i, image in enumerate(images[:n]):
            shutil.copy(image, camera / f"{batch}-{i}{image.suffix}")
        deadline = time.time() + 60
        while line.stations["cam1"].state.parts < want[0] + n:
            assert time.time() < deadline, line.status()
            time.sleep(0.1)
        want[0] += n
    want = [0]
    line.start()
    try:
        parts("a", 4)
        store.promote("cam1", second, "test")
        store.set_shadow("cam1", first, "test")
        deadline = time.time() + 60
        while line.stations["cam1"].models.shadow is None:
            assert time.time() < deadline
            time.sleep(0.1)
        parts("b", 4)
        line.stations["cam1"].models.drain()
        status = line.status()[0]
    finally:
        line.close()
    assert status["errors"] == 0 and status["model"] == f"{store.get(second)['name']} {second}"
    with store.database.connect() as connection:
        judged = [v for (v,) in connection.execute(sa.select(Inspection.model_version).order_by(Inspection.id))]
        shadow = {i: v for i, v in connection.execute(sa.select(ShadowScore.inspection_id, ShadowScore.model_version))}
    assert judged == [first] * 4 + [second] * 4
    assert sorted(shadow.values()) == [first] * 4 and len(shadow) == 4


def test_the_command_line_runs_the_store_and_reads_the_reviews(store, demo_root, demo_model_file, tmp_path, capsys):
    """vqc models / update / threshold --from-records / evaluate --from-records, on records made by vqc predict --db."""
    import shutil

    from vqc.cli import main
    from vqc.store.reviews import add_review
    samples = read_split(demo_root, "test")
    first = store.versions()[0]["version"]
    s = ["--store", str(store.folder)]
    assert main(["predict", str(demo_model_file), *[str(x.path) for x in samples], "--out", str(tmp_path / "out"),
                 "--db", str(store.records_url), "--image-store", str(store.images_folder), "--keep-good", "1",
                 "--no-overlays"]) == 0
    with store.database.connect() as connection:
        rows = connection.execute(sa.select(Inspection.id, Inspection.filename, Inspection.verdict)
                                  .order_by(Inspection.id)).all()
    by_name = {x.path.name: x for x in samples}
    for row in rows:  # the truth, and one defective-judged part the operator overrides to good
        sample = by_name[row.filename]
        add_review(store.database, row.id, "defective" if sample.label else "good", "op1",
                   sample.defect if sample.label else None)
    flagged = next(row for row in rows if row.verdict == "defective" and by_name[row.filename].label == 1)
    add_review(store.database, flagged.id, "good", "op1", note="a mark, not a defect")
    capsys.readouterr()
    assert main(["models", "promote", first[:6], "--target", "t", *s, "--by", "lead"]) == 0
    assert main(["update", "live", "--store", str(store.folder), "--target", "t", "--by", "lead"]) == 0
    out = capsys.readouterr().out
    assert "1 confirmed false rejects added" in out and "in shadow on t" in out
    candidate = out.split("version ")[1].split()[0]
    assert store.deployment("t") == {"live": first, "shadow": candidate} and store.get(candidate)["parent"] == first
    assert store.get(candidate)["evidence"]["update"]["images_added"] == 1
    assert main(["models", "list", *s]) == 0
    listing = capsys.readouterr().out
    assert "live on t" in listing and "shadow on t" in listing
    assert main(["models", "rollback", "--target", "t", *s]) == 2  # nothing live before
    assert "no earlier live version" in capsys.readouterr().err
    assert main(["models", "audit", *s]) == 0
    assert [line.split()[3] for line in capsys.readouterr().out.splitlines()][:3] == ["shadow", "update", "add"]
    copy = shutil.copy(demo_model_file, tmp_path / "copy.safetensors")
    # the reviews are the demo's test split, about 70 % defective: its F1-best threshold rejects most good parts
    assert main(["threshold", str(copy), "--policy", "f1", "--from-records", str(store.folder),
                 "--allow-high-reject"]) == 0
    out = capsys.readouterr().out
    assert f"{len(samples)} reviewed images" in out
    chosen = vqc.load(copy).threshold
    assert chosen.policy == "f1" and chosen.validated_on == f"reviewed records in {store.folder}"
    assert chosen.details["n_images"] == len(samples)
    assert main(["evaluate", str(copy), "--from-records", str(store.folder), "--engine", "torch"]) == 0
    assert "image AUROC" in capsys.readouterr().out


def test_update_fits_a_trained_head_again_on_its_fit_images_and_the_new_ones(demo_root, tmp_path):
    import shutil

    from vqc.training.update import update_model
    good = sorted((demo_root / "train" / "good").iterdir())
    fitted = tmp_path / "fit"
    fitted.mkdir()
    for path in good[:6]:
        shutil.copy(path, fitted / path.name)
    model = vqc.AnomalyModel(backbone="efficientnet_lite0", head="gmm").fit(fitted, progress=False)
    new = [s.path for s in read_split(demo_root, "test") if s.label == 0][:2]
    with pytest.raises(VqcError, match="pass --fit-data"):
        update_model(model, new)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(good[7], elsewhere / good[7].name)
    with pytest.raises(VqcError, match="holds 0 of the 6 images"):
        update_model(model, new, fit_data=elsewhere)
    done = update_model(model, new, fit_data=fitted)
    assert done["method"].startswith("gmm fitted again on 6 fit images")
    assert model.info["n_train"] + model.info["n_validation"] == 8 and len(model.info["fit_manifest"]) == 8
    reference = vqc.AnomalyModel(backbone="efficientnet_lite0", head="gmm").fit(
        sorted(fitted.iterdir()) + new, progress=False)
    images = [s.path for s in read_split(demo_root, "test")][:3]
    assert [p.score for p in model.predict(images)] == pytest.approx([p.score for p in reference.predict(images)],
                                                                       rel=1e-4)
