"""ONNX export of the whole Detector, with parity checked before the file is kept, and its engine.

The graph takes uint8 images [batch, 3, H, W] and returns (maps [batch, 1, H, W], scores [batch]):
normalisation, backbone, head, upsampling, smoothing and the image score are all inside, so the
exported model cannot drift from the PyTorch one. H = W = image_size, except for geometry
"native" (height and width are dynamic). Letterboxed models take a second input, `valid`
[batch, 1, H, W] (1 = image, 0 = padding). Decoding, geometry (resize, pad, tile) and tile
stitching stay outside: the same functions for every engine. A JSON side file holds what a
runtime needs besides the graph.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from .version import __version__
from .errors import VqcError
from .files import atomic_path, write_text_atomic

SIDECAR_FORMAT = "vqc-onnx"
SIDECAR_VERSION = 1
SCORE_RTOL = 1e-4  # image scores: relative difference allowed between ONNX Runtime and PyTorch
MAP_TOL = 1e-3  # maps: difference allowed, relative to the largest map value (a scale-free bound)
GRAPH_REVISION = 2  # raised whenever the Detector's graph changes for the same model, so cached exports are redone


def parity(reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray]) -> dict:
    """Largest relative score difference and largest map difference relative to the map scale."""
    (ref_maps, ref_scores), (maps, scores) = reference, candidate
    score_rel = float(np.max(np.abs(scores - ref_scores) / np.maximum(np.abs(ref_scores), 1e-12)))
    map_rel = float(np.max(np.abs(maps - ref_maps)) / max(float(np.max(np.abs(ref_maps))), 1e-12))
    return {"score_max_rel_diff": score_rel, "map_max_diff_rel_to_scale": map_rel,
            "ok": score_rel <= SCORE_RTOL and map_rel <= MAP_TOL}


def check_batches(model, images: list) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """The network inputs (and letterbox masks) of `images`, as both engines will see them."""
    batches = []
    for plans in model._planned_chunks(images):
        for _, batch, valid in model._input_batches(plans):
            batches.append((batch.numpy(), None if valid is None else valid.numpy()))
    return batches


def export_onnx(model, path: str | Path, check_images: list | None = None) -> dict:
    """Export `model` (a fitted AnomalyModel) to `path` plus `path`.json; raise if parity fails.

    check_images: images scored by both engines; seeded noise is added."""
    model._require_fitted()
    path = Path(path)
    size, mode = model.config.image_size, model.geometry.mode
    if model.detector.trunk_dtype is not None:  # checked before moving the model, so a refusal leaves it as it was
        raise VqcError("export the fp32 model: call use_engine('torch') (precision fp32) first")
    detector = model.detector.to("cpu").eval()
    rng = np.random.default_rng(0)
    noise_size = (size, size + 64) if mode == "native" else (size, size)  # native: a non-square size too
    noise = rng.integers(0, 256, (3, 3, *noise_size), dtype=np.uint8)
    valid = None
    if mode == "letterbox":  # a part that fills the height and 3/5 of the width
        valid = np.zeros((3, 1, size, size), np.float32)
        valid[:, :, :, :size * 3 // 5] = 1
    batches = [*check_batches(model, check_images or []), (noise, valid)]
    example = [torch.from_numpy(noise[:2].copy())]  # batch 2: the exporter needs a non-trivial batch size
    dims = {0: torch.export.Dim("batch")}
    if mode == "native":
        dims.update({2: 32 * torch.export.Dim("height32", min=1, max=256), 3: 32 * torch.export.Dim("width32", min=1, max=256)})
    dynamic = [dims]
    names = ["images"]
    if valid is not None:
        example.append(torch.from_numpy(valid[:2].copy()))
        dynamic.append({0: dims[0]})
        names.append("valid")
    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / "model.onnx"
        try:
            with torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(detector, tuple(example), str(graph), input_names=names,
                                  output_names=["maps", "scores"], dynamic_shapes=tuple(dynamic),
                                  opset_version=18, dynamo=True, external_data=False, verbose=False)
        except Exception as exc:  # the exporter raises many types; the user needs the head and the reason
            raise VqcError(f"ONNX export of {model.config.backbone} + {model.config.head} failed: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        engine = OnnxEngine(graph)
        checks = []
        for batch, mask in batches:
            with torch.no_grad():
                ref_maps, ref_scores = detector(torch.from_numpy(batch), None if mask is None else torch.from_numpy(mask))
            checks.append(parity((ref_maps.numpy(), ref_scores.numpy()), engine.run(batch, mask)))
        worst = {k: max(c[k] for c in checks) for k in ("score_max_rel_diff", "map_max_diff_rel_to_scale")}
        if not all(c["ok"] for c in checks):
            raise VqcError(f"ONNX export of {model.config.head} disagrees with PyTorch: scores differ by "
                           f"{worst['score_max_rel_diff']:.2e} relative (limit {SCORE_RTOL}), maps by "
                           f"{worst['map_max_diff_rel_to_scale']:.2e} of their scale (limit {MAP_TOL}); "
                           f"nothing written")
        with atomic_path(path) as final:
            shutil.copyfile(graph, final)
    model.detector.to(model.device)
    sidecar = {"format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "vqc_version": __version__,
               "input": {"name": "images", "dtype": "uint8", "layout": "NCHW", "channels": "RGB",
                         "height": "dynamic" if mode == "native" else size,
                         "width": "dynamic" if mode == "native" else size,
                         "geometry": mode, "resize": "Pillow bilinear",
                         "valid": "float32 [batch, 1, H, W], 1 = image" if valid is not None else None},
               "outputs": {"maps": "float32 [batch, 1, H, W]", "scores": "float32 [batch]"},
               "normalisation": "inside the graph", "config": _jsonable(model.config),
               "threshold": model.threshold, "info": model.info, "parity": {**worst, "images": int(sum(len(b) for b, _ in batches))}}
    write_text_atomic(path.with_suffix(path.suffix + ".json"), json.dumps(sidecar, indent=1))
    return sidecar


def cache_dir() -> Path:
    """Where exported graphs are kept between runs: $VQC_CACHE_DIR, else ~/.cache/vqc."""
    return Path(os.environ.get("VQC_CACHE_DIR") or Path.home() / ".cache" / "vqc") / "onnx"


def model_digest(model) -> str:
    """A hash of everything the exported graph depends on: config, tensors and tool versions."""
    import onnxruntime
    digest = hashlib.sha256(json.dumps(_jsonable(model.config), sort_keys=True).encode())
    digest.update(f"{__version__} {GRAPH_REVISION} {torch.__version__} {onnxruntime.__version__}".encode())
    for name, tensor in sorted(model.detector.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def cached_onnx(model) -> Path:
    """The model's exported graph from the cache, exported (parity-checked) on first use, so the
    export's cost is paid once per model, not once per run."""
    try:
        path = cache_dir() / f"{model_digest(model)}.onnx"
    except ImportError:
        raise VqcError("the ONNX engine needs onnxruntime (pip install onnxruntime)") from None
    if not path.exists():
        export_onnx(model, path)
    return path


