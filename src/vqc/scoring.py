"""Scoring images with a fitted model, whatever runs it: decode, plan, batch, run, assemble, score.

`Scorer` is the path from image files (or arrays) to `Prediction`s, shared by the training
model (vqc.training.model.AnomalyModel, torch) and the line bundle (vqc.bundle.LineBundle, torch-free).
A subclass supplies `run_batch`, the network on uint8 inputs; everything else is here, once.
This module imports no torch.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .data import decode_image, list_images, read_bytes
from .errors import VqcError
from .geometry import Geometry, Plan, assemble, to_original, valid_mask
from .geometry import score as canvas_score
from .progress import progress_bar
from .threshold import Threshold, Verdict

ImageInput = str | Path | np.ndarray
DECODE_THREADS = 4  # decoding waits on files and Pillow, not on the model's cores


@dataclass
class Prediction:
    score: float
    normalised_score: float  # 0 = typical good part, 1 = worst held-out good part
    path: Path | None = None
    verdict: Verdict | None = None  # DEFECTIVE when score >= the model's threshold, else OK; None without one
    plan: Plan | None = field(default=None, repr=False)
    canvas: np.ndarray | None = field(default=None, repr=False)  # the smoothed map at network resolution
    warning: str | None = None  # e.g. an image far smaller than the fitted ones: its score may mislead
    image: np.ndarray | None = field(default=None, repr=False)  # with keep_inputs: the decoded image
    data: bytes | None = field(default=None, repr=False)  # with keep_inputs: the file's bytes

    @cached_property
    def anomaly_map(self) -> np.ndarray:
        """float32, the input image's height x width; computed on first use (a run that only needs
        scores never pays for upsampling maps)."""
        return to_original(self.plan, self.canvas)

    def map_at(self, height: int, width: int) -> np.ndarray:
        """The anomaly map resized straight from the canvas to height x width (a bounded-size
        overlay never needs the full-resolution map)."""
        return to_original(self.plan, self.canvas, (height, width))


class Scorer:
    """Images in, Predictions out. Subclasses set `geometry`, `batch_size`, `max_pixels`, `top_k`,
    `info` (with "normal_scores", "map_floor", optionally "smallest_image"), `threshold` and
    `engine_name`, and implement `run_batch`."""

    geometry: Geometry
    batch_size: int
    max_pixels: int
    top_k: int
    info: dict
    threshold: Threshold | None
    engine_name: str

    def run_batch(self, images: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [n, 3, H, W] (and the letterbox mask) -> (maps float32 [n, 1, H, W], scores [n])."""
        raise NotImplementedError

    def ready(self) -> bool:
        return True

    def require_ready(self) -> None:
        if not self.ready():
            raise VqcError("model is not fitted: call fit() or vqc.load() first")

    # ------------------------------------------------------------ the path, in order

    def decode(self, item: ImageInput | tuple[bytes, str]) -> np.ndarray:
        """An RGB uint8 array from a path, bytes, (bytes, name) or an array (grey arrays are repeated to RGB)."""
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8:
                raise VqcError(f"image arrays must be uint8, got {item.dtype}")
            return np.repeat(item[:, :, None], 3, axis=2) if item.ndim == 2 else item[:, :, :3]
        if isinstance(item, tuple):
            return decode_image(item[0], item[1], max_pixels=self.max_pixels)
        return decode_image(item, max_pixels=self.max_pixels)

    def indexed_chunks(self, images: Sequence[ImageInput], on_unreadable=None,
                       keep_inputs: bool = False) -> Iterator[list[tuple[int, Plan, tuple | None]]]:
        """(index in images, plan, (bytes, decoded image) with keep_inputs else None) for
        batch_size images at a time, decoded in a thread pool (Pillow and numpy release the GIL).
        The next chunk is decoded while the caller runs the model on this one, so end-to-end speed
        approaches model speed. An image that cannot be decoded raises VqcError, or, with
        on_unreadable, is handed to it and left out."""
        def plan(item: ImageInput) -> tuple[Plan, tuple | None]:
            if not keep_inputs:
                return self.geometry.plan(self.decode(item)), None
            if isinstance(item, np.ndarray):
                data, source = item.tobytes(), item
            elif isinstance(item, bytes):
                data, source = item, item
            else:  # a path: read once, decoded from those bytes, which are kept for the records
                data = read_bytes(item)
                source = (data, str(item))
            image = self.decode(source)
            return self.geometry.plan(image), (data, image)

        def results(futures: list[tuple[int, Future]]) -> list[tuple[int, Plan, tuple | None]]:
            done = []
            for i, future in futures:
                try:
                    done.append((i, *future.result()))
                except VqcError as exc:
                    if on_unreadable is None:
                        raise
                    on_unreadable(images[i], exc)
            return done

        if len(images) <= self.batch_size and all(isinstance(item, np.ndarray) for item in images):
            yield [(i, *plan(item)) for i, item in enumerate(images)]  # decoded already (the service): no pool
            return
        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
            pending: deque[list[tuple[int, Future]]] = deque()
            for start in range(0, len(images), self.batch_size):
                pending.append([(i, pool.submit(plan, images[i]))
                                for i in range(start, min(start + self.batch_size, len(images)))])
                if len(pending) > 1:
                    yield results(pending.popleft())
            while pending:
                yield results(pending.popleft())

    def planned_chunks(self, images: Sequence[ImageInput]) -> Iterator[list[Plan]]:
        """Decoded and planned (resized, padded, tiled) images, batch_size at a time."""
        for chunk in self.indexed_chunks(images):
            yield [plan for _, plan, _ in chunk]

    def input_batches(self, plans: list[Plan]) -> Iterator[tuple[list, np.ndarray, np.ndarray | None]]:
        """The plans' network inputs in batches of at most batch_size of one shape:
        ([(plan index, input index)], uint8 [n, 3, H, W], valid mask or None)."""
        by_shape: dict[tuple, list] = {}
        for i, plan in enumerate(plans):
            for j, array in enumerate(plan.inputs):
                by_shape.setdefault(array.shape, []).append((i, j))
        for shape, keys in by_shape.items():
            for start in range(0, len(keys), self.batch_size):
                part = keys[start:start + self.batch_size]
                batch = np.stack([plans[i].inputs[j] for i, j in part]).transpose(0, 3, 1, 2)
                yield part, batch, valid_mask([plans[i].content[j] for i, j in part], shape[:2])

    def canvases(self, chunks: Iterable[list[Plan]]) -> Iterator[tuple[Plan, np.ndarray, float]]:
        """(plan, smoothed map on the canvas, image score) per planned image, in order."""
        self.require_ready()
        geometry = self.geometry
        overlap = geometry.size - geometry.tile_stride if geometry.mode == "tile" else 0
        for plans in chunks:
            maps, scores = {}, {}
            for keys, batch, valid in self.input_batches(plans):
                batch_maps, batch_scores = self.run_batch(batch, valid)
                maps.update(zip(keys, np.asarray(batch_maps)))
                scores.update(zip(keys, np.asarray(batch_scores).tolist()))
            for i, plan in enumerate(plans):
                if len(plan.inputs) == 1:  # the Detector's own score: the same map, no second pass over it
                    yield plan, assemble(plan, maps[i, 0][None]), scores[i, 0]
                    continue
                canvas = assemble(plan, np.stack([maps[i, j] for j in range(len(plan.inputs))]), overlap)
                yield plan, canvas, canvas_score(canvas, self.top_k)

    def prediction(self, plan: Plan, canvas: np.ndarray, score: float, path: Path | None = None) -> Prediction:
        return Prediction(score, self.normalise(score), path, self.verdict(score), plan, canvas,
                          self.size_warning(plan.original))

    # ------------------------------------------------------------ what callers use

    def predict_iter(self, images: Sequence[ImageInput], progress: bool = False,
                     on_unreadable=None, keep_inputs: bool = False) -> Iterator[Prediction]:
        """Score images one batch at a time; maps come back at each image's own resolution.

        An image that cannot be decoded, or is over max_pixels, raises VqcError; with
        on_unreadable(image, error) it is handed to that instead and the rest are scored. With
        keep_inputs each Prediction carries the file's bytes and the decoded image (each file
        read and decoded once, for records and overlays)."""
        self.require_ready()
        images = list(images)
        order: deque[tuple[int, tuple | None]] = deque()  # each plan's index (and inputs) on its way through
        with progress_bar(total=len(images), desc="predict", unit="img", shown=progress) as bar:
            def skipped(image, error):
                bar.update(1)
                on_unreadable(image, error)

            def plans():
                for chunk in self.indexed_chunks(images, skipped if on_unreadable else None, keep_inputs):
                    order.extend((i, source) for i, _, source in chunk)
                    yield [plan for _, plan, _ in chunk]

            for plan, canvas, score in self.canvases(plans()):
                i, source = order.popleft()
                image = images[i]
                pred = self.prediction(plan, canvas, score, Path(image) if isinstance(image, (str, Path)) else None)
                if source is not None:
                    pred.data, pred.image = source
                yield pred
                bar.update(1)

    def predict(self, images: Sequence[ImageInput] | ImageInput, progress: bool = False) -> list[Prediction]:
        if isinstance(images, (str, Path)) and Path(images).is_dir():
            images = list_images([images])
        elif isinstance(images, (str, Path, np.ndarray)):
            images = [images]
        return list(self.predict_iter(images, progress))

    def predict_plans(self, plans: list[Plan]) -> list[Prediction]:
        """Score images already decoded and planned with self.geometry.plan, e.g. by a separate
        decoding stage (vqc.training.ray_predict); the same path as predict_iter from there on."""
        return [self.prediction(plan, canvas, score) for plan, canvas, score in self.canvases([plans])]

    def size_warning(self, shape: tuple[int, int]) -> str | None:
        """A line when an image is far smaller (a side under half) than the smallest fitted image."""
        smallest = self.info.get("smallest_image")  # absent in files from before it was recorded
        if not smallest or (shape[0] * 2 >= smallest[0] and shape[1] * 2 >= smallest[1]):
            return None
        return (f"image is {shape[1]} x {shape[0]} pixels, far smaller than the {smallest[1]} x {smallest[0]} "
                f"of the smallest image the model was fitted on: its score may mislead")

    def verdict(self, score: float) -> Verdict | None:
        return None if self.threshold is None else self.threshold.judge(score)

    def normal_range(self) -> tuple[float, float]:
        """(floor, top): the median map value and the highest score of the good images scored at fit time."""
        return self.info["map_floor"], max(self.info["normal_scores"])

    def normalise(self, score: float | np.ndarray):
        """Map a score so that 0 is a typical good position and 1 the worst good image seen at fit time."""
        floor, top = self.normal_range()
        return (score - floor) / max(top - floor, 1e-12)
