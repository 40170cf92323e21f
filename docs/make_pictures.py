"""The documentation's pictures, made from a real run so they stay true when the code changes.

Fits the default detector on the demo set shipped with vqc, draws overlays of a defective and a
good tile, serves the model and screenshots the operator page, runs a folder station and
screenshots the stations page, runs a one-cell benchmark and screenshots its report, and walks
the studio from an empty project to a promoted version (docs/screenshots.py), all in headless
Chromium driven by Playwright. Writes small PNGs to docs/images/.

    python docs/make_pictures.py [--out docs/images] [--chromium /usr/bin/chromium]

Needs the training install and the test extras' Playwright (pip install ".[test]") and a
Chromium (Debian: apt-get install chromium). Takes a few minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.pictures import save_small  # noqa: E402
from tests.served import free_port, serving  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def side_by_side(images: list[Image.Image], gap: int = 12, background=(255, 255, 255)) -> Image.Image:
    height = max(i.height for i in images)
    out = Image.new("RGB", (sum(i.width for i in images) + gap * (len(images) - 1), height), background)
    x = 0
    for image in images:
        out.paste(image.convert("RGB"), (x, 0))
        x += image.width + gap
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"), help="folder for the pictures")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium",
                        help="the Chromium executable Playwright drives")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    from vqc.data import decode_image, load_mask, read_split
    from vqc.serve import create_app
    from vqc.station.config import load_line
    from vqc.station.run import run_line
    from vqc.training.demo import demo_data
    from vqc.training.model import AnomalyModel
    from vqc.training.thresholds import choose_threshold
    from vqc.viz import prediction_overlay

    work = Path(tempfile.mkdtemp(prefix="vqc-pictures-"))
    data = demo_data()
    print(f"fitting efficientnet_lite0 + knn on {data}")
    model = AnomalyModel(backbone="efficientnet_lite0", head="knn").fit(data)
    # a threshold that separates the demo set (its test split is 71 % defective, so F1's threshold
    # rejects more good parts than a line would accept: fine for pictures, not for a line)
    model.threshold = choose_threshold(model, "f1", data, allow_high_reject=True)
    path = model.save(work / "tiles.safetensors")

    # overlays: the most defective-looking crack and the calmest good tile
    samples = read_split(data, "test")
    scored = list(zip(samples, model.predict([s.path for s in samples])))
    floor, top = model.normal_range()
    crack = max((x for x in scored if x[0].defect == "crack"), key=lambda x: x[1].score)
    good = min((x for x in scored if x[0].label == 0), key=lambda x: x[1].score)
    tiles = []
    for sample, pred in (crack, good):
        image = decode_image(sample.path)
        mask = load_mask(sample.mask, image.shape[:2]) if sample.mask else None
        tiles.append(Image.fromarray(prediction_overlay(image, pred, floor, top, mask)))
    tiles = [t.resize((round(t.width * 360 / t.height), 360)) for t in tiles]
    overlays = side_by_side(tiles)
    save_small(overlays, out / "overlays.png", 520, colours=64)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 760})

        # the operator page: a good and a defective part inspected through it
        with serving(create_app(path, db=str(work / "records.sqlite"), image_store=str(work / "images"))) as url:
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('knn')")
            for sample, verdict in ((good[0], "OK"), (crack[0], "DEFECTIVE")):
                page.set_input_files("#file", str(sample.path))
                page.wait_for_function(f"document.getElementById('verdict').textContent === '{verdict}'",
                                       timeout=120000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(work / "operator.png"), full_page=False)
        operator = Image.open(work / "operator.png")
        save_small(operator, out / "operator-page.png", 900)

        # the stations page: a folder station, fed the demo's test images
        incoming = work / "incoming"
        incoming.mkdir()
        port = free_port()
        (work / "STATION.yaml").write_text(
            f"records: none\npage: 127.0.0.1:{port}\nstations:\n  cam1:\n    model: tiles.safetensors\n"
            f"    camera: {{kind: folder, folder: incoming}}\n    trigger: camera\n    outputs: []\n",
            encoding="utf-8")
        stop = threading.Event()
        ready = threading.Event()
        line_thread = threading.Thread(target=run_line, args=(load_line(work / "STATION.yaml"), stop),
                                       kwargs={"on_ready": lambda line: ready.set()}, daemon=True)
        line_thread.start()
        ready.wait(120)
        for sample, _ in scored[:6] + [crack]:
            shutil.copy(sample.path, incoming / f"{len(list(incoming.iterdir())):03d}{sample.path.suffix}")
            time.sleep(1.0)
        time.sleep(3)
        page.set_viewport_size({"width": 900, "height": 1400})
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#station-cam1")
        page.wait_for_timeout(2000)
        page.locator("#station-cam1").screenshot(path=str(work / "stations.png"))  # the station's card
        stop.set()
        line_thread.join(timeout=30)
        save_small(Image.open(work / "stations.png"), out / "stations-page.png", 300, colours=48)

        # a benchmark report: one cell on the demo set
        subprocess.run([sys.executable, "-m", "vqc.cli", "benchmark", "--data", str(data), "--heads", "knn",
                        "--out", str(work / "bench")], check=True, cwd=ROOT,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")})
        page.goto((work / "bench" / "report.html").as_uri())
        page.wait_for_timeout(1000)
        page.locator("img").first.screenshot(path=str(work / "report.png"))  # its first figure
        save_small(Image.open(work / "report.png"), out / "report.png", 900)
        browser.close()

    # the README's picture: the crack's overlay beside the operator page
    crop = operator.crop((0, 0, operator.width, min(operator.height, 700)))
    crop = crop.resize((round(crop.width * 360 / crop.height), 360))
    save_small(side_by_side([tiles[0], crop]), out / "readme.png", 900)
    shutil.rmtree(work, ignore_errors=True)
    import screenshots  # the studio's steps (docs/ is this script's folder, first on the path)
    screenshots.main(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
