"""AnomalyModel: config + Detector + what was learned at fit time; fit, predict, save, load."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..choices import BORDERS
from ..progress import progress_bar
from ..version import __version__
from .backbones import build_trunk, get_spec, normalisation
from ..data import default_max_pixels, image_manifest, list_images, read_split
from .detector import Detector
from ..engines import EngineSettings, open_graph_engine
from ..errors import VqcError
from ..files import atomic_path
from ..geometry import Geometry
from ..modelfile import FORMAT, FORMAT_VERSION
from .heads import create_head
from ..scoring import ImageInput, Scorer
from ..threshold import Threshold, stored
from .thresholds import choose_threshold
from .torch_engine import TorchEngine, open_torch_engine

log = logging.getLogger(__name__)



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
    border: str = "zero"  # zero: the trunk's own zero padding; reflect: the input mirrored outwards first
    top_k: int = 0  # image score: 0 = max of the map, k = mean of the k highest positions
    validation_fraction: float = 0.1  # good training images held out to learn the normal score range
    leave_one_out: bool = True  # heads that can (knn): fit every image, each scored without its own patches
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return cls(**{**data, "layers": tuple(data.get("layers", ()))})


class AnomalyModel(Scorer):
    """A detector for one product: fit on good images, then score new ones.

    >>> model = AnomalyModel(backbone="efficientnet_lite0", head="knn").fit("data/bottle")
    >>> model.predict(["part.png"])[0].score

    The model scores with the Detector in fp32; `scorer(EngineSettings(...))` gives a Scorer on
    another engine or precision.
    """

    engine_name = "torch"

    def __init__(self, backbone: str | None = None, head: str = "knn", layers: Sequence[int] | None = None,
                 image_size: int = 224, weights: str | None = None, head_options: dict | None = None,
                 batch_size: int = 16, device: str | None = None, **config):
        backbone = backbone or default_backbone(head)
        spec = get_spec(backbone)
        self.config = ModelConfig(backbone=backbone, head=head, layers=tuple(layers or spec.layers_for(head)),
                                  image_size=image_size, head_options=dict(head_options or {}), **config)
        self.geometry = Geometry(self.config.geometry, image_size, self.config.tile_stride, self.config.tile_scale)
        if self.config.border not in BORDERS:
            raise VqcError(f"unknown border {self.config.border!r}; choose one of: {', '.join(BORDERS)}")
        if spec.fixed_size and (self.geometry.mode == "native" or image_size != 224):
            raise VqcError(f"backbone {backbone} takes 224 x 224 inputs only (fixed position embeddings or "
                           f"windows): use geometry resize, letterbox or tile with size 224")
        self.weights = weights
        self.batch_size = batch_size
        self.max_pixels = default_max_pixels(image_size)  # larger images are refused by name, not decoded
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.detector: Detector | None = None
        self.info: dict = {}  # weights source, fit statistics, the normal score range
        self.threshold: Threshold | None = None  # chosen by vqc.training.thresholds

    @property
    def top_k(self) -> int:
        return self.config.top_k

    def ready(self) -> bool:
        return self.detector is not None

    def describe(self) -> dict:
        c = self.config
        return {"backbone": c.backbone, "layers": list(c.layers), "head": c.head, "image_size": c.image_size,
                "weights_source": self.info.get("weights_source"), "n_train": self.info.get("n_train")}

    # ------------------------------------------------------------ building

    def _build(self, weights: str | None) -> str:
        cfg = self.config
        trunk, source = build_trunk(cfg.backbone, cfg.layers, weights)
        head = create_head(cfg.head, trunk.channels, cfg.head_options)
        self.config = cfg = replace(cfg, head_options=head.options())  # saved files name every option
        mean, std = normalisation(get_spec(cfg.backbone))
        self.detector = Detector(trunk, head, mean, std, cfg.smoothing_sigma, cfg.top_k,
                                 cfg.border).to(self.device).eval()
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
        val_levels = list(self.feature_batches(val, progress=False, sizes=sizes))
        fit_stats = self.detector.head.fit(self.feature_batches(train, progress, sizes, owners), val_levels,
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
            "fit_manifest": image_manifest(images),  # which images, by hash: the model store's record of the fit
            "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.threshold = choose_threshold(self, "false-reject-rate=0.01")  # until a labelled choice is made
        return self

    def feature_batches(self, images: list, progress: bool, sizes: list | None = None,
                         owners: list | None = None) -> Iterator[list[torch.Tensor]]:
        """Feature levels of the images' network inputs (tiles, for tiling), batch by batch; a head
        decides whether to keep them. `sizes` collects each image's (h, w), `owners` the index in
        `images` of each input yielded."""
        done = 0
        with progress_bar(total=len(images), desc="features", unit="img", shown=progress) as bar:
            for plans in self.planned_chunks(images):
                if sizes is not None:
                    sizes.extend(plan.original for plan in plans)
                for keys, batch, _ in self.input_batches(plans):
                    if owners is not None:
                        owners.extend(done + i for i, _ in keys)
                    with torch.inference_mode():
                        levels = self.detector.features(torch.from_numpy(batch).to(self.device))
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
        with progress_bar(total=len(images), desc="leave-one-out", unit="img", shown=progress) as bar:
            for i, image in enumerate(images):
                drop = image_of_row == i
                if drop.all():
                    raise VqcError("knn: every patch in the memory bank comes from one image; fit on more "
                                   "images or with a larger coreset")
                with head.without(drop):
                    (_, canvas, score), = self.canvases(self.planned_chunks([image]))
                scores.append(score)
                medians.append(float(np.median(canvas)))
                bar.update(1)
        return np.asarray(scores), float(np.median(medians))

    def _normal_range(self, images: list, progress: bool) -> tuple[np.ndarray, float]:
        """Scores of held-out good images, and the median map value: the operator's scale."""
        scores, medians = [], []
        with progress_bar(total=len(images), desc="validation", unit="img", shown=progress) as bar:
            for _, canvas, score in self.canvases(self.planned_chunks(images)):
                scores.append(score)
                medians.append(float(np.median(canvas)))
                bar.update(1)
        return np.asarray(scores), float(np.median(medians))

    # ------------------------------------------------------------ predicting

    def run_batch(self, images: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The model's own scoring (predict, fit's normal range): the Detector in fp32."""
        return TorchEngine(self.detector, self.device).run(images, valid)

    def scorer(self, settings: EngineSettings, graph: str | Path | None = None) -> ModelScorer:
        """A new Scorer of this model on the engine the settings pick (vqc.engines): the Detector
        itself ("torch", in the settings' precision, compiled if they ask), or its exported graph in
        ONNX Runtime or OpenVINO: `graph` when given, else the parity-checked export from the cache
        (export.cached_onnx). "auto" falls back to torch, with a warning, where the export fails.
        The model is not changed: scorers of one model with different settings score side by side."""
        self.require_ready()
        if not isinstance(settings, EngineSettings):
            raise VqcError(f"scorer takes EngineSettings (vqc.engines), e.g. EngineSettings('onnx'), not {settings!r}")
        if settings.threads:
            torch.set_num_threads(settings.threads)
        kind = settings.graph_engine(on_gpu=self.device.type != "cpu")
        if kind is not None:
            from .export import cached_onnx
            try:
                return ModelScorer(self, *open_graph_engine(graph or cached_onnx(self), settings, kind))
            except VqcError as exc:
                if settings.name != "auto":
                    raise
                log.warning("%s engine unavailable, scoring with PyTorch: %s", kind, exc)
        return ModelScorer(self, open_torch_engine(self.detector, self.device, settings), "torch")

    # ------------------------------------------------------------ saving

    def save(self, path: str | Path) -> Path:
        """One safetensors file: every tensor of the Detector, with config and info as JSON metadata."""
        self.require_ready()
        from safetensors.torch import save_file
        path = Path(path)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.detector.state_dict().items()}
        metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                    "config": json.dumps(asdict(self.config)), "info": json.dumps(self.info),
                    "threshold": json.dumps(stored(self.threshold))}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return path


class ModelScorer(Scorer):
    """A fitted AnomalyModel scoring on one engine (made by AnomalyModel.scorer). Geometry, top-k,
    info, threshold, config, describe and save are the model's, read when used: a threshold chosen
    on the model later is the one the verdicts use, and `vqc evaluate --record` saves into the
    model. batch_size and max_pixels are the scorer's own, copied from the model."""

    def __init__(self, model: AnomalyModel, engine, engine_name: str):
        self.model = model
        self.engine = engine  # TorchEngine, or an exported-graph engine (vqc.engines)
        self.engine_name = engine_name
        self.batch_size = model.batch_size
        self.max_pixels = model.max_pixels

    geometry = property(lambda self: self.model.geometry)
    top_k = property(lambda self: self.model.top_k)
    info = property(lambda self: self.model.info)
    threshold = property(lambda self: self.model.threshold)
    config = property(lambda self: self.model.config)

    def run_batch(self, images: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return self.engine.run(images, valid)

    def describe(self) -> dict:
        return self.model.describe()

    def save(self, path: str | Path) -> Path:
        return self.model.save(path)


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
    model.threshold = Threshold.of(_header_json(path, metadata, "threshold", (dict, type(None)), "null"))
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
