"""Input geometry: how an image of any size becomes network inputs, and how their maps come back.

- ``resize``: squash to size x size (the paper's geometry; distorts non-square parts).
- ``letterbox``: keep the aspect ratio, long side = size, pad the rest with a constant; the
  padding is masked out of the map and the score (see Detector.forward's ``valid``).
- ``native``: keep the aspect ratio, short side = size, both sides rounded to the backbone's
  stride (32); for CNNs and hierarchical models. DeiT needs a fixed 224 x 224 input.
- ``tile``: scale the image by ``scale``, cover it with overlapping size x size tiles every
  ``stride`` pixels (the last tile flush with the border), and blend the tiles' maps.

A Plan records, for one image, its network inputs and where each one's map goes on the
"canvas": the image at network resolution, on which the score is taken (so the Gaussian
smoothing and the top-k count mean the same thing whatever the image size). The map is then
resized from the canvas to the original resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .choices import GEOMETRIES
from .errors import VqcError

MODES = GEOMETRIES
NATIVE_STRIDE = 32  # the coarsest feature stride of the CNN backbones
PAD_VALUE = (124, 116, 104)  # ImageNet mean colour: zero after normalisation
REDUCING_GAP = 3.0  # Pillow: shrink by whole factors first while the rest stays >= 3x (same look, far less work)
MAP_BAND_ROWS = 512  # rows of a full-resolution map interpolated at once: bounded temporaries


@dataclass(frozen=True)
class Plan:
    inputs: list[np.ndarray]  # uint8 H x W x 3 network inputs
    content: list[tuple[int, int]]  # (h, w) of real image in each input, from its top-left corner
    offsets: list[tuple[int, int]]  # (top, left) of each input's content on the canvas
    canvas: tuple[int, int]  # (h, w) the maps are assembled on
    original: tuple[int, int]  # (h, w) of the decoded image


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow's bilinear resize (antialiased when shrinking). The one resize of every engine and
    of the torch-free runtime, so both score the same network inputs."""
    if image.shape[:2] == (height, width):
        return image
    resized = Image.fromarray(image).resize((width, height), Image.BILINEAR, reducing_gap=REDUCING_GAP)
    return np.asarray(resized)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile offsets along one side: every `stride`, the last one flush with the border."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def blend_weights(size: int, overlap: int) -> np.ndarray:
    """A 1-D weight over a tile's side: 1 in the middle, ramping down over the overlap, so each
    position is led by the tile that sees it furthest from an edge (CNN features degrade near
    the zero-padded border). Never zero: at the image border one tile is all there is."""
    if overlap <= 0:
        return np.ones(size, np.float32)
    x = np.arange(size, dtype=np.float32)
    ramp = np.minimum(x + 1, size - x) / np.float32(overlap + 1)
    return np.minimum(ramp, np.float32(1.0))


