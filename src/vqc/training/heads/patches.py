"""Patch features shared by the heads that model individual positions (knn, gmm)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_features(levels: list[torch.Tensor], pool: int = 3) -> torch.Tensor:
    """Average each level over a pool x pool neighbourhood, resize to the finest level, concatenate.

    Neighbourhood averaging (PatchCore's local aggregation) makes each position describe a
    small patch rather than one receptive-field centre; the finest grid keeps small defects.
    """
    size = levels[0].shape[-2:]
    out = []
    for level in levels:
        if pool > 1:
            level = F.avg_pool2d(level, pool, stride=1, padding=pool // 2, count_include_pad=False)
        if level.shape[-2:] != size:
            level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
        out.append(level)
    return torch.cat(out, dim=1)


def flatten_positions(features: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B*h*w, C]."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
