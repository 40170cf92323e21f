"""The stations page in headless Chromium: a folder station's card shows its last part."""
import shutil
import socket
import threading

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_stations_page_shows_the_last_part_with_its_threshold(demo_model_file, demo_root, tmp_path):
    if not shutil.which("chromium"):
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the test extras)")
    from playwright.sync_api import sync_playwright

    from vqc.station.config import load_line
    from vqc.station.run import run_line
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    shutil.copy(demo_model_file, tmp_path / "tiles.safetensors")
    (tmp_path / "STATION.yaml").write_text(
        f"records: none\npage: 127.0.0.1:{port}\nstations:\n  cam1:\n    model: tiles.safetensors\n"
        "    camera: {kind: folder, folder: incoming}\n    trigger: camera\n    outputs: []\n", encoding="utf-8")
    stop, ready = threading.Event(), threading.Event()
    line = threading.Thread(target=run_line, args=(load_line(tmp_path / "STATION.yaml"), stop),
                            kwargs={"on_ready": lambda _: ready.set()}, daemon=True)
    line.start()
    try:
        assert ready.wait(120)
        image = next((demo_root / "test" / "crack").glob("*.png"))
        shutil.copy(image, incoming / "part-1.png")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.getElementById('station-cam1') && "
                                   "document.getElementById('station-cam1').textContent.includes('threshold')",
                                   timeout=60000)
            text = page.inner_text("#station-cam1")
            browser.close()
        assert "cam1" in text and "1 (" in text  # one part
    finally:
        stop.set()
        line.join(timeout=30)
