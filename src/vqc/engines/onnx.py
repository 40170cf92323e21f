"""ONNX Runtime: the default engine of the exported Detector on a CPU, and the export's parity check."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import VqcError, first_line
from .feed import graph_feed


class OnnxEngine:
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
            raise VqcError(f"cannot load ONNX model {path}: {first_line(exc)}") from None
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, images: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(["maps", "scores"], graph_feed(self.inputs, images, valid))
        return maps, scores
