"""The operator page, end to end in headless Chromium (Debian's package), driven by Playwright."""
import shutil

import pytest

from vqc.access import add_key
from vqc.data import read_split
from vqc.serve import create_app
from vqc.training.thresholds import choose_threshold

from .served import serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def server(demo_model, demo_root, tmp_path_factory):
    if not shutil.which("chromium"):
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the test extras)")
    model = demo_model
    saved = model.threshold
    # a threshold that separates the demo set; on its 71 % defective test split it rejects most good parts
    model.threshold = choose_threshold(model, "f1", demo_root, allow_high_reject=True)
    folder = tmp_path_factory.mktemp("page")
    path = model.save(folder / "tiles.safetensors")
    model.threshold = saved
    key = add_key(folder / "keys.txt", "operator")
    with serving(create_app(path, api_key_file=str(folder / "keys.txt"))) as url:
        yield url, path, key


def _browser(pw):
    return pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"])


@pytest.mark.parametrize("which", ["operator", "studio"])
def test_each_page_with_a_key_loads_the_one_keys_script_asks_on_401_retries_and_forgets(which, request, tmp_path):
    """The operator page and the studio ask for a key with the same script (static/keys.js, the
    package's one copy): a 401 shows the form, a refused key is said, the request is sent again
    with the key, the key is kept across reloads, and "forget key" shows only while one is kept."""
    import contextlib
    import urllib.request
    from importlib.resources import files

    from playwright.sync_api import sync_playwright

    from .studio_walk import running_studio
    if which == "operator":
        url, _, key = request.getfixturevalue("server")
        opened, keyed = contextlib.nullcontext(url), "/v1/model"
    else:
        key = add_key(tmp_path / "keys.txt", "quality", "admin")
        opened, keyed = running_studio(tmp_path / "store", tmp_path / "keys.txt"), "/api/whoami"
    with opened as url, sync_playwright() as pw:
        html = urllib.request.urlopen(url).read().decode()
        script = urllib.request.urlopen(f"{url}/static/keys.js")
        assert script.read().decode() == (files("vqc") / "static" / "keys.js").read_text()
        assert script.headers["Content-Type"].startswith("text/javascript")
        assert "Authorization" not in html and "keyform" not in html  # no copy of its own
        browser = _browser(pw)
        page = browser.new_page()
        answers = []
        page.on("response", lambda r: answers.append(r.status) if r.url == url + keyed else None)
        page.goto(url)
        assert page.evaluate("[...document.scripts].filter(s => s.src).map(s => new URL(s.src).pathname)") == [
            "/static/keys.js"]
        page.wait_for_selector("#keyform.shown")
        assert not page.is_visible("#forget")  # no key kept yet
        page.fill("#key", "not-the-key")
        page.click("#keyform button")
        page.wait_for_function("document.getElementById('keyerror').textContent.includes('refused')")
        with page.expect_response(lambda r: r.url == url + keyed and r.status == 200):
            page.fill("#key", key)
            page.click("#keyform button")
        assert answers == [401, 401, 200]  # the same request, sent again with each key given
        assert page.is_visible("#forget") and not page.is_visible("#keyform")
        with page.expect_response(lambda r: r.url == url + keyed):
            page.reload()  # the key is kept: not asked again
        assert answers[-1] == 200 and not page.is_visible("#keyform") and page.is_visible("#forget")
        page.click("#forget")
        page.wait_for_selector("#keyform.shown")  # forgotten: the next 401 asks again
        assert not page.is_visible("#forget")
        browser.close()


