"""mdn: the paper's "GMM", a mixture density network over patch features. Not an EM mixture.

A small 1x1-convolution network reads each patch feature and outputs mixture weights over K
components (a Gumbel-softmax while training, a softmax at inference); each component has a
learned mean and diagonal standard deviation. The density of a patch is
sum_k w_k(x) N(x | mu_k, sigma_k), trained by negative log-likelihood with early stopping.
Because the weights depend on the patch itself this is not a normalised density as an EM
mixture is (see the gmm head for that); it is kept to reproduce the paper.

The map is the negative log-likelihood per feature dimension. The paper's image score,
1 - min over positions of the probability p = exp(-NLL per dimension), ranks images exactly as
the maximum NLL does, which is what the Detector returns (so AUROC and AP are the same).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .patches import patch_features
from .training import rebatch, train_early_stopping


class MdnHead(nn.Module):
    def __init__(self, channels: list[int], components: int = 100, hidden: int = 128, temperature: float = 1.0,
                 pool: int = 3, lr: float = 1e-3, weight_decay: float = 1e-5, max_epochs: int = 100,
                 patience: int = 30, batch_size: int = 32, seed: int = 0):
        super().__init__()
        self.batch_size = batch_size
        self.components, self.hidden, self.temperature, self.pool = components, hidden, temperature, pool
        self.lr, self.weight_decay, self.max_epochs, self.patience, self.seed = lr, weight_decay, max_epochs, patience, seed
        d = sum(channels)
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.gate = nn.Sequential(nn.Conv2d(d, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, components, 1))
        self.means = nn.Parameter(torch.randn(components, d) * 0.1)
        self.log_stds = nn.Parameter(torch.zeros(components, d))
        torch.random.set_rng_state(state)
        self.register_buffer("centre", torch.zeros(1, d, 1, 1))
        self.register_buffer("scale", torch.ones(1, d, 1, 1))

    def options(self) -> dict:
        return {"components": self.components, "hidden": self.hidden, "temperature": self.temperature,
                "pool": self.pool, "lr": self.lr, "weight_decay": self.weight_decay, "max_epochs": self.max_epochs,
                "patience": self.patience, "batch_size": self.batch_size, "seed": self.seed}

    def _nll(self, levels) -> torch.Tensor:
        """Negative log-likelihood per feature dimension at every position: [B, 1, h, w]."""
        x = (patch_features(levels, self.pool) - self.centre) / self.scale
        logits = self.gate(x)
        if self.training:  # Gumbel-softmax: a noisy, differentiable choice of component
            log_w = F.gumbel_softmax(logits, tau=self.temperature, dim=1).clamp_min(1e-12).log()
        else:
            log_w = logits.log_softmax(1)
        b, d, h, w = x.shape
        points = x.permute(0, 2, 3, 1).reshape(-1, d)
        inv_var = torch.exp(-2 * self.log_stds)
        # ||(x - mu) / sigma||^2 for every point and component, without an N x K x D tensor
        maha = (points.pow(2) @ inv_var.T - 2 * points @ (self.means * inv_var).T
                + (self.means.pow(2) * inv_var).sum(1))
        log_n = -0.5 * (maha + d * math.log(2 * math.pi)) - self.log_stds.sum(1)
        log_p = torch.logsumexp(log_n + log_w.permute(0, 2, 3, 1).reshape(-1, self.components), dim=1)
        return (-log_p / d).view(b, 1, h, w)

    def fit(self, batches, val_batches=(), progress: bool = True) -> dict:
        train = rebatch(batches, self.batch_size)
        with torch.no_grad():
            feats = torch.cat([patch_features(levels, self.pool).transpose(0, 1).flatten(1) for levels in train], 1)
            self.centre.copy_(feats.mean(1).view_as(self.centre))
            self.scale.copy_(feats.std(1).clamp_min(1e-6).view_as(self.scale))
            pick = torch.randperm(feats.shape[1], generator=torch.Generator().manual_seed(self.seed))[:self.components]
            self.means.copy_(((feats[:, pick].T - self.centre.view(1, -1)) / self.scale.view(1, -1)))
        self.to(train[0][0].device)
        return train_early_stopping(self, lambda levels: self._nll(levels).mean(), train,
                                    rebatch(val_batches, self.batch_size),
                                    lr=self.lr, weight_decay=self.weight_decay, max_epochs=self.max_epochs,
                                    patience=self.patience, seed=self.seed, progress=progress, desc="mdn")

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return self._nll(levels)
