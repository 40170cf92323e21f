"""Make the documentation's pictures of the studio: docs/images/studio-<step>.png.

    python docs/screenshots.py            # from the repository root; needs Chromium and playwright

It walks the demo set from an empty project to a promoted version in headless Chromium, the
same walk as the browser test (tests/studio_walk.py), and keeps a small picture of each step.
"""
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.studio_walk import CHROMIUM, CHROMIUM_ARGS, running_studio, small_png, walk_to_promoted  # noqa: E402


def main(out: Path = ROOT / "docs" / "images") -> None:
    from playwright.sync_api import sync_playwright

    from vqc.access import add_key
    from vqc.training.demo import demo_data
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        key = add_key(Path(tmp) / "keys.txt", "quality", "admin")
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})

        def shoot(step: str, selector: str) -> None:
            small_png(page.locator(selector).screenshot(), out / f"studio-{step}.png")
            print(f"wrote {out / f'studio-{step}.png'}")
        with running_studio(Path(tmp) / "store", Path(tmp) / "keys.txt") as url:
            walk_to_promoted(page, url, key, demo_data(), shoot)
        browser.close()


if __name__ == "__main__":
    main()
