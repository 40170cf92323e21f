"""Data set readers (MVTec AD, BTAD, VisA, plain folders) and image decoding with clear errors."""
from __future__ import annotations

import csv
import glob
import io
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import VqcError, first_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 good, 1 defective
    defect: str  # "good" or the defect type
    mask: Path | None = None  # ground truth; None for good images or where none exists


# ---------------------------------------------------------------- decoding

MIN_SIDE = 16  # pixels: below this an image holds nothing a model could judge
# What Pillow says for a file it cannot decode names its own stream object; say what it means.
NOT_AN_IMAGE = "not an image file (PNG, JPEG, BMP, TIFF or WebP)"


def default_max_pixels(input_side: int) -> int:
    """The largest image decoded by default for a network input of `input_side` pixels: 1000
    times the input (50.2 MP at 224), held between 16 and 64 megapixels. Decoding costs 3 bytes a
    pixel and the full-resolution map 4 more, so the bound is what keeps one image's memory
    bounded (about 0.5 GB at 64 MP); a larger image is refused by name, never half-scored.
    `input_side` 0 (geometry native at the image's own scale): the image itself is the network
    input, so 4 MP (about 2000 x 2000); larger parts want tile geometry."""
    if not input_side:
        return OWN_SCALE_MAX_PIXELS
    return int(min(64e6, max(16e6, 1000 * input_side * input_side)))


OWN_SCALE_MAX_PIXELS = 4_000_000


DEFAULT_MAX_PIXELS = default_max_pixels(224)  # where no model is at hand: the default input size


