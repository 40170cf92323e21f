"""vqc studio: projects and uploads, fit jobs (queue, cancel, failure), roles, and the whole path
from an empty project to a promoted version in Chromium."""
import json
import shutil
import time

import pytest
from fastapi.testclient import TestClient

from vqc.engines import EngineSettings
from vqc.access import add_key
from vqc.store.versions import ModelStore
from vqc.studio.app import create_studio_app
from vqc.studio.jobs import progress
from vqc.studio.projects import place

from .studio_walk import CHROMIUM, CHROMIUM_ARGS, running_studio, small_png, walk_to_promoted


@pytest.fixture
def studio(tmp_path):
    """A studio on an empty store with an admin and an operator key: (client, store, admin, operator headers)."""
    keys = tmp_path / "keys.txt"
    admin, operator = add_key(keys, "quality", "admin"), add_key(keys, "line3", "operator")
    store = ModelStore.open(tmp_path / "store", create=True)
    with TestClient(create_studio_app(store, keys, poll_s=0.1)) as client:
        yield client, store, {"Authorization": f"Bearer {admin}"}, {"Authorization": f"Bearer {operator}"}


def _good_files(demo_root, n):
    return [("file", (f"good/{p.name}", p.read_bytes())) for p in sorted((demo_root / "train" / "good").glob("*.png"))[:n]]


