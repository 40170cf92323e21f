"""The line bundle: everything a line PC needs to score, in one folder, and the torch-free model that runs it.

A bundle is a folder written by `vqc export MODEL --out DIR` (vqc.training.export.export_bundle):

- ``model.onnx``: the whole Detector (normalisation, backbone, head, upsampling, smoothing,
  image score), parity-checked against PyTorch when it was written;
- ``bundle.json``: the format and its version, the geometry, the image score's top-k, the
  threshold and its policy, the normal score range and the good images' scores (drift), the
  model's name, version and hash, the graph's hash, the fit's info and the export's parity.

`LineBundle` opens a bundle with ONNX Runtime or OpenVINO; vqc.loading.open_model opens either a
bundle or a training model file. This module imports no torch.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .data import default_max_pixels
from .engines import EngineSettings, open_graph_engine
from .errors import VqcError
from .geometry import Geometry
from .scoring import Scorer
from .threshold import Threshold

BUNDLE_FORMAT = "vqc-bundle"
BUNDLE_VERSION = 1
MANIFEST = "bundle.json"
GRAPH = "model.onnx"


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict:
    """bundle.json, checked: the format, its version and the graph's hash, each refused in one line."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VqcError(f"bundle {folder}: {MANIFEST} cannot be read ({type(exc).__name__}): it is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise VqcError(f"bundle {folder}: {MANIFEST} is not a vqc line bundle (no format '{BUNDLE_FORMAT}')")
    if manifest.get("format_version") != BUNDLE_VERSION:
        raise VqcError(f"bundle {folder} has format version {manifest.get('format_version')}; this vqc reads "
                       f"version {BUNDLE_VERSION}: export it again with this vqc")
    graph = folder / GRAPH
    if not graph.is_file():
        raise VqcError(f"bundle {folder} has no {GRAPH}")
    if file_sha256(graph) != manifest.get("graph_sha256"):
        raise VqcError(f"bundle {folder}: {GRAPH} is not the graph this bundle was written with (its hash differs)")
    return manifest


class LineBundle(Scorer):
    """A fitted model from its bundle: scores images with an exported-graph engine, no torch."""

    def __init__(self, folder: str | Path, settings: EngineSettings | None = None, batch_size: int = 16):
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        settings = settings or EngineSettings()
        kind = settings.graph_engine()
        if kind is None:
            raise VqcError(f"a line bundle runs on the onnx or openvino engine, not torch "
                           f"(engine {settings.name}, precision {settings.precision}"
                           f"{', compile' if settings.compile else ''})")
        self.manifest = manifest
        g = manifest["geometry"]
        self.geometry = Geometry(g["mode"], g["size"], g["stride"], g["scale"])
        self.top_k = manifest["top_k"]
        self.info = manifest["info"]
        self.threshold = Threshold.of(manifest["threshold"])
        self.batch_size = batch_size
        self.max_pixels = default_max_pixels(g["size"])
        self.engine, self.engine_name = open_graph_engine(self.folder / GRAPH, settings, kind)

    def run_batch(self, images: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return self.engine.run(images, valid)

    def describe(self) -> dict:
        config = self.manifest["config"]
        return {"backbone": config["backbone"], "layers": list(config["layers"]), "head": config["head"],
                "image_size": config["image_size"], "weights_source": self.info.get("weights_source"),
                "n_train": self.info.get("n_train"), "bundle": self.manifest["model"]}
