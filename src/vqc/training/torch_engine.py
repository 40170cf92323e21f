"""The torch engine: the PyTorch Detector itself, with the contract of the exported-graph engines
(vqc.engines): ``run(images uint8 [n, 3, H, W], valid | None) -> (maps [n, 1, H, W], scores [n])``
on numpy arrays.

The precision is the engine's, passed to the Detector on every call, never set on it: engines of
one model in different precisions score side by side without changing each other's results.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..engines import EngineSettings
from .detector import Detector

TORCH_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TorchEngine:
    module: torch.nn.Module  # the Detector, or the Detector wrapped in torch.compile
    device: torch.device
    trunk_dtype: torch.dtype | None = None  # bf16/fp16: the backbone under autocast; None: fp32

    def run(self, images: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        batch = torch.from_numpy(images)
        if self.device.type == "cuda":  # pinned host memory: the copy overlaps with work already queued
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        mask = None if valid is None else torch.from_numpy(valid).to(self.device)
        with torch.inference_mode():
            maps, scores = self.module(batch.to(self.device), mask, trunk_dtype=self.trunk_dtype)
        return maps.float().cpu().numpy(), scores.float().cpu().numpy()


def open_torch_engine(detector: Detector, device: torch.device, settings: EngineSettings) -> TorchEngine:
    """The torch engine in the settings' precision, compiled if they ask."""
    if device.type == "cuda":  # the convolutions' fast layout on a GPU: the weights' values stay as they are
        detector.to(memory_format=torch.channels_last)
    module = torch.compile(detector) if settings.compile else detector
    return TorchEngine(module, device, TORCH_DTYPES[settings.precision])
