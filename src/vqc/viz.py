"""Heat-map overlays for people to look at."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .files import atomic_path


def overlay(image: np.ndarray, anomaly_map: np.ndarray, floor: float, top: float,
            mask: np.ndarray | None = None) -> np.ndarray:
    """Blend a jet-coloured anomaly map over the image on the model's fixed scale.

    Positions at or below `floor` (a typical good position) stay transparent; the colour runs
    from blue to red over [floor, floor + 2 * (top - floor)], `top` being the worst held-out good
    image, so a good part looks cool and a defect hot on every image alike. A ground-truth mask,
    when given, is outlined in green.
    """
    from matplotlib import colormaps
    level = (anomaly_map - floor) / max(top - floor, 1e-12)
    colour = colormaps["jet"](np.clip(level / 2, 0, 1))[..., :3] * 255
    alpha = np.clip(level, 0, 1)[..., None] * 0.6
    out = image.astype(np.float32) * (1 - alpha) + colour * alpha
    if mask is not None and mask.any():
        from scipy.ndimage import binary_erosion
        out[mask & ~binary_erosion(mask, iterations=2)] = (0, 255, 0)
    return out.round().astype(np.uint8)


def save_png(path: str | Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