@dataclass(frozen=True)
class Geometry:
    mode: str = "resize"
    size: int = 224  # network input side (resize, letterbox, tile) or short side (native; 0: the image's own scale)
    stride: int = 0  # tile: pixels between tile starts; 0 = size * 7 // 8
    scale: float = 1.0  # tile: image scale before tiling

    def __post_init__(self):
        if self.mode not in MODES:
            raise VqcError(f"unknown geometry {self.mode!r}; choose one of: {', '.join(MODES)}")
        if self.mode == "tile" and not 0 < self.tile_stride <= self.size:
            raise VqcError(f"tile stride must be in 1..{self.size}, got {self.stride}")
        if self.scale <= 0:
            raise VqcError(f"tile scale must be positive, got {self.scale}")
        if self.size < 0 or (self.size == 0 and self.mode != "native"):
            raise VqcError(f"image size must be positive (0 only for geometry native: the image's own scale), "
                           f"got {self.size}")

    @property
    def tile_stride(self) -> int:
        return self.stride or self.size * 7 // 8

    def plan(self, image: np.ndarray) -> Plan:
        h, w = image.shape[:2]
        s = self.size
        if self.mode == "resize":
            return Plan([resize(image, s, s)], [(s, s)], [(0, 0)], (s, s), (h, w))
        if self.mode == "letterbox":
            ratio = s / max(h, w)
            ch, cw = max(1, round(h * ratio)), max(1, round(w * ratio))
            padded = np.empty((s, s, 3), np.uint8)
            padded[:] = PAD_VALUE
            padded[:ch, :cw] = resize(image, ch, cw)
            return Plan([padded], [(ch, cw)], [(0, 0)], (ch, cw), (h, w))
        if self.mode == "native":
            # size 0: each image at its own pixel scale, so one camera's parts keep one texture
            # scale however large the crop (each side still rounded to the coarsest stride)
            ratio = s / min(h, w) if s else 1.0
            nh, nw = (max(NATIVE_STRIDE, round(side * ratio / NATIVE_STRIDE) * NATIVE_STRIDE) for side in (h, w))
            return Plan([resize(image, nh, nw)], [(nh, nw)], [(0, 0)], (nh, nw), (h, w))
        # tile: a side shorter than one tile is scaled up to it (aspect kept)
        ratio = max(self.scale, s / min(h, w))
        ch, cw = max(s, round(h * ratio)), max(s, round(w * ratio))
        scaled = resize(image, ch, cw)
        stride = self.tile_stride
        offsets = [(top, left) for top in tile_starts(ch, s, stride) for left in tile_starts(cw, s, stride)]
        inputs = [np.ascontiguousarray(scaled[top:top + s, left:left + s]) for top, left in offsets]
        return Plan(inputs, [(s, s)] * len(inputs), offsets, (ch, cw), (h, w))


def valid_mask(content: list[tuple[int, int]], size: tuple[int, int]) -> np.ndarray | None:
    """[B, 1, H, W] float32 mask of real-image positions, or None when every input is all image."""
    if all(c == size for c in content):
        return None
    mask = np.zeros((len(content), 1, *size), np.float32)
    for i, (h, w) in enumerate(content):
        mask[i, :, :h, :w] = 1
    return mask


def assemble(plan: Plan, maps: np.ndarray, overlap: int = 0) -> np.ndarray:
    """Place each input's map [n, 1, H, W] on the canvas: crop to content, blend overlaps."""
    if len(plan.inputs) == 1:
        h, w = plan.content[0]
        return maps[0, 0, :h, :w]
    size = maps.shape[-1]
    weight_1d = blend_weights(size, overlap)
    weight = weight_1d[:, None] * weight_1d[None, :]
    total = np.zeros(plan.canvas, np.float32)
    norm = np.zeros(plan.canvas, np.float32)
    for map_, (top, left) in zip(maps[:, 0], plan.offsets):
        total[top:top + size, left:left + size] += map_ * weight
        norm[top:top + size, left:left + size] += weight
    return total / norm


def score(canvas: np.ndarray, top_k: int) -> float:
    """Max of the map, or the mean of its top_k highest positions."""
    flat = np.asarray(canvas, np.float32).ravel()
    if not top_k:
        return float(flat.max())
    k = min(top_k, flat.size)
    return float(np.partition(flat, flat.size - k)[flat.size - k:].mean(dtype=np.float32))


def _bilinear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indexes and weights of bilinear sampling along one axis, half-pixel centres
    (align_corners=False, as torch's and OpenCV's bilinear), no antialiasing."""
    src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in / n_out)
                     - np.float32(0.5), np.float32(0))
    low = np.minimum(src.astype(np.int64), n_in - 1)
    return low, np.minimum(low + 1, n_in - 1), (src - low).astype(np.float32)


def to_original(plan: Plan, canvas: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """The canvas map at the image's resolution, or at `size` (h, w) for a smaller view of it:
    bilinear, float32, built in bands of rows so a large image needs no full-size temporaries."""
    height, width = size or plan.original
    canvas = np.asarray(canvas, np.float32)
    top, bottom, wy = _bilinear_axis(canvas.shape[0], height)
    left, right, wx = _bilinear_axis(canvas.shape[1], width)
    out = np.empty((height, width), np.float32)
    for start in range(0, height, MAP_BAND_ROWS):
        band = slice(start, start + MAP_BAND_ROWS)
        rows = canvas[top[band]] + (canvas[bottom[band]] - canvas[top[band]]) * wy[band, None]
        out[band] = rows[:, left] + (rows[:, right] - rows[:, left]) * wx
    return out
