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
from pathlib import Path

import numpy as np
import torch

from ..version import __version__
from ..errors import VqcError, first_line
from ..engines.onnx import OnnxEngine
from ..files import atomic_path
from ..threshold import stored

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
    for plans in model.planned_chunks(images):
        for _, batch, valid in model.input_batches(plans):
            batches.append((np.ascontiguousarray(batch), valid))
    return batches


def export_onnx(model, path: str | Path, check_images: list | None = None) -> dict:
    """Export `model` (a fitted AnomalyModel) to `path`; raise if parity fails. Returns the graph's
    input, the model's config and the parity measured (what the line bundle's manifest records).

    check_images: images scored by both engines; seeded noise is added."""
    model.require_ready()
    path = Path(path)
    size, mode = model.config.image_size or 224, model.geometry.mode  # native at its own scale: check at 224
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
        graph = Path(tmp) / "detector.onnx"
        try:
            with torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(detector, tuple(example), str(graph), input_names=names,
                                  output_names=["maps", "scores"], dynamic_shapes=tuple(dynamic),
                                  opset_version=18, dynamo=True, external_data=False, verbose=False)
        except Exception as exc:  # the exporter raises many types; the user needs the head and the reason
            raise VqcError(f"ONNX export of {model.config.backbone} + {model.config.head} failed: "
                           f"{first_line(exc, with_type=True)}") from exc
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
    return {"input": {"name": "images", "dtype": "uint8", "layout": "NCHW", "channels": "RGB",
                      "height": "dynamic" if mode == "native" else size,
                      "width": "dynamic" if mode == "native" else size,
                      "geometry": mode, "resize": "Pillow bilinear",
                      "valid": "float32 [batch, 1, H, W], 1 = image" if valid is not None else None},
            "config": _jsonable(model.config), "parity": {**worst, "images": int(sum(len(b) for b, _ in batches))}}


def export_bundle(model, folder: str | Path, check_images: list | None = None, source: str | Path | None = None) -> dict:
    """The line bundle (vqc.bundle) of a fitted model in `folder`: the parity-checked graph and
    bundle.json. Written beside the folder and moved into place whole, so a failed export leaves
    no half bundle and an existing one stays as it was until the new one is complete."""
    from ..bundle import BUNDLE_FORMAT, BUNDLE_VERSION, GRAPH, MANIFEST, file_sha256
    folder = Path(folder)
    if folder.exists() and not (folder / MANIFEST).is_file() and any(folder.iterdir()):
        raise VqcError(f"--out {folder} is a folder that is not a bundle and not empty: give a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
        staging = Path(tmp) / "bundle"
        staging.mkdir()
        description = export_onnx(model, staging / GRAPH, check_images)
        source = Path(source) if source else None
        g = model.geometry
        manifest = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "vqc_version": __version__,
                    "model": {"name": source.stem if source else folder.name,
                              "sha256": file_sha256(source) if source else None},
                    "graph_sha256": file_sha256(staging / GRAPH), "input": description["input"],
                    "geometry": {"mode": g.mode, "size": g.size, "stride": g.stride, "scale": g.scale},
                    "top_k": model.config.top_k, "threshold": stored(model.threshold), "info": model.info,
                    "config": description["config"], "parity": description["parity"]}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if folder.exists():  # the old bundle goes aside only once the new one is complete
            old = Path(tmp) / "old"
            folder.rename(old)
        staging.rename(folder)
    return manifest


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