def test_the_page_lists_the_services_last_inspections_and_fits_the_heat_map_to_its_panel(demo_model_file,
                                                                                        demo_root, tmp_path):
    """History from the records (parts inspected by other clients too), no key controls where no key
    is asked, the heat map at the panel's width with one legend."""
    import shutil
    import urllib.request

    from playwright.sync_api import sync_playwright
    if not shutil.which("chromium"):
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    path = shutil.copy(demo_model_file, tmp_path / "tiles.safetensors")
    samples = read_split(demo_root, "test")[:22]
    with serving(create_app(path)) as url:
        for sample in samples[:21]:  # another client: a camera posting raw bodies
            urllib.request.urlopen(urllib.request.Request(f"{url}/v1/inspect?filename={sample.path.name}",
                                                          data=sample.path.read_bytes(), method="POST",
                                                          headers={"Content-Type": "image/png"})).read()
        with sync_playwright() as pw:
            browser = _browser(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_function("document.querySelectorAll('#history tr').length === 20")
            names = [page.locator("#history tr").nth(i).locator("td").nth(1).inner_text() for i in range(20)]
            assert names == [s.path.name for s in samples[1:21]][::-1]  # the last 20, newest first
            assert not page.is_visible("#forget") and not page.is_visible("#keyform")
            page.set_input_files("#file", str(samples[21].path))
            page.wait_for_function("document.getElementById('heatmap').complete && "
                                   "document.getElementById('heatmap').naturalWidth > 0")
            assert page.locator("#history tr").nth(0).locator("td").nth(1).inner_text() == samples[21].path.name
            assert page.locator("#history tr").count() == 20
            box, panel, scale, drawn_height = page.evaluate(
                "(() => { const i = document.getElementById('heatmap'); const r = i.getBoundingClientRect(); "
                "const scale = Math.min(r.width / i.naturalWidth, r.height / i.naturalHeight); "
                "return [r.width, i.parentElement.clientWidth, scale, i.naturalHeight * scale]; })()")
            # scaled up to fill the panel's width, or the window's height for a tall part; not at its own size
            assert box == pytest.approx(panel, abs=1) and scale > 1.3
            assert box == pytest.approx(scale * page.evaluate("document.getElementById('heatmap').naturalWidth"),
                                        abs=2) or drawn_height == pytest.approx(0.85 * 1000, abs=2)
            assert not page.is_visible("#legend")  # the picture carries the legend: one on screen
            browser.close()


def test_operator_page_shows_verdicts_for_good_and_defective_images(server, demo_root):
    from playwright.sync_api import sync_playwright

    import vqc
    url, path, key = server
    model = vqc.load(path)
    samples = read_split(demo_root, "test")
    scored = list(zip(samples, model.predict([s.path for s in samples])))
    good = next(s for s, p in scored if s.label == 0 and p.verdict == "ok")
    bad = next(s for s, p in scored if s.label == 1 and p.verdict == "defective")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#keyform.shown")  # the service asks for a key: the page asks the operator
        page.fill("#key", "not-the-key")
        page.click("#keyform button")
        page.wait_for_function("document.getElementById('keyerror').textContent.includes('refused')")
        page.fill("#key", key)
        page.click("#keyform button")
        page.wait_for_function("document.getElementById('model').textContent.includes('knn')")
        assert "scores: ok" in page.inner_text("#drift")
        # issue 20, item 7: before any result a placeholder, not a broken image; the colour legend is on the page
        assert page.is_visible("#placeholder") and not page.is_visible("#heatmap")
        assert page.is_visible("#legend") and "worst held-out good" in page.inner_text("#legend")
        for sample, verdict in ((good, "OK"), (bad, "DEFECTIVE")):
            page.set_input_files("#file", str(sample.path))
            page.wait_for_function(f"document.getElementById('verdict').textContent === '{verdict}'", timeout=60000)
            assert page.get_attribute("#heatmap", "src").startswith("data:image/png;base64,")
        rows = page.locator("#history tr")
        assert rows.count() == 2
        assert "defective" in rows.nth(0).inner_text() and "ok" in rows.nth(1).inner_text()
        page.set_input_files("#file", str(demo_root / "SOURCE.md"))  # not an image
        page.wait_for_function("document.getElementById('error').textContent.includes('SOURCE.md')")
        # the failed upload leaves nothing of the previous (defective) part on screen
        assert page.inner_text("#verdict") == "ERROR"
        assert not page.is_visible("#heatmap") and page.get_attribute("#heatmap", "src") is None
        assert page.evaluate("document.getElementById('fill').style.width") == "0%"
        assert page.inner_text("#scoreline") == "score –" and "SOURCE.md" in page.inner_text("#placeholder")
        page.wait_for_function("document.getElementById('drift').textContent.includes('2 of 20')")
        page.reload()  # asked once: the key is kept
        page.wait_for_function("document.getElementById('model').textContent.includes('knn')")
        assert not page.is_visible("#keyform")
        browser.close()


def test_operator_reviews_verdicts_on_the_page(server, demo_root):
    """Issue 24: confirm or override a verdict on the page; stored with the inspection and the key's name."""
    from playwright.sync_api import sync_playwright

    from vqc.records import Records, default_locations
    from vqc.store.reviews import latest_reviews
    url, path, key = server
    samples = read_split(demo_root, "test")
    good = next(s for s in samples if s.label == 0)
    bad = next(s for s in samples if s.label == 1)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#keyform.shown")
        page.fill("#key", key)
        page.click("#keyform button")
        page.wait_for_function("document.getElementById('model').textContent.includes('knn')")
        assert not page.is_visible("#review")  # nothing to review before a part is inspected
        page.set_input_files("#file", str(good.path))
        page.wait_for_function("document.getElementById('review-title').textContent.includes('inspection')")
        good_id = int(page.inner_text("#review-title").split("inspection ")[1].rstrip(")"))
        page.set_input_files("#file", str(bad.path))
        page.wait_for_function(f"!document.getElementById('review-title').textContent.includes('inspection {good_id})')")
        bad_id = int(page.inner_text("#review-title").split("inspection ")[1].rstrip(")"))
        page.fill("#defect-type", bad.defect)
        page.fill("#review-note", "seen at the bench")
        page.click("#review-defective")
        page.wait_for_function("document.getElementById('review-status').textContent.startsWith('saved')")
        assert page.inner_text("#review-status") == f"saved: defective ({bad.defect}) by operator"
        page.locator("#history tr").nth(1).click()  # the earlier, good part, from the history
        assert f"inspection {good_id}" in page.inner_text("#review-title")
        page.click("#review-good")
        page.wait_for_function("document.getElementById('review-status').textContent.startsWith('saved: good')")
        assert page.locator("#history tr").nth(1).locator("td").nth(4).inner_text() == "good"
        browser.close()
    records = Records(default_locations(path)[0], create=False)
    reviews = latest_reviews(records.database, [good_id, bad_id])
    records.close()
    assert reviews[bad_id]["label"] == "defective" and reviews[bad_id]["defect_type"] == bad.defect
    assert reviews[bad_id]["note"] == "seen at the bench" and reviews[bad_id]["reviewer"] == "operator"
    assert reviews[good_id]["label"] == "good" and reviews[good_id]["defect_type"] is None