def _jsonable(config) -> dict:
    from dataclasses import asdict
    return json.loads(json.dumps(asdict(config)))


class Engine:
    """What the engines share: the graph's inputs from a batch, and torch tensors in and out
    (each engine has run(images, valid) -> (maps, scores) on numpy arrays)."""

    inputs: list[str]

    def feed(self, images: np.ndarray, valid: np.ndarray | None) -> dict[str, np.ndarray]:
        feed = {"images": np.ascontiguousarray(images, dtype=np.uint8)}
        if "valid" in self.inputs:  # a letterbox graph: no mask means all image
            feed["valid"] = np.ones((len(images), 1, *images.shape[2:]), np.float32) if valid is None \
                else np.ascontiguousarray(valid, dtype=np.float32)
        return feed

    def __call__(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores = self.run(images.cpu().numpy(), None if valid is None else valid.cpu().numpy())
        return torch.from_numpy(maps), torch.from_numpy(scores)


class OnnxEngine(Engine):
    """Runs an exported Detector with ONNX Runtime (CUDA when available, else CPU)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise VqcError("the ONNX engine needs onnxruntime (pip install onnxruntime)") from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise VqcError(f"cannot load ONNX model {path}: {str(exc).splitlines()[0]}") from None
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, images: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(["maps", "scores"], self.feed(images, valid))
        return maps, scores


class OpenVinoEngine(Engine):
    """Runs the same exported graph with OpenVINO on a CPU: oneDNN's kernels and, with precision
    "bf16", the CPU's bfloat16 units (AMX, AVX-512 BF16) for the whole graph.

    A batch is split across OpenVINO's throughput streams, each on its own cores, which keeps every
    core busy through the heads' many small operations; a single image runs in latency mode, all
    cores on it. Graphs of a fixed image size are compiled for each batch shape they meet (a few:
    predict's batch and its remainder), since OpenVINO runs a static shape about 1.5 times faster
    than a dynamic one here; `native` graphs, whose image size varies, run dynamic."""

    PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
    MAX_SHAPES = 8  # compiled batch shapes kept; the least recently used goes first

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "fp32"):
        try:
            import openvino
        except ImportError:
            raise VqcError("the OpenVINO engine needs openvino (pip install openvino)") from None
        if precision not in self.PRECISIONS:
            raise VqcError(f"the OpenVINO engine runs fp32 or bf16, not {precision}")
        self.core = openvino.Core()
        if precision == "bf16" and "BF16" not in self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise VqcError("this CPU has no bfloat16 units: use precision fp32")
        self.config = {"INFERENCE_PRECISION_HINT": self.PRECISIONS[precision]}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.model = self.core.read_model(str(path))
            dynamic = self.core.compile_model(self.model, "CPU", {**self.config, "PERFORMANCE_HINT": "THROUGHPUT"})
        except Exception as exc:
            raise VqcError(f"cannot load ONNX model {path} in OpenVINO: {str(exc).splitlines()[0]}") from None
        self.streams = max(1, int(dynamic.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.inputs = [i.get_any_name() for i in self.model.inputs]
        self.fixed_size = all(d.is_static for d in list(self.model.inputs[0].get_partial_shape())[1:])
        self.dynamic = [dynamic.create_infer_request() for _ in range(self.streams)]
        self.compiled: OrderedDict[tuple[str, int], list] = OrderedDict()

    def _requests(self, hint: str, batch: int) -> list:
        """Infer requests compiled for `batch` images each, one per stream (latency mode: one)."""
        key = (hint, batch)
        if key not in self.compiled:
            model = self.model.clone()
            model.reshape({i.get_any_name(): [batch, *list(i.get_partial_shape())[1:]] for i in model.inputs})
            compiled = self.core.compile_model(model, "CPU", {**self.config, "PERFORMANCE_HINT": hint})
            self.compiled[key] = [compiled.create_infer_request() for _ in range(1 if hint == "LATENCY" else self.streams)]
            if len(self.compiled) > self.MAX_SHAPES:
                self.compiled.popitem(last=False)
        self.compiled.move_to_end(key)
        return self.compiled[key]

    def run(self, images: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        n, feed = len(images), self.feed(images, valid)
        if not self.fixed_size:
            requests = self.dynamic[:n]
            parts = np.array_split(np.arange(n), len(requests))
        else:
            requests = self._requests("LATENCY", 1) if n == 1 else self._requests("THROUGHPUT", -(-n // self.streams))
            per = -(-n // len(requests))
            if per * len(requests) > n:  # pad with copies of the last image: every request has its compiled shape
                feed = {k: np.concatenate([v, np.repeat(v[-1:], per * len(requests) - n, axis=0)]) for k, v in feed.items()}
            parts = [np.arange(i * per, (i + 1) * per) for i in range(len(requests))]
        for request, part in zip(requests, parts):
            request.start_async({name: array[part[0]:part[-1] + 1] for name, array in feed.items()})
        for request in requests:
            request.wait()
        maps = np.concatenate([r.get_tensor("maps").data for r in requests])[:n]
        return maps, np.concatenate([r.get_tensor("scores").data for r in requests])[:n]
