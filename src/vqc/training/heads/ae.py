"""ae: the paper's "from scratch" baseline, a convolutional auto-encoder.

With backbone "none" it sees raw (normalised) images and no pre-trained weights at all; the
anomaly map is the per-pixel squared reconstruction error, averaged over channels. Trained by
mean squared error with early stopping. Given a backbone, it reconstructs that feature map.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .training import rebatch, train_early_stopping


def _down(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))


def _up(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                         nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))


class AutoencoderHead(nn.Module):
    def __init__(self, channels: list[int], widths: tuple = (16, 32, 64, 128), lr: float = 1e-3,
                 weight_decay: float = 1e-5, max_epochs: int = 100, patience: int = 30, batch_size: int = 32,
                 seed: int = 0):
        super().__init__()
        self.batch_size = batch_size
        self.widths, self.lr, self.weight_decay = tuple(widths), lr, weight_decay
        self.max_epochs, self.patience, self.seed = max_epochs, patience, seed
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        c = channels[0]
        sizes = [c, *self.widths]
        self.encoder = nn.Sequential(*[_down(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        self.decoder = nn.Sequential(*[_up(a, b) for a, b in zip(sizes[:0:-1], sizes[-2:0:-1])],
                                     nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                     nn.Conv2d(sizes[1], c, 3, padding=1))
        torch.random.set_rng_state(state)

    def options(self) -> dict:
        return {"widths": list(self.widths), "lr": self.lr, "weight_decay": self.weight_decay,
                "max_epochs": self.max_epochs, "patience": self.patience, "batch_size": self.batch_size, "seed": self.seed}

    def _error(self, levels) -> torch.Tensor:
        x = levels[0]
        y = self.decoder(self.encoder(x))
        if y.shape[-2:] != x.shape[-2:]:  # sizes that are not multiples of 2^depth
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return (y - x).pow(2).mean(1, keepdim=True)

    def fit(self, batches, val_batches=(), progress: bool = True) -> dict:
        train = rebatch(([levels[0]] for levels in batches), self.batch_size)
        self.to(train[0][0].device)
        return train_early_stopping(self, lambda levels: self._error(levels).mean(), train,
                                    rebatch(([v[0]] for v in val_batches), self.batch_size), lr=self.lr, weight_decay=self.weight_decay,
                                    max_epochs=self.max_epochs, patience=self.patience, seed=self.seed,
                                    progress=progress, desc="ae")

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return self._error(levels)
