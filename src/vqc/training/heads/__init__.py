"""Anomaly heads: one module per head, one registry line each.

A head is a torch module with
- ``__init__(channels: list[int], **options)``: options are plain JSON values (saved with the model);
- ``fit(batches, val_batches, progress) -> dict``: learn from feature-level lists of good images
  (held-out good images in ``val_batches``, for early stopping); returns fit statistics;
- ``forward(levels) -> [B, 1, h, w]`` anomaly map (higher = more anomalous);
- ``options() -> dict``: the options to rebuild it; learned tensors live in ``state_dict()``.
"""
from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

import torch

from ...errors import VqcError
from .ae import AutoencoderHead
from .gmm import GmmHead
from .knn import KnnHead
from .mdn import MdnHead
from .nf import FlowHead



@runtime_checkable
class Head(Protocol):
    """The contract above, as a type a new head is checked against (tests/test_training_heads.py).
    A head may also offer ``without(drop)``, a context in which it scores as if the fit inputs
    marked in ``drop`` had not been fitted: knn does, and fit then scores every good image
    leave-one-out (vqc.training.model)."""

    def fit(self, batches: Iterable[list[torch.Tensor]], val_batches: list, progress: bool = True) -> dict: ...

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor: ...

    def options(self) -> dict: ...

    def state_dict(self) -> dict: ...


HEADS = {"knn": KnnHead, "nf": FlowHead, "gmm": GmmHead, "mdn": MdnHead, "ae": AutoencoderHead}


def create_head(name: str, channels: list[int], options: dict):
    try:
        cls = HEADS[name]
    except KeyError:
        raise VqcError(f"unknown head {name!r}; choose one of: {', '.join(HEADS)}") from None
    try:
        return cls(channels, **options)
    except TypeError as exc:
        raise VqcError(f"head {name}: bad option ({exc})") from None
