"""Anomaly heads: one module per head, one registry line each.

A head is a torch module with
- ``__init__(channels: list[int], **options)``: options are plain JSON values (saved with the model);
- ``fit(batches, progress)``: learn from an iterable of feature-level lists of good images;
- ``forward(levels) -> [B, 1, h, w]`` anomaly map (higher = more anomalous);
- ``options() -> dict``: the options to rebuild it; learned tensors live in ``state_dict()``.
"""
from __future__ import annotations

from ..errors import VqcError
from .knn import KnnHead

HEADS = {"knn": KnnHead}


def create_head(name: str, channels: list[int], options: dict):
    try:
        cls = HEADS[name]
    except KeyError:
        raise VqcError(f"unknown head {name!r}; choose one of: {', '.join(HEADS)}") from None
    try:
        return cls(channels, **options)
    except TypeError as exc:
        raise VqcError(f"head {name}: bad option ({exc})") from None