def decode_image(source: str | Path | bytes, name: str | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a file path or encoded bytes into uint8 H x W x 3 (grayscale, RGBA, 16-bit accepted).

    The size is read from the header first: an image with more than `max_pixels` pixels (None:
    no limit but Pillow's bomb guard), or a side under MIN_SIDE, is refused before it is decoded."""
    label = name or ("upload" if isinstance(source, bytes) else str(source))
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise VqcError(f"image {label} is {width} x {height} ({width * height / 1e6:.1f} megapixels), "
                               f"over the limit of {max_pixels / 1e6:.1f} megapixels (--max-pixels)")
            if min(width, height) < MIN_SIDE:
                raise VqcError(f"image {label} is {width} x {height} pixels: too small to inspect "
                               f"(each side at least {MIN_SIDE})")
            image.load()
            return _to_rgb8(image)
    except FileNotFoundError:
        raise VqcError(f"image {label} does not exist") from None
    except IsADirectoryError:
        raise VqcError(f"image {label} is a folder, not a file") from None
    except UnidentifiedImageError:
        raise VqcError(f"cannot read image {label}: {NOT_AN_IMAGE}") from None
    except Image.DecompressionBombError as exc:
        raise VqcError(f"cannot read image {label}: over Pillow's decompression-bomb limit ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError,
            ZeroDivisionError, MemoryError) as exc:
        # Pillow's plugins raise all of these on damaged files (truncated data, broken headers)
        raise VqcError(f"cannot read image {label}: {_decoder_message(exc)}") from None


def read_bytes(path: str | Path) -> bytes:
    """A file's bytes, or a one-line VqcError naming it."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise VqcError(f"image {path} does not exist") from None
    except IsADirectoryError:
        raise VqcError(f"image {path} is a folder, not a file") from None
    except OSError as exc:
        raise VqcError(f"cannot read image {path}: {exc.strerror or exc}") from None


def _decoder_message(exc: BaseException) -> str:
    """The decoder's reason in one line, without the memory address of its buffer object."""
    return re.sub(r"<[^<>]* object at 0x[0-9a-f]+>", "the data", first_line(exc))[:300]


def _to_rgb8(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit cameras: full range mapped to 8 bits
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if array.max() > 255 or image.mode.startswith("I;16") else 255.0
        gray = np.clip(array * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    # Pillow's pixels are freed (close) as soon as numpy has its copy: at 6000 x 6000 that keeps
    # decoding near the size of the result
    if image.mode == "L":  # most line cameras: one channel read out, then spread (no RGB copy in Pillow)
        gray = np.asarray(image)
        image.close()
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "RGB":
        rgb = np.asarray(image)
        image.close()
        return rgb
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA").convert("RGB")  # alpha dropped: the camera saw these pixels
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A boolean defect mask at the image's size (nearest-neighbour if the sizes differ)."""
    try:
        with Image.open(path) as mask:
            mask.load()
            if mask.size != (shape[1], shape[0]):
                mask = mask.resize((shape[1], shape[0]), Image.NEAREST)
            return np.asarray(mask.convert("L")) > 0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise VqcError(f"cannot read mask {path}: {exc}") from None


# ---------------------------------------------------------------- listing images

def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def list_images(sources: list[str | Path]) -> list[Path]:
    """Expand folders (recursively), globs and files into a sorted list of image paths."""
    paths: list[Path] = []
    for source in map(str, sources):
        if any(ch in source for ch in "*?["):
            paths += sorted(Path(p) for p in glob.glob(source, recursive=True)
                            if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        elif Path(source).is_dir():
            paths += sorted(p for p in Path(source).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif Path(source).is_file():
            paths.append(Path(source))
        else:
            raise VqcError(f"{source} is not a file, folder or glob that exists")
    if not paths:
        raise VqcError(f"no images found in {', '.join(map(str, sources))}")
    return paths


# ---------------------------------------------------------------- data set layouts

def detect_layout(root: Path) -> str:
    if (root / "train" / "good").is_dir() or (root / "test" / "good").is_dir():
        return "mvtec"
    if (root / "train" / "ok").is_dir() or (root / "test" / "ok").is_dir():
        return "btad"
    if (root / "Data" / "Images").is_dir():
        return "visa"
    return "folder"


def labelled_samples(data) -> list[Sample]:
    """A data set's test split, or the samples of a labelled pool (vqc.store.reviews.ReviewedPool)."""
    samples = getattr(data, "samples", None)
    return list(samples) if samples is not None else read_split(data, "test")


def image_manifest(images) -> list[dict]:
    """[{"name", "sha256"}] of the image files among `images` (arrays have no file to name)."""
    import hashlib
    return [{"name": Path(item).name, "sha256": hashlib.sha256(read_bytes(item)).hexdigest()}
            for item in images if isinstance(item, (str, Path))]


def read_split(root: str | Path, split: str) -> list[Sample]:
    """Samples of a data set's 'train' (good only) or 'test' split, in any supported layout."""
    root = Path(root)
    if not root.is_dir():
        raise VqcError(f"data folder {root} does not exist")
    layout = detect_layout(root)
    if layout == "visa":
        samples = _read_visa(root, split)
    elif layout == "folder":
        if split == "test":
            raise VqcError(f"{root} has no test split (expected MVTec AD, BTAD or VisA layout)")
        samples = [Sample(p, 0, "good") for p in list_images([root])]
    else:
        good = "good" if layout == "mvtec" else "ok"
        samples = _read_mvtec_like(root, split, good)
    if not samples:
        raise VqcError(f"no images found in the {split} split of {root}")
    return samples


def _read_mvtec_like(root: Path, split: str, good: str) -> list[Sample]:
    folder = root / split
    if not folder.is_dir():
        raise VqcError(f"{root} has no {split}/ folder")
    if split == "train":
        if not (folder / good).is_dir():
            raise VqcError(f"{root} has no {split}/{good}/ folder of defect-free images")
        return [Sample(p, 0, "good") for p in _images_in(folder / good)]
    samples = []
    for defect_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = _images_in(defect_dir)
        if defect_dir.name == good:
            samples += [Sample(p, 0, "good") for p in images]
            continue
        masks = _masks_for(root / "ground_truth" / defect_dir.name, images)
        samples += [Sample(p, 1, defect_dir.name, masks.get(p.stem)) for p in images]
    return samples


def _masks_for(mask_dir: Path, images: list[Path]) -> dict[str, Path]:
    """Match masks to images by name: '<stem>_mask.*' (MVTec AD) or '<stem>.*' (BTAD)."""
    if not mask_dir.is_dir():
        return {}
    stems = {p.stem for p in images}
    masks = {}
    for mask in _images_in(mask_dir):
        stem = mask.stem.removesuffix("_mask") if mask.stem not in stems else mask.stem
        if stem not in stems:
            raise VqcError(f"mask {mask} has no image named {stem}.* in {mask_dir.parent.parent / 'test' / mask_dir.name}")
        masks[stem] = mask
    return masks


def _read_visa(root: Path, split: str) -> list[Sample]:
    """VisA: a category folder, with the split CSV (split_csv/1cls.csv) beside or above it."""
    candidates = [root / "split_csv" / "1cls.csv", root.parent / "split_csv" / "1cls.csv"]
    split_csv = next((c for c in candidates if c.is_file()), None)
    if split_csv is None:
        raise VqcError(f"VisA category {root}: no split_csv/1cls.csv found beside or above it")
    base = split_csv.parent.parent
    samples = []
    with open(split_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["object"] != root.name or row["split"] != split:
                continue
            label = 0 if row["label"] == "normal" else 1
            mask = base / row["mask"] if label and row.get("mask") else None
            samples.append(Sample(base / row["image"], label, "good" if label == 0 else "anomaly", mask))
    return samples