def _wait(client, headers, job_id, states, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = next(j for j in client.get("/api/projects/tiles/jobs", headers=headers).json()["items"] if j["id"] == job_id)
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s: {job}")


def test_test_images_are_labelled_by_their_folder():
    assert place("magnetic_tile/test/crack/a.png", "test").defect == "crack"
    assert place("test/good/a.png", "test").label == "good"
    assert place("ground_truth/crack/a_mask.png", "test").role == "mask"
    assert place("anything/a.png", "good").folder == "train/good"
    with pytest.raises(Exception, match="a.png: a test image needs its folder"):
        place("a.png", "test")
    with pytest.raises(Exception, match="a folder named .. says no label"):
        place("test/../a.png", "test")


def test_upload_keeps_images_with_hashes_says_duplicates_and_names_a_non_image(studio, demo_root):
    client, store, admin, _ = studio
    client.post("/api/projects", json={"name": "tiles"}, headers=admin).raise_for_status()
    files = _good_files(demo_root, 3) + [("file", ("good/SOURCE.md", (demo_root / "SOURCE.md").read_bytes())),
                                         ("file", ("good/again.png", _good_files(demo_root, 1)[0][1][1]))]
    answer = client.post("/api/projects/tiles/images?kind=good", files=files, headers=admin)
    assert answer.status_code == 200
    report = answer.json()
    assert len(report["added"]) == 3 and report["images"]["train"] == 3
    assert report["duplicates"] == [{"name": "good/again.png", "duplicate_of": files[0][1][0]}]
    assert [r["name"] for r in report["refused"]] == ["good/SOURCE.md"]
    assert "SOURCE.md is not an image file" in report["refused"][0]["reason"]
    kept = json.loads((store.folder / "studio" / "tiles" / "images.json").read_text())
    import hashlib
    for row in kept:
        data = (store.folder / "studio" / "tiles" / "data" / row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
    assert client.post("/api/projects", json={"name": "../x"}, headers=admin).status_code == 422


def test_operator_key_cannot_fit_save_a_threshold_or_promote(studio, demo_root, demo_model_file, tmp_path):
    client, store, admin, operator = studio
    client.post("/api/projects", json={"name": "tiles"}, headers=operator).raise_for_status()
    assert client.post("/api/projects/tiles/images?kind=good", files=_good_files(demo_root, 2),
                       headers=operator).status_code == 200  # any key uploads
    named = shutil.copy(demo_model_file, tmp_path / "tiles.safetensors")  # a version of the project is named after it
    version = store.add(named, "test")["version"]
    refused = [client.post("/api/projects/tiles/fit", json={"preset": "fast"}, headers=operator),
               client.post(f"/api/projects/tiles/versions/{version}/threshold", json={"value": 1.0}, headers=operator),
               client.post(f"/api/projects/tiles/versions/{version}/promote", headers=operator)]
    assert [r.status_code for r in refused] == [403, 403, 403]
    assert "need an admin key (line3 is an operator key)" in refused[0].json()["detail"]
    assert client.get("/api/projects/tiles/jobs", headers=operator).json()["items"] == []
    assert store.deployment("serve")["live"] is None
    assert client.post(f"/api/projects/tiles/versions/{version}/shadow", headers=operator).status_code == 403
    assert client.post(f"/api/projects/tiles/versions/{version}/shadow", headers=admin).json()["shadow"] == version
    promoted = client.post(f"/api/projects/tiles/versions/{version}/promote", headers=admin).json()
    assert (promoted["live"], promoted["shadow"]) == (version, None)
    assert [a["actor"] for a in store.audit_trail(2)] == ["quality", "quality"]
    assert client.get("/api/projects", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_jobs_queue_per_project_and_a_cancel_leaves_no_version(studio, demo_root):
    client, store, admin, _ = studio
    client.post("/api/projects", json={"name": "tiles"}, headers=admin).raise_for_status()
    client.post("/api/projects/tiles/images?kind=good", files=_good_files(demo_root, 30), headers=admin).raise_for_status()
    first = client.post("/api/projects/tiles/fit", json={"preset": "fast"}, headers=admin).json()
    second = client.post("/api/projects/tiles/fit", json={"preset": "fast"}, headers=admin).json()
    assert (first["state"], second["state"]) == ("running", "queued")  # one job per project at a time
    assert client.post(f"/api/projects/tiles/jobs/{second['id']}/cancel", headers=admin).json()["state"] == "cancelled"
    deadline = time.time() + 120
    while "features" not in str(_wait(client, admin, first["id"], ("running",)).get("progress")):
        assert time.time() < deadline, "the fit showed no progress bar"
        time.sleep(0.3)
    cancelled = client.post(f"/api/projects/tiles/jobs/{first['id']}/cancel", headers=admin).json()
    assert cancelled["state"] == "cancelled" and cancelled["cancelled_by"] == "quality"
    time.sleep(1)  # a process that was not stopped would go on writing
    assert store.versions() == []
    jobs = store.folder / "studio" / "tiles" / "jobs"
    assert not (jobs / first["id"]).exists()  # the scratch folder with the half-made model is gone
    assert not list((store.folder).rglob("*.tmp")) and not (store.folder / "studio" / "tiles" / "results").exists()
    assert _wait(client, admin, second["id"], ("cancelled",))["state"] == "cancelled"  # never started
    assert client.post(f"/api/projects/tiles/jobs/{first['id']}/cancel", headers=admin).status_code == 422


def test_a_failed_fit_shows_its_one_line_reason(studio, demo_root):
    client, store, admin, _ = studio
    client.post("/api/projects", json={"name": "tiles"}, headers=admin).raise_for_status()
    client.post("/api/projects/tiles/images?kind=good", files=_good_files(demo_root, 1), headers=admin).raise_for_status()
    job = client.post("/api/projects/tiles/fit", json={"preset": "fast"}, headers=admin).json()
    failed = _wait(client, admin, job["id"], ("failed", "done"))
    assert failed["state"] == "failed"
    assert failed["error"] == "project tiles: a fit needs at least 2 good images (1 uploaded)"
    assert client.post("/api/projects/tiles/fit", json={"preset": "huge"}, headers=admin).status_code == 422


def test_progress_is_the_current_steps_latest_bar():
    log = "step: fitting on 9 good images\nfeatures:  10%|#  | 1/9\rfeatures:  55%|#####  | 5/9\r"
    assert progress(log) == {"step": "fitting on 9 good images", "bar": "features:  55%|#####  | 5/9", "percent": 55}
    assert progress(log + "step: adding the model to the store\n")["bar"] is None


@pytest.fixture
def browser_page():
    if not shutil.which("chromium"):
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the test extras)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        yield page
        browser.close()


def test_studio_walks_a_project_from_empty_to_promoted(browser_page, demo_root, tmp_path):
    from vqc.serve import create_app
    keys = tmp_path / "keys.txt"
    admin = add_key(keys, "quality", "admin")
    pictures = tmp_path / "pictures"
    pictures.mkdir()

    def shoot(step, selector):
        small_png(browser_page.locator(selector).screenshot(), pictures / f"studio-{step}.png")
    with running_studio(tmp_path / "store", keys) as url:
        seen = walk_to_promoted(browser_page, url, admin, demo_root, shoot)
    assert "refused SOURCE.md is not an image file" in seen["upload_report"]
    assert "0 images kept" in seen["upload_report"] and "2 duplicates not kept again" in seen["upload_report"]
    (frr_low, miss_low), (frr_high, miss_high) = seen["rates"]
    assert float(frr_low.rstrip(" %")) > float(frr_high.rstrip(" %"))  # a higher threshold rejects fewer good parts
    assert float(miss_low.rstrip(" %")) < float(miss_high.rstrip(" %"))  # and misses more defects
    assert float(seen["by_policy"][0].rstrip(" %")) <= 10  # false-reject-rate=0.1 on the 12 good test images
    assert sorted(p.name for p in pictures.iterdir()) == [f"studio-{s}.png" for s in
                                                          ("check", "compare", "fit", "images", "project", "ship", "threshold")]
    store = ModelStore.open(tmp_path / "store", create=True)
    assert store.get(seen["saved"])["parent"] == seen["fitted"]
    assert [a["action"] for a in store.audit_trail(3)] == ["promote", "threshold", "add"]
    with TestClient(create_app(None, store=store, engine=EngineSettings("torch"))) as service:  # what vqc serve --store runs
        model = service.get("/v1/model").json()
    assert model["version"] == seen["saved"] and model["threshold"]["value"] == pytest.approx(seen["threshold"])


def test_export_makes_a_downloadable_bundle_version_whose_parent_is_the_model(studio, demo_model_file, tmp_path):
    import io
    import zipfile
    client, store, admin, operator = studio
    client.post("/api/projects", json={"name": "tiles"}, headers=admin).raise_for_status()
    version = store.add(shutil.copy(demo_model_file, tmp_path / "tiles.safetensors"), "test")["version"]
    assert client.post(f"/api/projects/tiles/versions/{version}/export", headers=operator).status_code == 403
    job = client.post(f"/api/projects/tiles/versions/{version}/export", headers=admin).json()
    done = _wait(client, admin, job["id"], ("done", "failed"), timeout=300)
    assert done["state"] == "done", done.get("error")
    bundle = store.get(done["bundle_version"])
    assert (bundle["kind"], bundle["parent"], bundle["name"]) == ("bundle", version, "tiles")
    download = client.get(f"/api/projects/tiles/exports/{done['download']}", headers=operator)
    assert download.status_code == 200
    assert "tiles/bundle.json" in zipfile.ZipFile(io.BytesIO(download.content)).namelist()
    assert client.get("/api/projects/tiles/exports/..%2Fproject.json", headers=admin).status_code == 404


def test_vqc_studio_command_serves_the_page_and_keeps_keyless_use_on_this_machine(tmp_path, capsys):
    import socket
    import subprocess
    import sys
    import urllib.request

    from vqc.cli import main
    assert main(["studio", "--store", str(tmp_path / "store"), "--host", "0.0.0.0"]) == 2
    assert "--host 0.0.0.0 opens the studio to other machines: give --api-key-file" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    studio = subprocess.Popen([sys.executable, "-m", "vqc.cli", "studio", "--store", str(tmp_path / "store"),
                               "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert studio.stdout.readline().startswith(f"vqc studio on http://127.0.0.1:{port}/")
        deadline = time.time() + 60
        while True:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                assert time.time() < deadline, "the studio did not answer"
                time.sleep(0.3)
        assert "<title>vqc studio</title>" in page
        who = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/whoami", timeout=5).read())
        assert who == {"name": "local", "role": "admin"}
    finally:
        studio.terminate()
        studio.wait(timeout=30)


def test_images_from_a_folder_on_the_server_are_labelled_by_their_folders(studio, demo_root):
    client, _, admin, operator = studio
    client.post("/api/projects", json={"name": "tiles"}, headers=admin).raise_for_status()
    body = {"folder": str(demo_root / "test"), "kind": "test"}
    assert client.post("/api/projects/tiles/images/folder", json=body, headers=operator).status_code == 403
    report = client.post("/api/projects/tiles/images/folder", json=body, headers=admin).json()
    assert report["images"] == {"train": 0, "test_good": 12, "test_defective": 30, "masks": 0}
    missing = client.post("/api/projects/tiles/images/folder", json={**body, "folder": "/no/such/folder"}, headers=admin)
    assert missing.status_code == 422 and "folder /no/such/folder does not exist" in missing.json()["detail"]


def test_a_job_left_running_by_a_stopped_studio_is_failed_when_it_starts_again(tmp_path):
    store = ModelStore.open(tmp_path / "store", create=True)
    with TestClient(create_studio_app(store)) as client:
        client.post("/api/projects", json={"name": "tiles"}).raise_for_status()
    jobs = store.folder / "studio" / "tiles" / "jobs"
    jobs.mkdir()
    (jobs / "0123456789ab.json").write_text(json.dumps({"id": "0123456789ab", "project": "tiles", "kind": "fit",
                                                         "state": "running", "queued_at": "2026-01-01T00:00:00"}))
    with TestClient(create_studio_app(store)) as client:
        (job,) = client.get("/api/projects/tiles/jobs").json()["items"]
    assert (job["state"], job["error"]) == ("failed", "the studio stopped while this job ran")


def test_rates_and_policies_on_a_gallery():
    from vqc.errors import VqcError
    from vqc.studio.results import compare, policy_threshold, rates
    images = [{"name": f"good/{i}.png", "label": "good", "score": s, "verdict": "ok", "overlay": f"{i}.png"}
              for i, s in enumerate([1.0, 2.0, 3.0, 4.0])]
    images += [{"name": f"crack/{i}.png", "label": "defective", "score": s, "verdict": "defective", "overlay": "x.png"}
               for i, s in enumerate([3.5, 5.0])]
    gallery = {"images": images, "normal_scores": [1.0, 1.5], "version": "aaaa"}
    assert rates(gallery, 3.0) == {"threshold": 3.0, "false_reject_rate": 0.5, "miss_rate": 0.0, "n_good": 4,
                                   "n_defective": 2}
    assert rates(gallery, 4.5)["miss_rate"] == 0.5
    assert policy_threshold(gallery, "false-reject-rate=0.25")["false_reject_rate"] <= 0.25
    with pytest.raises(VqcError, match="33% of its images are defective"):
        policy_threshold(gallery, "cost")  # a test set's share of defects is not a line's
    assert policy_threshold(gallery, "cost", defect_rate=0.5)["miss_rate"] == 0.0
    other = {**gallery, "version": "bbbb", "images": [{**i, "verdict": "ok"} for i in images]}
    side_by_side = compare(gallery, other)
    assert side_by_side["agreement"] == pytest.approx(4 / 6)
    assert side_by_side["b_side"]["defects_passed"] == 2 and side_by_side["a_side"]["false_rejects"] == 0
