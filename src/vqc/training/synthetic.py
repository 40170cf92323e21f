"""Synthetic defects on good images, with their masks: what `vqc fit --auto` judges candidates by
when a plant has no defective samples yet.

Three kinds, each in several sizes and contrasts, all seeded (the same seed gives the same
defects, pixel for pixel):
- ``cutpaste``: a patch of the part itself, flipped or rotated, colour-jittered, pasted elsewhere
  (CutPaste, Li et al., CVPR 2021);
- ``scar``: a thin rotated stripe, a few pixels wide, in another part's colours (CutPaste-Scar):
  the fine, elongated defects (cracks, scratches);
- ``perlin``: an irregular region from thresholded Perlin noise filled with another image's
  texture, blended at a random opacity (DRAEM, Zavrtanik et al., ICCV 2021; the texture comes
  from the good images themselves, not from DTD, so no download is needed).

Every function takes and returns uint8 H x W x 3 images; masks are boolean H x W and mark exactly
the pixels that were changed (a pixel the blend left equal to the original may still be marked:
the mask is what was painted, as a defect's outline is in a ground-truth mask).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("cutpaste", "scar", "perlin")
SIZES = (0.04, 0.1, 0.2)  # a defect's extent as a share of the image's shorter side (scar: its length x 2)
CONTRAST = (0.3, 1.0)  # a defect's contrast range, in units of its part's own spread (see _jitter)


def perlin_noise(shape: tuple[int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise in about [-1, 1] with `cells` lattice cells along the longer side."""
    h, w = shape
    ch, cw = max(1, round(cells * h / max(h, w))), max(1, round(cells * w / max(h, w)))
    angles = rng.uniform(0, 2 * np.pi, (ch + 1, cw + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    y = np.linspace(0, ch, h, endpoint=False)
    x = np.linspace(0, cw, w, endpoint=False)
    yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
    yf, xf = (y - yi)[:, None], (x - xi)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = gradients[yi[:, None] + dy, xi[None, :] + dx]
        return g[..., 0] * (yf - dy) + g[..., 1] * (xf - dx)

    fade = lambda t: t * t * t * (t * (t * 6 - 15) + 10)
    u, v = fade(xf), fade(yf)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return (top * (1 - v) + bottom * v) * np.sqrt(2)


def _jitter(patch: np.ndarray, rng: np.random.Generator, contrast: float, spread: float) -> np.ndarray:
    """A brightness shift of 0.5-2 times `spread` (the part's own standard deviation) x contrast,
    up or down, and a smaller per-channel colour shift: a defect stands out against its part's
    texture as much on a busy commutator as on a plain bottle."""
    level = rng.choice([-1, 1]) * rng.uniform(0.5, 2.0) * spread * contrast
    shift = level + rng.uniform(-0.3, 0.3, 3) * spread * contrast
    return np.clip(patch.astype(np.float32) + shift, 0, 255).astype(np.uint8)


def _spread(image: np.ndarray) -> float:
    return max(12.0, float(image.std()))


def cutpaste(image: np.ndarray, rng: np.random.Generator, size: float, contrast: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    side = max(4, int(min(h, w) * size))
    ph = max(2, min(h - 1, int(side * rng.uniform(0.6, 1.4))))
    pw = max(2, min(w - 1, int(side * side / ph)))
    sy, sx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    patch = image[sy:sy + ph, sx:sx + pw]
    patch = np.rot90(patch, int(rng.integers(4))) if ph == pw else patch[::int(rng.choice([-1, 1])), ::int(rng.choice([-1, 1]))]
    patch = _jitter(np.ascontiguousarray(patch), rng, contrast, _spread(image))
    ph, pw = patch.shape[:2]
    ty, tx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    out, mask = image.copy(), np.zeros((h, w), bool)
    out[ty:ty + ph, tx:tx + pw] = patch
    mask[ty:ty + ph, tx:tx + pw] = True
    return out, mask


def scar(image: np.ndarray, rng: np.random.Generator, size: float, contrast: float,
         source: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    length = max(6, int(min(h, w) * size * 2))
    width = int(rng.integers(2, max(3, min(h, w) // 40 + 3)))
    angle = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    nx, ny = -np.sin(angle) * width / 2, np.cos(angle) * width / 2
    corners = [(cx - dx + nx, cy - dy + ny), (cx + dx + nx, cy + dy + ny), (cx + dx - nx, cy + dy - ny),
               (cx - dx - nx, cy - dy - ny)]
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon(corners, fill=255)
    mask = np.asarray(canvas) > 0
    if not mask.any():  # a stripe that fell between pixels: one pixel wide at its centre
        mask[int(cy), int(cx)] = True
    usable = source is not None and source.shape == image.shape
    fill = _jitter(source if usable else np.roll(image, (h // 2, w // 2), (0, 1)), rng, max(contrast, 0.5),
                   _spread(image))
    out = image.copy()
    out[mask] = fill[mask]
    return out, mask


def perlin(image: np.ndarray, rng: np.random.Generator, size: float, contrast: float,
           source: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A noise blob of about size x the shorter side, inside a box of twice that, filled with
    `source`'s texture (another good image, or this one shifted) at opacity ~ contrast."""
    h, w = image.shape[:2]
    box = max(8, int(min(h, w) * size * 2))
    bh, bw = min(h, box), min(w, box)
    noise = perlin_noise((bh, bw), int(rng.integers(2, 5)), rng)
    falloff = np.outer(np.hanning(bh), np.hanning(bw))  # the blob stays inside its box
    blob = noise * 0.5 + falloff > 0.6
    if not blob.any():
        blob[bh // 2, bw // 2] = True
    top, left = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
    mask = np.zeros((h, w), bool)
    mask[top:top + bh, left:left + bw] = blob
    texture = source if source is not None and source.shape == image.shape else np.roll(image, (h // 3, w // 3), (0, 1))
    if rng.random() < 0.5:  # another material: the texture's tones inverted (DRAEM takes foreign textures)
        texture = 255 - texture
    texture = _jitter(texture, rng, contrast, _spread(image))
    beta = float(np.clip(rng.uniform(0.4, 0.9) * (0.5 + contrast), 0.2, 1.0))
    out = image.copy()
    blended = image[mask].astype(np.float32) * (1 - beta) + texture[mask].astype(np.float32) * beta
    out[mask] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out, mask


def synthetic_defect(image: np.ndarray, rng: np.random.Generator, kind: str | None = None,
                     size: float | None = None, contrast: float | None = None,
                     source: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """One defect on a copy of `image`: (image, mask, what was drawn). Unset kind, size and
    contrast are drawn from KINDS, SIZES and CONTRAST; `source` is another good image to take
    colours and texture from (scar, perlin)."""
    kind = kind or str(rng.choice(KINDS))
    size = float(size if size is not None else rng.choice(SIZES))
    contrast = float(contrast if contrast is not None else rng.uniform(*CONTRAST))
    if kind == "cutpaste":
        out, mask = cutpaste(image, rng, size, contrast)
    elif kind == "scar":
        out, mask = scar(image, rng, size, contrast, source)
    elif kind == "perlin":
        out, mask = perlin(image, rng, size, contrast, source)
    else:
        raise ValueError(f"unknown synthetic defect {kind!r}; choose one of {', '.join(KINDS)}")
    if (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all():
        # a grayscale camera's part: its defects are grey too (a coloured one would be found by colour alone)
        out[mask] = np.repeat(np.rint(out[mask].mean(axis=1, keepdims=True)), 3, axis=1).astype(np.uint8)
    return out, mask, {"kind": kind, "size": size, "contrast": round(contrast, 3)}


def defect_set(images: list[np.ndarray], seed: int, per_image: int = 2,
               contrast: tuple[float, float] = CONTRAST) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    """`per_image` defects on each image, the kinds taken in turn so each appears about as often,
    contrasts drawn from the range `contrast`; sources are other images of the list (of the same
    shape where possible)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, image in enumerate(images):
        for j in range(per_image):
            others = [other for k, other in enumerate(images) if k != i and other.shape == image.shape]
            source = others[int(rng.integers(len(others)))] if others else None
            out.append(synthetic_defect(image, rng, KINDS[(i * per_image + j) % len(KINDS)],
                                        contrast=rng.uniform(*contrast), source=source))
    return out
