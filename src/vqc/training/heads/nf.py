"""nf: a FastFlow-style 2D normalizing flow per feature level, built from FrEIA's AllInOneBlock.

Each level is standardised per channel (statistics of the training features), then passed
through `steps` affine coupling blocks whose subnets alternate 3x3 and 1x1 convolutions with
`hidden_ratio` x the coupling's input channels. Trained by maximum likelihood under a standard
normal. Per level and position, nll = 0.5 * mean over channels of z^2 is the Gaussian negative
log-likelihood per dimension, up to constants. (AllInOneBlock reports its log-Jacobian only
summed over the whole map, so it enters the training loss but not the per-position map, as in
FastFlow.) Levels are resized to the finest grid and averaged, either as likelihoods
(map = 1 - mean exp(-nll), FastFlow's combination and the default: bounded per level, so one
level's extreme values cannot drown the others) or as nll ("nll").
"""
from __future__ import annotations

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .training import rebatch, train_early_stopping


def _subnet(kernel: int, ratio: float):
    def build(channels_in: int, channels_out: int) -> nn.Module:
        hidden = max(1, int(channels_in * ratio))
        return nn.Sequential(nn.Conv2d(channels_in, hidden, kernel, padding=kernel // 2), nn.ReLU(),
                             nn.Conv2d(hidden, channels_out, kernel, padding=kernel // 2))
    return build


def build_flow(channels: int, steps: int, hidden_ratio: float, clamp: float) -> Ff.SequenceINN:
    # the spatial size is not needed by the blocks (convolutions), only the channel count
    flow = Ff.SequenceINN(channels, 1, 1)
    for step in range(steps):
        flow.append(Fm.AllInOneBlock, subnet_constructor=_subnet(3 if step % 2 == 0 else 1, hidden_ratio),
                    affine_clamping=clamp, permute_soft=False)
    return flow


def flow_forward(flow: Ff.SequenceINN, x: torch.Tensor, with_log_jac: bool = False):
    """(z, per-image log-Jacobian determinant or 0) as FrEIA's AllInOneBlocks compute them, with
    each block's channel permutation done as a gather: FrEIA applies it as a 1x1 convolution with
    a permutation matrix, about half of the flow's arithmetic, in training and at inference. Tested
    equal to FrEIA's forward. Valid for the blocks build_flow makes (hard permutation, no GIN, no
    Householder, no conditions)."""
    log_jac = 0.0
    for block in flow:
        x1, x2 = torch.split(x, block.splits, dim=1)
        a = block.subnet(x1) * 0.1
        half = x2.shape[1]
        log_scale = block.clamp * torch.tanh(a[:, :half])
        x2 = x2 * torch.exp(log_scale) + a[:, half:]
        scale = block.global_scale_activation(block.global_scale)
        order = block.w_perm.flatten(1).argmax(1)  # w_perm[i, order[i]] = 1: output i is input order[i]
        x = torch.index_select(torch.cat([x1, x2], dim=1) * scale + block.global_offset, 1, order)
        if with_log_jac:
            log_jac = log_jac + log_scale.flatten(1).sum(1) + x[0, :1].numel() * torch.log(scale).sum()
    return x, log_jac


def latents(flow: Ff.SequenceINN, x: torch.Tensor) -> torch.Tensor:
    """The flow's output z (inference: no log-Jacobian)."""
    return flow_forward(flow, x)[0]


class Standardise(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class FlowHead(nn.Module):
    def __init__(self, channels: list[int], steps: int = 20, hidden_ratio: float = 0.16, clamp: float = 2.0,
                 lr: float = 1e-3, weight_decay: float = 1e-5, max_epochs: int = 60, patience: int = 30,
                 batch_size: int = 32, seed: int = 0, level_map: str = "likelihood"):
        super().__init__()
        if level_map not in ("likelihood", "nll"):
            raise ValueError(f"level_map must be 'likelihood' or 'nll', not {level_map!r}")
        self.level_map = level_map
        self.steps, self.hidden_ratio, self.clamp, self.batch_size = steps, hidden_ratio, clamp, batch_size
        self.lr, self.weight_decay, self.max_epochs, self.patience, self.seed = lr, weight_decay, max_epochs, patience, seed
        state = np.random.get_state()  # AllInOneBlock draws its channel permutation from numpy
        np.random.seed(seed)
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            self.flows = nn.ModuleList(build_flow(c, steps, hidden_ratio, clamp) for c in channels)
        finally:
            np.random.set_state(state)
            torch.random.set_rng_state(torch_state)
        self.norms = nn.ModuleList(Standardise(c) for c in channels)

    def options(self) -> dict:
        return {"steps": self.steps, "hidden_ratio": self.hidden_ratio, "clamp": self.clamp, "lr": self.lr,
                "weight_decay": self.weight_decay, "max_epochs": self.max_epochs, "patience": self.patience,
                "batch_size": self.batch_size, "seed": self.seed, "level_map": self.level_map}

    def nll(self, levels) -> torch.Tensor:
        """Mean negative log-likelihood per feature dimension (constants dropped)."""
        total = 0.0
        for flow, norm, level in zip(self.flows, self.norms, levels):
            z, log_jac = flow_forward(flow, norm(level), with_log_jac=True)
            total = total + (0.5 * z.pow(2).flatten(1).sum(1) - log_jac).mean() / z[0].numel()
        return total

    def fit(self, batches, val_batches=(), progress: bool = True) -> dict:
        train = rebatch(batches, self.batch_size)
        for i, norm in enumerate(self.norms):  # per-channel statistics over all training positions
            stacked = torch.cat([levels[i].transpose(0, 1).flatten(1) for levels in train], dim=1)
            norm.mean.copy_(stacked.mean(1).view_as(norm.mean))
            norm.std.copy_(stacked.std(1).clamp_min(1e-6).view_as(norm.std))
        self.to(train[0][0].device)
        return train_early_stopping(self, self.nll, train, rebatch(val_batches, self.batch_size), lr=self.lr,
                                    weight_decay=self.weight_decay, max_epochs=self.max_epochs,
                                    patience=self.patience, seed=self.seed, progress=progress, desc="nf")

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        size = levels[0].shape[-2:]
        maps = []
        for flow, norm, level in zip(self.flows, self.norms, levels):
            z = latents(flow, norm(level))
            m = 0.5 * z.pow(2).mean(1, keepdim=True)
            if self.level_map == "likelihood":
                m = 1 - torch.exp(-m)
            maps.append(m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False))
        return torch.stack(maps).mean(0)
