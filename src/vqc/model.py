"""AnomalyModel: config + Detector + what was learned at fit time; fit, predict, save, load."""
from __future__ import annotations

import json
import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .version import __version__
from .backbones import build_trunk, get_spec, normalisation
from .data import decode_image, default_max_pixels, list_images, read_split
from .choices import ENGINES
from .detector import Detector
from .errors import VqcError
from .files import atomic_path
from .geometry import Geometry, Plan, assemble, to_original, valid_mask
from .geometry import score as canvas_score
from .heads import create_head
from .thresholds import choose_threshold

log = logging.getLogger(__name__)

FORMAT = "vqc-model"
FORMAT_VERSION = 1

ImageInput = str | Path | np.ndarray
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DECODE_THREADS = 4  # decoding waits on files and Pillow, not on the model's cores


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    head: str = "knn"
    layers: tuple[int, ...] = ()  # empty: the backbone's default layers
    image_size: int = 224  # network input side (short side for geometry "native")
    geometry: str = "resize"  # resize | letterbox | native | tile: see vqc.geometry
    tile_stride: int = 0  # geometry "tile": pixels between tiles; 0 = 7/8 of image_size
    tile_scale: float = 1.0  # geometry "tile": image scale before tiling
    head_options: dict = field(default_factory=dict)
    smoothing_sigma: float = 4.0  # Gaussian smoothing of the map, in input pixels
    top_k: int = 0  # image score: 0 = max of the map, k = mean of the k highest positions
    validation_fraction: float = 0.1  # good training images held out to learn the normal score range
    leave_one_out: bool = True  # heads that can (knn): fit every image, each scored without its own patches
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return cls(**{**data, "layers": tuple(data.get("layers", ()))})


@dataclass
class Prediction:
    score: float
    normalised_score: float  # 0 = typical good part, 1 = worst held-out good part
    path: Path | None = None
    verdict: str | None = None  # "defective" when score >= the model's threshold, else "ok"; None without one
    plan: Plan | None = field(default=None, repr=False)
    canvas: torch.Tensor | None = field(default=None, repr=False)  # the smoothed map at network resolution
    warning: str | None = None  # e.g. an image far smaller than the fitted ones: its score may mislead

    @cached_property
    def anomaly_map(self) -> np.ndarray:
        """float32, the input image's height x width; computed on first use (a run that only needs
        scores never pays for upsampling maps)."""
        return to_original(self.plan, self.canvas)

    def map_at(self, height: int, width: int) -> np.ndarray:
        """The anomaly map resized straight from the canvas to height x width (a bounded-size
        overlay never needs the full-resolution map)."""
        return to_original(self.plan, self.canvas, (height, width))


