"""The studio walked from an empty project to a promoted version in Chromium: the browser test
runs it, and docs/screenshots.py runs it to make the documentation's pictures of each step."""
from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path
from typing import Callable

from .pictures import save_small
from .served import serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
FIT_TIMEOUT_MS = 240_000  # a quick fit of the demo set and the scoring of its test images, on a busy 2-core machine


@contextlib.contextmanager
def running_studio(store_folder: Path, key_file: Path | None):
    """The studio on a store, served by uvicorn in a thread; yields its URL."""
    from vqc.store.versions import ModelStore
    from vqc.studio.app import create_studio_app
    with serving(create_studio_app(ModelStore.open(store_folder, create=True), key_file)) as url:
        yield url


def small_png(png: bytes, path: Path, width: int = 900) -> None:
    """A screenshot as a small PNG for the documentation: scaled to `width`, 64 colours."""
    from PIL import Image
    save_small(Image.open(io.BytesIO(png)), path, width, colours=64)


def rates_shown(page) -> tuple[str, str]:
    return page.inner_text("#frr"), page.inner_text("#miss")


def move_slider(page, value: float) -> tuple[str, str]:
    page.evaluate("v => { const s = document.getElementById('slider'); s.value = v; "
                  "s.dispatchEvent(new Event('input')); }", value)
    return rates_shown(page)


def walk_to_promoted(page, url: str, admin_key: str, demo_root: Path, shoot: Callable[[str, str], None]) -> dict:
    """Empty project to promoted version; `shoot(step, selector)` is called at each step. Returns what
    the page said: the fitted and the saved version, and the rates seen at two thresholds."""
    page.goto(url)
    page.wait_for_selector("#keyform.shown")
    page.fill("#key", admin_key)
    page.click("#keyform button")
    page.wait_for_function("document.getElementById('who').textContent.includes('admin')")
    page.fill("#new-name", "tiles")
    page.click("#create")
    page.wait_for_function("document.getElementById('project-info').textContent.includes('target serve')")
    shoot("project", "#step-project")
    page.set_input_files("#good-folder", str(demo_root / "train" / "good"))
    page.wait_for_function("document.getElementById('upload-report').textContent.includes('60 images kept')")
    for folder in ("test", "ground_truth"):
        page.set_input_files("#test-folder", str(demo_root / folder))
        page.wait_for_function("document.getElementById('upload-report').textContent.includes('images kept')"
                               " && !document.getElementById('upload-report').textContent.includes('uploading')")
    page.wait_for_function("document.getElementById('project-info').textContent.includes('30 masks')")
    # a non-image and a duplicate among good images: the one refused by name, the other said, the rest kept
    page.set_input_files("#good-files", [str(demo_root / "SOURCE.md"), *sorted((demo_root / "train" / "good").glob("*.png"))[:2]])
    page.wait_for_selector("#upload-report .refused")
    said = page.inner_text("#upload-report")
    shoot("images", "#step-images")
    page.select_option("#preset", "fast")
    page.click("#fit")
    page.wait_for_selector("#jobs tr.running")
    job = page.get_attribute("#jobs tr", "data-job")
    page.wait_for_function(f"document.querySelector(\"#jobs tr[data-job='{job}'] progress[value='0']\") === null &&"
                           f" document.querySelector(\"#jobs tr[data-job='{job}'] progress\") !== null", timeout=FIT_TIMEOUT_MS)
    shoot("fit", "#step-fit")
    page.reload()  # the fit goes on without the page; the reloaded page finds it
    page.wait_for_selector(f"#jobs tr[data-job='{job}']")
    page.wait_for_selector(f"#jobs tr[data-job='{job}'].done", timeout=FIT_TIMEOUT_MS)
    fitted = page.inner_text(f"#jobs tr[data-job='{job}'] .progress").split("version ")[1].strip()
    page.wait_for_function("document.querySelectorAll('#gallery .card').length === 42")
    page.wait_for_function("Array.from(document.querySelectorAll('#gallery img')).every(i => i.src.startsWith('blob:'))")
    shoot("check", "#step-check")
    page.fill("#policy-rate", "0.1")
    page.click("#policy-frr")  # the policy of vqc threshold places the slider
    page.wait_for_function("document.getElementById('slider').dataset.policy === 'false-reject-rate=0.1'")
    by_policy = rates_shown(page)
    scores = page.evaluate("gallery.images.map(i => i.score).sort((a, b) => a - b)")
    first = move_slider(page, scores[len(scores) // 4])
    second = move_slider(page, scores[3 * len(scores) // 4])
    shoot("threshold", "#step-threshold")
    chosen = float(page.input_value("#slider"))
    page.click("#save-threshold")
    page.wait_for_function("document.getElementById('save-status').textContent.startsWith('saved')")
    saved = page.inner_text("#save-status").split("version ")[1].split(" ")[0]
    page.click(f"#versions tr[data-version='{saved}'] button[data-act='promote']")
    page.wait_for_function(f"document.querySelector(\"#versions tr[data-version='{saved}'] .where\").textContent === 'live'")
    page.wait_for_selector("#audit tr")
    shoot("ship", "#step-ship")
    page.select_option("#compare-a", fitted)
    page.select_option("#compare-b", saved)
    page.click("#compare")
    page.wait_for_function("document.getElementById('compare-summary').textContent.includes('agree')")
    shoot("compare", "#step-compare")
    return {"job": job, "fitted": fitted, "saved": saved, "rates": (first, second), "by_policy": by_policy,
            "upload_report": said, "threshold": chosen}
