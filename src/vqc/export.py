"""ONNX export of the whole Detector, with parity checked before the file is kept, and its engine.

The graph takes uint8 images [batch, 3, S, S] and returns (maps [batch, 1, S, S], scores [batch]):
normalisation, backbone, head, upsampling, smoothing and the image score are all inside, so the
exported model cannot drift from the PyTorch one. Decoding and resizing stay outside (the same
functions for every engine). A JSON side file holds what a runtime needs besides the graph.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .errors import VqcError
from .files import atomic_path, write_text_atomic

SIDECAR_FORMAT = "vqc-onnx"
SIDECAR_VERSION = 1
SCORE_RTOL = 1e-4  # image scores: relative difference allowed between ONNX Runtime and PyTorch
MAP_TOL = 1e-3  # maps: difference allowed, relative to the largest map value (a scale-free bound)


def parity(reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray]) -> dict:
    """Largest relative score difference and largest map difference relative to the map scale."""
    (ref_maps, ref_scores), (maps, scores) = reference, candidate
    score_rel = float(np.max(np.abs(scores - ref_scores) / np.maximum(np.abs(ref_scores), 1e-12)))
    map_rel = float(np.max(np.abs(maps - ref_maps)) / max(float(np.max(np.abs(ref_maps))), 1e-12))
    return {"score_max_rel_diff": score_rel, "map_max_diff_rel_to_scale": map_rel,
            "ok": score_rel <= SCORE_RTOL and map_rel <= MAP_TOL}


def export_onnx(model, path: str | Path, check_batches: list[np.ndarray] | None = None) -> dict:
    """Export `model` (a fitted AnomalyModel) to `path` plus `path`.json; raise if parity fails.

    check_batches: uint8 [B, 3, S, S] arrays scored by both engines; seeded noise is added."""
    model._require_fitted()
    path = Path(path)
    size = model.config.image_size
    detector = model.detector.to("cpu").eval()
    noise = np.random.default_rng(0).integers(0, 256, (3, 3, size, size), dtype=np.uint8)
    batches = [*(check_batches or []), noise]
    example = torch.from_numpy(noise[:2].copy())  # batch 2: the exporter needs a non-trivial batch size
    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / "model.onnx"
        try:
            with torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(detector, (example,), str(graph), input_names=["images"],
                                  output_names=["maps", "scores"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                  opset_version=18, dynamo=True, external_data=False, verbose=False)
        except Exception as exc:  # the exporter raises many types; the user needs the head and the reason
            raise VqcError(f"ONNX export of {model.config.backbone} + {model.config.head} failed: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        engine = OnnxEngine(graph)
        checks = []
        for batch in batches:
            with torch.no_grad():
                ref_maps, ref_scores = detector(torch.from_numpy(batch))
            checks.append(parity((ref_maps.numpy(), ref_scores.numpy()), engine.run(batch)))
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
                         "height": size, "width": size, "resize": "squash, Pillow bilinear"},
               "outputs": {"maps": "float32 [batch, 1, H, W]", "scores": "float32 [batch]"},
               "normalisation": "inside the graph", "config": _jsonable(model.config),
               "threshold": model.threshold, "info": model.info, "parity": {**worst, "images": int(sum(len(b) for b in batches))}}
    write_text_atomic(path.with_suffix(path.suffix + ".json"), json.dumps(sidecar, indent=1))
    return sidecar


def _jsonable(config) -> dict:
    from dataclasses import asdict
    return json.loads(json.dumps(asdict(config)))


class OnnxEngine:
    """Runs an exported Detector with ONNX Runtime (CUDA when available, else CPU)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise VqcError(f"cannot load ONNX model {path}: {str(exc).splitlines()[0]}") from None

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(["maps", "scores"], {"images": np.ascontiguousarray(images, dtype=np.uint8)})
        return maps, scores

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores = self.run(images.cpu().numpy())
        return torch.from_numpy(maps), torch.from_numpy(scores)
