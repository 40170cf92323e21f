"""The Detector: one torch module from a uint8 image batch to anomaly maps and image scores.

Every engine (predict, evaluate, serve, export) runs this same module, so an exported model
cannot drift from the PyTorch one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import FeatureTrunk


class GaussianBlur(nn.Module):
    """Separable Gaussian smoothing (truncated at 4 sigma, reflect padding), as in PatchCore."""

    def __init__(self, sigma: float):
        super().__init__()
        radius = max(1, int(math.ceil(4 * sigma))) if sigma > 0 else 0
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2) if sigma > 0 else torch.ones(1)
        self.register_buffer("kernel", kernel / kernel.sum(), persistent=False)
        self.radius = radius

    def _kernel(self, height: int, width: int) -> tuple[int, torch.Tensor]:
        r = min(self.radius, width - 1, height - 1)  # reflect needs pad < size
        k = self.kernel[self.radius - r: self.radius + r + 1]
        return r, k / k.sum()  # a map smaller than the kernel: truncate further, keep the weights summing to 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 1, H, W]
        if self.radius == 0:
            return x
        r, k = self._kernel(x.shape[-2], x.shape[-1])
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))

    def upsample(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """forward(bilinear upsampling of x to size), computed as rows @ x @ columns.

        Bilinear resizing and this blur are both linear and separable, so together they are one
        small matrix per axis. Two matmuls on the patch map replace a full-size resize and two
        convolutions over every output pixel: several times less work, the same numbers."""
        (h, w), (height, width) = x.shape[-2:], size
        r, k = self._kernel(height, width)
        rows = F.interpolate(torch.eye(h, dtype=x.dtype, device=x.device).view(1, 1, h, h), size=(height, h),
                             mode="bilinear", align_corners=False)  # [1, 1, height, h]: the resize of each row
        columns = F.interpolate(torch.eye(w, dtype=x.dtype, device=x.device).view(1, 1, w, w), size=(w, width),
                                mode="bilinear", align_corners=False)  # [1, 1, w, width]
        if self.radius:
            rows = F.conv2d(F.pad(rows, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
            columns = F.conv2d(F.pad(columns, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        return rows[0, 0] @ x @ columns[0, 0]


class Detector(nn.Module):
    """uint8 images [B, 3, H, W] -> (anomaly maps [B, 1, H, W], image scores [B]).

    normalise -> frozen trunk -> feature levels -> head -> upsample -> smooth -> score.
    """

    def __init__(self, trunk: FeatureTrunk, head: nn.Module, mean, std, sigma: float = 4.0, top_k: int = 0,
                 border: str = "zero"):
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False)
        self.blur = GaussianBlur(sigma)
        self.top_k = top_k  # 0: image score = max of the map; k: mean of the k highest positions
        # "reflect": the input is mirrored outwards by the coarsest stride before the trunk and
        # the features cropped back, so border patches see image, not the convolutions' zero
        # padding (which makes every border position look unlike the rest, and hot on new parts).
        self.border_pad = max(trunk.strides) if border == "reflect" else 0

    def features(self, images: torch.Tensor, trunk_dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """trunk_dtype bf16/fp16: the backbone under autocast (the torch engine's precision, given
        per call so that one Detector serves engines of any precision); None: fp32."""
        x = (images.float() - self.mean) / self.std
        pad = self.border_pad
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        if trunk_dtype is None:
            levels = self.trunk(x)
        else:  # only the backbone runs in reduced precision; heads (distances, flows, likelihoods) stay fp32
            with torch.autocast(x.device.type, dtype=trunk_dtype):
                levels = [level.float() for level in self.trunk(x)]
        if pad:
            levels = [level[..., pad // s: level.shape[-2] - pad // s, pad // s: level.shape[-1] - pad // s]
                      for level, s in zip(levels, self.trunk.strides)]
        return levels

    def forward(self, images: torch.Tensor, valid: torch.Tensor | None = None,
                trunk_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`valid` [B, 1, H, W] (1 = image, 0 = letterbox padding): the padding is left out of the
        smoothing (a normalised convolution) and of the score, and reads 0 in the map. trunk_dtype:
        as in features()."""
        patch_map = self.head(self.features(images, trunk_dtype))
        if valid is None:
            maps = self.blur.upsample(patch_map, images.shape[-2:])
            flat = maps.flatten(1)
        else:
            maps = F.interpolate(patch_map, size=images.shape[-2:], mode="bilinear", align_corners=False)
            maps = self.blur(maps * valid) / self.blur(valid).clamp_min(1e-6)
            maps = torch.where(valid > 0, maps, torch.zeros_like(maps))
            flat = torch.where(valid > 0, maps, torch.full_like(maps, -torch.inf)).flatten(1)
        scores = flat.topk(self.top_k, dim=1).values.mean(1) if self.top_k else flat.amax(1)
        return maps, scores
