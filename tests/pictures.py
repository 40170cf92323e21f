"""Pictures for the documentation, kept small: the studio walk's screenshots and docs/make_pictures.py."""
from __future__ import annotations

from pathlib import Path

from PIL import Image


def save_small(image: Image.Image, path: Path, width: int, colours: int = 128) -> None:
    """Scaled to `width` pixels and stored with a palette: a few tens of KB per picture."""
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"{path} {path.stat().st_size // 1024} KB")
