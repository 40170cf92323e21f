"""Heat-map overlays for people to look at: a bounded size, the colour scale drawn beneath."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .files import atomic_path

OVERLAY_MAX_SIDE = 2048  # pixels on the longer side: a 36 MP part still gives a few-MB picture
BLEND_ROWS = 256  # rows blended at once: about 10 MB of float work at 2048 wide
LEGEND_LABELS = ("typical good", "worst good", "2x")  # levels 0, 1 (the worst held-out good image), 2
LEGEND_MIN_WIDTH = 240  # narrower pictures are set on a white canvas this wide: the labels need the room
VERDICT_COLOURS = {"defective": (200, 30, 30), "ok": (20, 130, 60), None: (60, 60, 60)}


def overlay(image: np.ndarray, anomaly_map: np.ndarray, floor: float, top: float,
            mask: np.ndarray | None = None) -> np.ndarray:
    """Blend a jet-coloured anomaly map over the image on the model's fixed scale.

    Positions at or below `floor` (a typical good position) stay transparent; the colour runs
    from blue to red over [floor, floor + 2 * (top - floor)], `top` being the worst held-out good
    image, so a good part looks cool and a defect hot on every image alike. A ground-truth mask,
    when given, is outlined in green.
    """
    out = np.empty(image.shape, np.uint8)
    for start in range(0, image.shape[0], BLEND_ROWS):  # a band at a time: the float work stays small
        band = slice(start, start + BLEND_ROWS)
        out[band] = _blend(image[band], anomaly_map[band], floor, top)
    if mask is not None and mask.any():
        from scipy.ndimage import binary_erosion
        out[mask & ~binary_erosion(mask, iterations=2)] = (0, 255, 0)
    return out


def _blend(image: np.ndarray, anomaly_map: np.ndarray, floor: float, top: float) -> np.ndarray:
    level = ((anomaly_map - floor) / max(top - floor, 1e-12)).astype(np.float32, copy=False)
    colour = _jet()[np.clip(level * 128, 0, 255).astype(np.uint8)]  # jet(level / 2), as matplotlib indexes it
    alpha = np.clip(level, 0, 1)[..., None] * np.float32(0.6)
    base = image.astype(np.float32)
    return np.rint(base + (colour - base) * alpha).astype(np.uint8)  # image * (1 - alpha) + colour * alpha


# matplotlib's "jet" as its segment data: per channel, (position, value) corners of a piecewise-linear ramp
JET_SEGMENTS = {"red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
                "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
                "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0))}


@functools.cache
def _jet() -> np.ndarray:
    """jet as 256 colours, float32 0-255, interpolated from its segments as matplotlib builds its
    table (equal to matplotlib's, tested), so overlays need no matplotlib on a line PC."""
    x = np.linspace(0, 1, 256)
    channels = [np.interp(x, *zip(*JET_SEGMENTS[c])) for c in ("red", "green", "blue")]
    return (np.stack(channels, axis=1) * 255).astype(np.float32)


def prediction_overlay(image: np.ndarray, prediction, floor: float, top: float, mask: np.ndarray | None = None,
                       max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """The picture an operator sees for one scored image: the overlay at most `max_side` pixels
    on its longer side (the map is taken from the canvas at that size, so a huge image never
    needs a full-resolution map), with its verdict and score and the colour legend beneath."""
    h, w = image.shape[:2]
    ratio = min(1.0, max_side / max(h, w))
    size = (max(1, round(h * ratio)), max(1, round(w * ratio)))
    if ratio < 1:  # one channel at a time: Pillow holds RGB as 4 bytes a pixel (144 MB at 6000 x 6000)
        image = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c])).resize(
            size[::-1], Image.BILINEAR)) for c in range(3)], axis=2)
        if mask is not None:
            mask = np.asarray(Image.fromarray(mask).resize(size[::-1], Image.NEAREST))
    verdict = prediction.verdict.value if prediction.verdict else None
    caption = (f"{(verdict or 'no threshold').upper()}  score {prediction.score:.4g}", VERDICT_COLOURS.get(verdict))
    return with_legend(overlay(image, prediction.map_at(*size), floor, top, mask), caption)


def _scale_height(width: int) -> int:
    return int(min(48, max(20, width // 20)))


def legend_height(width: int) -> int:
    """Rows beneath a picture of this width: the caption's, then the colour scale's with its labels."""
    scale = _scale_height(max(width, LEGEND_MIN_WIDTH))
    return scale + scale - max(4, scale // 3)


def picture_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the picture with_legend makes of a width x height overlay."""
    return max(width, LEGEND_MIN_WIDTH), height + legend_height(width)


def with_legend(picture: np.ndarray, caption: tuple[str, tuple] | None = None) -> np.ndarray:
    """The picture with a strip beneath: the caption (text, colour), then overlay()'s colour scale
    from level 0 (transparent: a typical good position) to level 2, and its labels."""
    h, w = picture.shape[:2]
    width = max(w, LEGEND_MIN_WIDTH)
    scale = _scale_height(width)
    bar = max(4, scale // 3)
    text_rows = scale - bar
    out = np.full((h + legend_height(w), width, 3), 255, np.uint8)
    left = (width - w) // 2
    out[:h, left:left + w] = picture
    levels = np.linspace(0, 2, width, dtype=np.float32)[None]
    top = h + text_rows
    out[top:top + bar] = _blend(np.full((1, width, 3), 128, np.uint8), levels, 0.0, 1.0)  # the scale over grey
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    font = _font(text_rows - 2)
    if caption is not None:
        draw.text((1, h + 1), caption[0], fill=caption[1], font=font, anchor="la")
    for (x, anchor), label in zip(((1, "la"), (width // 2, "ma"), (width - 2, "ra")), LEGEND_LABELS):
        draw.line([(x, top), (x, top + bar)], fill=(0, 0, 0))
        draw.text((x, top + bar + 1), label, fill=(0, 0, 0), font=font, anchor=anchor)
    return np.asarray(canvas)


def _font(size: int):
    try:
        return ImageFont.load_default(size=max(8, size))
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def save_png(path: str | Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