class AnomalyModel:
    """A detector for one product: fit on good images, then score new ones.

    >>> model = AnomalyModel(backbone="efficientnet_lite0", head="knn").fit("data/bottle")
    >>> model.predict(["part.png"])[0].score
    """

    def __init__(self, backbone: str | None = None, head: str = "knn", layers: Sequence[int] | None = None,
                 image_size: int = 224, weights: str | None = None, head_options: dict | None = None,
                 batch_size: int = 16, device: str | None = None, **config):
        backbone = backbone or default_backbone(head)
        spec = get_spec(backbone)
        self.config = ModelConfig(backbone=backbone, head=head, layers=tuple(layers or spec.layers_for(head)),
                                  image_size=image_size, head_options=dict(head_options or {}), **config)
        self.geometry = Geometry(self.config.geometry, image_size, self.config.tile_stride, self.config.tile_scale)
        if spec.fixed_size and (self.geometry.mode == "native" or image_size != 224):
            raise VqcError(f"backbone {backbone} takes 224 x 224 inputs only (fixed position embeddings or "
                           f"windows): use geometry resize, letterbox or tile with size 224")
        self.weights = weights
        self.batch_size = batch_size
        self.max_pixels = default_max_pixels(image_size)  # larger images are refused by name, not decoded
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.detector: Detector | None = None
        self.info: dict = {}  # weights source, fit statistics, the normal score range
        self.threshold: dict | None = None  # {"policy", "value", ...}: see vqc.thresholds
        self.engine = None  # None: the PyTorch Detector; else a callable such as export.OnnxEngine
        self.engine_name = "torch"
        self._compiled = None  # torch.compile'd Detector, when asked for

    # ------------------------------------------------------------ building

    def _build(self, weights: str | None) -> str:
        cfg = self.config
        trunk, source = build_trunk(cfg.backbone, cfg.layers, weights)
        head = create_head(cfg.head, trunk.channels, cfg.head_options)
        self.config = cfg = replace(cfg, head_options=head.options())  # saved files name every option
        mean, std = normalisation(get_spec(cfg.backbone))
        self.detector = Detector(trunk, head, mean, std, cfg.smoothing_sigma, cfg.top_k).to(self.device).eval()
        return source

    # ------------------------------------------------------------ fitting

    def fit(self, data: str | Path | Sequence[ImageInput], progress: bool = True) -> "AnomalyModel":
        """Fit on defect-free images: a data set root (its train split), a folder, or a list."""
        images = _training_images(data)
        if len(images) < 2:
            raise VqcError(f"need at least 2 good training images, found {len(images)} in {data}")
        start = time.perf_counter()
        source = self._build(self.weights)
        leave_one_out = self.config.leave_one_out and hasattr(self.detector.head, "without")
        if leave_one_out:  # the normal range from every good image, none kept out of the fit
            train_index, val_index = list(range(len(images))), []
        else:
            train_index, val_index = validation_split(len(images), self.config.validation_fraction, self.config.seed)
        val = [images[i] for i in val_index]
        train = [images[i] for i in train_index]

        torch.manual_seed(self.config.seed)
        sizes: list[tuple[int, int]] = []
        owners: list[int] = []  # the train image of each network input, in the order the head sees them
        val_levels = list(self._feature_batches(val, progress=False, sizes=sizes))
        fit_stats = self.detector.head.fit(self._feature_batches(train, progress, sizes, owners), val_levels,
                                           progress=progress)
        self.detector.eval().requires_grad_(False)  # fitted: inference never needs gradients
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        if leave_one_out:
            val_scores, floor = self._leave_one_out_range(train, torch.tensor(owners), progress)
        else:
            val_scores, floor = self._normal_range(val or train, progress)
        per_image = (time.perf_counter() - start) / len(val or train)
        self.info = {
            "vqc_version": __version__, "weights_source": source, "n_train": len(train), "n_validation": len(val),
            "normal_scores_from": ("every fit image, scored without its own patches (leave-one-out)" if leave_one_out
                                   else "held-out good training images" if val else "the fit images themselves"),
            "fit_seconds": round(fit_seconds, 3), "inference_ms_per_image": round(per_image * 1000, 2),
            "device": str(self.device), "head_fit": fit_stats,
            "normal_scores": [float(s) for s in val_scores], "map_floor": floor,
            "smallest_image": [min(h for h, _ in sizes), min(w for _, w in sizes)],  # (h, w) over fit images
            "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.threshold = choose_threshold(self, "false-reject-rate=0.01")  # until a labelled choice is made
        return self

    def _feature_batches(self, images: list, progress: bool, sizes: list | None = None,
                         owners: list | None = None) -> Iterator[list[torch.Tensor]]:
        """Feature levels of the images' network inputs (tiles, for tiling), batch by batch; a head
        decides whether to keep them. `sizes` collects each image's (h, w), `owners` the index in
        `images` of each input yielded."""
        done = 0
        with tqdm(total=len(images), desc="features", unit="img", disable=not progress) as bar:
            for plans in self._planned_chunks(images):
                if sizes is not None:
                    sizes.extend(plan.original for plan in plans)
                for keys, batch, _ in self._input_batches(plans):
                    if owners is not None:
                        owners.extend(done + i for i, _ in keys)
                    with torch.inference_mode():
                        levels = self.detector.features(batch.to(self.device))
                    yield [level.clone() for level in levels]  # clone outside inference mode: heads may train on them
                done += len(plans)
                bar.update(len(plans))

    def _leave_one_out_range(self, images: list, owners: torch.Tensor, progress: bool) -> tuple[np.ndarray, float]:
        """_normal_range with each fit image scored against a bank without its own patches: the
        scores a good part the fit never saw would get, for every good image there is. (The coreset
        was chosen with the image present, so the rest covers its region a little less: the scores
        lean high and the threshold to the safe side.)"""
        head = self.detector.head
        image_of_row = owners[head.bank_inputs]
        scores, medians = [], []
        with tqdm(total=len(images), desc="leave-one-out", unit="img", disable=not progress) as bar:
            for i, image in enumerate(images):
                drop = image_of_row == i
                if drop.all():
                    raise VqcError("knn: every patch in the memory bank comes from one image; fit on more "
                                   "images or with a larger coreset")
                with head.without(drop):
                    (_, canvas, score), = self._canvases([image])
                scores.append(score)
                medians.append(float(canvas.median()))
                bar.update(1)
        return np.asarray(scores), float(np.median(medians))

    def _normal_range(self, images: list, progress: bool) -> tuple[np.ndarray, float]:
        """Scores of held-out good images, and the median map value: the operator's scale."""
        scores, medians = [], []
        with tqdm(total=len(images), desc="validation", unit="img", disable=not progress) as bar:
            for _, canvas, score in self._canvases(images):
                scores.append(score)
                medians.append(float(canvas.median()))
                bar.update(1)
        return np.asarray(scores), float(np.median(medians))

    # ------------------------------------------------------------ predicting

    def _require_fitted(self):
        if self.detector is None:
            raise VqcError("model is not fitted: call fit() or vqc.load() first")

    def _planned_chunks(self, images: Sequence[ImageInput]) -> Iterator[list[Plan]]:
        """Decode and plan (resize, pad, tile) batch_size images at a time; see _indexed_chunks."""
        for chunk in self._indexed_chunks(images):
            yield [plan for _, plan in chunk]

    def _indexed_chunks(self, images: Sequence[ImageInput], on_unreadable=None) -> Iterator[list[tuple[int, Plan]]]:
        """(index in images, plan) for batch_size images at a time, decoded in a thread pool
        (Pillow and numpy release the GIL). The next chunk is decoded while the caller runs the
        model on this one, so end-to-end speed approaches model speed. An image that cannot be
        decoded raises VqcError, or, with on_unreadable, is handed to it and left out."""
        def plan(item: ImageInput) -> Plan:
            return self.geometry.plan(self._as_array(item))

        def results(futures: list[tuple[int, Future]]) -> list[tuple[int, Plan]]:
            done = []
            for i, future in futures:
                try:
                    done.append((i, future.result()))
                except VqcError as exc:
                    if on_unreadable is None:
                        raise
                    on_unreadable(images[i], exc)
            return done

        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
            pending: deque[list[tuple[int, Future]]] = deque()
            for start in range(0, len(images), self.batch_size):
                pending.append([(i, pool.submit(plan, images[i]))
                                for i in range(start, min(start + self.batch_size, len(images)))])
                if len(pending) > 1:
                    yield results(pending.popleft())
            while pending:
                yield results(pending.popleft())

    def _input_batches(self, plans: list[Plan]) -> Iterator[tuple[list, torch.Tensor, torch.Tensor | None]]:
        """The plans' network inputs in batches of at most batch_size of one shape:
        ([(plan index, input index)], uint8 [n, 3, H, W], valid mask or None)."""
        by_shape: dict[tuple, list] = {}
        for i, plan in enumerate(plans):
            for j, array in enumerate(plan.inputs):
                by_shape.setdefault(array.shape, []).append((i, j))
        for shape, keys in by_shape.items():
            for start in range(0, len(keys), self.batch_size):
                part = keys[start:start + self.batch_size]
                batch = torch.from_numpy(np.stack([plans[i].inputs[j] for i, j in part])).permute(0, 3, 1, 2)
                yield part, batch, valid_mask([plans[i].content[j] for i, j in part], shape[:2])

    def _canvases(self, images: Sequence[ImageInput]) -> Iterator[tuple[Plan, torch.Tensor, float]]:
        """(plan, smoothed map on the canvas, image score) per image, in order."""
        return self._canvases_of(self._planned_chunks(images))

    def _canvases_of(self, chunks: Iterable[list[Plan]]) -> Iterator[tuple[Plan, torch.Tensor, float]]:
        self._require_fitted()
        overlap = self.geometry.size - self.geometry.tile_stride if self.geometry.mode == "tile" else 0
        for plans in chunks:
            maps, scores = {}, {}
            for keys, batch, valid in self._input_batches(plans):
                batch_maps, batch_scores = self._forward(batch, valid)
                maps.update(zip(keys, batch_maps.cpu()))
                scores.update(zip(keys, batch_scores.tolist()))
            for i, plan in enumerate(plans):
                if len(plan.inputs) == 1:  # the Detector's own score: the same map, no second pass over it
                    yield plan, assemble(plan, maps[i, 0][None]), scores[i, 0]
                    continue
                canvas = assemble(plan, torch.stack([maps[i, j] for j in range(len(plan.inputs))]), overlap)
                yield plan, canvas, canvas_score(canvas, self.config.top_k)

    def _forward(self, batch: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.engine is not None:
            return self.engine(batch, valid)
        if self.device.type == "cuda":  # pinned host memory: the copy overlaps with work already queued
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        detector = self.torch_module
        with torch.inference_mode():
            return detector(batch.to(self.device), None if valid is None else valid.to(self.device))

    @property
    def torch_module(self):
        """What the torch engine runs: the torch.compile'd Detector when compile was asked, else the Detector."""
        return self._compiled or self.detector

    def use_engine(self, name: str = "auto", onnx_path: str | Path | None = None, threads: int | None = None,
                   precision: str = "fp32", compile: bool = False) -> AnomalyModel:
        """Score with "torch" (the Detector), "onnx" (ONNX Runtime on the exported Detector),
        "openvino" (OpenVINO on that same exported graph) or "auto": on a CPU, ONNX Runtime for
        fp32 and OpenVINO for bf16, the fastest of each there (see `vqc benchmark --speed`);
        PyTorch on a GPU or where the export fails. The export is parity-checked and cached (see
        export.cached_onnx), unless an exported file is given. threads: CPU threads for any engine.
        precision bf16 (openvino, torch) or fp16 (torch): the whole graph in bfloat16 (openvino, on
        CPUs with bf16 units) or the backbone under autocast (torch); check AUROC with
        `vqc evaluate` first. compile: the torch engine's Detector wrapped in torch.compile."""
        self._require_fitted()
        if name not in ENGINES:
            raise VqcError(f"unknown engine {name!r}; use {', '.join(ENGINES)}")
        if precision not in PRECISIONS:
            raise VqcError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
        if name == "onnx" and (precision != "fp32" or compile):
            raise VqcError("the onnx engine runs the fp32 graph: precision and compile apply to the torch and openvino engines")
        if name == "openvino" and (precision == "fp16" or compile):
            raise VqcError("the openvino engine runs fp32 or bf16; fp16 and compile apply to the torch engine")
        if threads:
            torch.set_num_threads(threads)
        self.engine, self.engine_name = None, "torch"
        self.detector.trunk_dtype = None
        self._compiled = None
        if name == "torch" or (name == "auto" and (self.device.type != "cpu" or precision == "fp16" or compile)):
            self.detector.trunk_dtype = PRECISIONS[precision]
            if self.device.type == "cuda":
                self.detector.to(memory_format=torch.channels_last)
            if compile:
                self._compiled = torch.compile(self.detector)
            return self
        from .export import OnnxEngine, OpenVinoEngine, cached_onnx
        openvino = name == "openvino" or (name == "auto" and precision == "bf16")
        try:
            graph = onnx_path or cached_onnx(self)
            if openvino:
                self.engine = OpenVinoEngine(graph, threads, precision)
                self.engine_name = "openvino" if precision == "fp32" else f"openvino-{precision}"
            else:
                self.engine, self.engine_name = OnnxEngine(graph, threads), "onnx"
        except VqcError as exc:
            if name != "auto":
                raise
            log.warning("%s engine unavailable, scoring with PyTorch: %s", "OpenVINO" if openvino else "exported", exc)
            return self.use_engine("torch", threads=threads, precision=precision)
        return self

    def predict_iter(self, images: Sequence[ImageInput], progress: bool = False,
                     on_unreadable=None) -> Iterator[Prediction]:
        """Score images one batch at a time; maps come back at each image's own resolution.

        An image that cannot be decoded, or is over max_pixels, raises VqcError; with
        on_unreadable(image, error) it is handed to that instead and the rest are scored."""
        self._require_fitted()
        images = list(images)
        order: deque[int] = deque()  # the index of each plan on its way through the model
        with tqdm(total=len(images), desc="predict", unit="img", disable=not progress) as bar:
            def skipped(image, error):
                bar.update(1)
                on_unreadable(image, error)

            def plans():
                for chunk in self._indexed_chunks(images, skipped if on_unreadable else None):
                    order.extend(i for i, _ in chunk)
                    yield [plan for _, plan in chunk]

            for plan, canvas, score in self._canvases_of(plans()):
                image = images[order.popleft()]
                path = Path(image) if isinstance(image, (str, Path)) else None
                yield Prediction(score, self.normalise(score), path, self.verdict(score), plan, canvas,
                                 self.size_warning(plan.original))
                bar.update(1)

    def size_warning(self, shape: tuple[int, int]) -> str | None:
        """A line when an image is far smaller (a side under half) than the smallest fitted image."""
        smallest = self.info.get("smallest_image")  # absent in files from before it was recorded
        if not smallest or (shape[0] * 2 >= smallest[0] and shape[1] * 2 >= smallest[1]):
            return None
        return (f"image is {shape[1]} x {shape[0]} pixels, far smaller than the {smallest[1]} x {smallest[0]} "
                f"of the smallest image the model was fitted on: its score may mislead")

    def predict_plans(self, plans: list[Plan]) -> list[Prediction]:
        """Score images already decoded and planned with self.geometry.plan, e.g. by a separate
        decoding stage (vqc.scale); the same path as predict_iter from there on."""
        return [Prediction(score, self.normalise(score), None, self.verdict(score), plan, canvas,
                           self.size_warning(plan.original))
                for plan, canvas, score in self._canvases_of([plans])]

    def predict(self, images: Sequence[ImageInput] | ImageInput, progress: bool = False) -> list[Prediction]:
        if isinstance(images, (str, Path)) and Path(images).is_dir():
            images = list_images([images])
        elif isinstance(images, (str, Path, np.ndarray)):
            images = [images]
        return list(self.predict_iter(images, progress))

    def _as_array(self, item: ImageInput) -> np.ndarray:
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8:
                raise VqcError(f"image arrays must be uint8, got {item.dtype}")
            return np.repeat(item[:, :, None], 3, axis=2) if item.ndim == 2 else item[:, :, :3]
        return decode_image(item, max_pixels=self.max_pixels)

    def verdict(self, score: float) -> str | None:
        if self.threshold is None:
            return None
        return "defective" if score >= self.threshold["value"] else "ok"

    def normal_range(self) -> tuple[float, float]:
        """(floor, top): the median map value and the highest score of the held-out good images."""
        return self.info["map_floor"], max(self.info["normal_scores"])

    def normalise(self, score: float | np.ndarray):
        """Map a score so that 0 is a typical good position and 1 the worst held-out good image."""
        floor, top = self.normal_range()
        return (score - floor) / max(top - floor, 1e-12)

    # ------------------------------------------------------------ saving

    def save(self, path: str | Path) -> Path:
        """One safetensors file: every tensor of the Detector, with config and info as JSON metadata."""
        self._require_fitted()
        from safetensors.torch import save_file
        path = Path(path)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.detector.state_dict().items()}
        metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                    "config": json.dumps(asdict(self.config)), "info": json.dumps(self.info),
                    "threshold": json.dumps(self.threshold)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return path


def load(path: str | Path, device: str | None = None) -> AnomalyModel:
    """Load a model saved by AnomalyModel.save; no network and no weight package needed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open
    path = Path(path)
    if not path.is_file():
        raise VqcError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise VqcError(f"model file {path} is not a vqc model ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise VqcError(f"model file {path} is not a vqc model (no '{FORMAT}' header)")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise VqcError(f"model file {path} has format version {metadata.get('format_version')}; "
                       f"this vqc {__version__} reads version {FORMAT_VERSION}")
    config = _config_of(path, metadata)
    if config.head == "nf":  # files from before nf's level_map option stored no value and meant "nll"
        config.head_options.setdefault("level_map", "nll")
    model = AnomalyModel(**{**asdict(config), "layers": config.layers}, weights="random", device=device)
    with torch.random.fork_rng():  # the random init is overwritten below; keep the caller's RNG
        model._build("random")
    tensors = load_file(str(path))
    for name, buffer in list(model.detector.named_buffers()):  # learned banks have data-sized shapes
        if name in tensors and tensors[name].shape != buffer.shape:
            owner, _, attr = name.rpartition(".")
            setattr(model.detector.get_submodule(owner), attr, torch.empty_like(tensors[name]))
    model.detector.load_state_dict(tensors)
    model.detector.to(model.device).eval().requires_grad_(False)
    model.info = _header_json(path, metadata, "info", dict)
    model.threshold = _header_json(path, metadata, "threshold", (dict, type(None)), "null")
    model.weights = None
    return model


def _header_json(path: Path, metadata: dict, key: str, kind, default: str | None = None):
    """One JSON field of a model file's header, or a one-line error naming the file and the field."""
    text = metadata.get(key, default)
    if text is None:
        raise VqcError(f"model file {path} has no '{key}' in its header: it is damaged or not written by vqc")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VqcError(f"model file {path}: its '{key}' header is not valid JSON ({exc.msg} at character "
                       f"{exc.pos}): the file is damaged") from None
    if not isinstance(value, kind):
        raise VqcError(f"model file {path}: its '{key}' header holds a {type(value).__name__}, not what vqc wrote")
    return value


def _config_of(path: Path, metadata: dict) -> ModelConfig:
    data = _header_json(path, metadata, "config", dict)
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise VqcError(f"model file {path}: its config has settings this vqc {__version__} does not know "
                       f"({', '.join(unknown)}): it was written by another vqc version or edited")
    try:
        return ModelConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise VqcError(f"model file {path}: its config does not fit this vqc ({exc})") from None


def validation_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(fitted, held out) indexes of n good images: the held-out ones set the normal score range
    and the false-reject threshold (none below 5 images)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * fraction)) if n >= 5 else 0
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def default_backbone(head: str) -> str:
    """The from-scratch auto-encoder sees raw pixels; every other head the offline ImageNet backbone."""
    return "none" if head == "ae" else "efficientnet_lite0"




def _training_images(data) -> list:
    if isinstance(data, (str, Path)):
        return [s.path for s in read_split(data, "train")] if Path(data).is_dir() else list_images([data])
    return list(data)
