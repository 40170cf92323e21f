"""Engines: what runs the Detector. One setting, one selection, one module per engine.

- ``torch``: the PyTorch Detector itself (the training install only; vqc.training.model);
- ``onnx``: ONNX Runtime on the exported, parity-checked graph (engines/onnx.py);
- ``openvino``: OpenVINO on that same graph, fp32 or bf16 (engines/openvino.py);
- ``auto``: on a CPU, ONNX Runtime for fp32 and OpenVINO for bf16 (the fastest of each on the
  CPUs measured, see docs/results/speed.md); PyTorch on a GPU, for fp16 or for compile.

An exported-graph engine has ``inputs`` (the graph's input names) and
``run(images uint8 [n, 3, H, W], valid float32 [n, 1, H, W] | None) -> (maps [n, 1, H, W], scores [n])``
on numpy arrays. This package imports no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..choices import ENGINES, PRECISIONS
from ..errors import VqcError


@dataclass(frozen=True)
class EngineSettings:
    """Which engine scores, on how many threads, in which precision; checked when made."""

    name: str = "auto"
    threads: int | None = None  # CPU threads for the model; None: one per core
    precision: str = "fp32"
    compile: bool = False  # torch only: the Detector wrapped in torch.compile

    def __post_init__(self):
        if self.name not in ENGINES:
            raise VqcError(f"unknown engine {self.name!r}; use {', '.join(ENGINES)}")
        if self.precision not in PRECISIONS:
            raise VqcError(f"unknown precision {self.precision!r}; use {', '.join(PRECISIONS)}")
        if self.name == "onnx" and (self.precision != "fp32" or self.compile):
            raise VqcError("the onnx engine runs the fp32 graph: precision and compile apply to the torch and "
                           "openvino engines")
        if self.name == "openvino" and (self.precision == "fp16" or self.compile):
            raise VqcError("the openvino engine runs fp32 or bf16; fp16 and compile apply to the torch engine")
        if self.threads is not None and self.threads < 1:
            raise VqcError(f"threads must be at least 1 (got {self.threads})")

    def graph_engine(self, on_gpu: bool = False) -> str | None:
        """The exported-graph engine these settings pick ("onnx" or "openvino"), or None for torch."""
        if self.name in ("onnx", "openvino"):
            return self.name
        if self.name == "torch" or on_gpu or self.precision == "fp16" or self.compile:
            return None
        return "openvino" if self.precision == "bf16" else "onnx"


def open_graph_engine(graph: str | Path, settings: EngineSettings, kind: str):
    """(engine, its name for records and answers) for an exported graph; kind from graph_engine()."""
    if kind == "openvino":
        from .openvino import OpenVinoEngine
        name = "openvino" if settings.precision == "fp32" else f"openvino-{settings.precision}"
        return OpenVinoEngine(graph, settings.threads, settings.precision), name
    from .onnx import OnnxEngine
    return OnnxEngine(graph, settings.threads), "onnx"
