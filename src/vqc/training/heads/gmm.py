"""gmm: a Gaussian mixture over patch features, fitted by EM in PyTorch (float64, CPU or GPU).

The number of components is given, or chosen by BIC over a grid. EM follows scikit-learn's
GaussianMixture step for step (E-step, M-step, covariance regularisation on the diagonal,
precision Cholesky factors), so the two agree from the same initialisation; a test checks it.
Fitting uses at most `max_samples` patches (a seeded random subset) to bound time and memory.
The anomaly map is each patch's negative log-likelihood under the mixture.
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from ...errors import VqcError
from ...progress import progress_bar
from .patches import flatten_positions, patch_features

LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------- EM, as plain functions

def precision_cholesky(covariances: torch.Tensor, covariance: str) -> torch.Tensor:
    """Upper-triangular factors P with P P^T = covariance^-1 (scikit-learn's convention)."""
    if covariance == "diag":
        return covariances.rsqrt()
    try:
        chol = torch.linalg.cholesky(covariances)
    except RuntimeError:
        raise VqcError("gmm: a covariance is singular; raise the head option reg (e.g. --option reg=1e-3)") from None
    eye = torch.eye(covariances.shape[-1], dtype=covariances.dtype, device=covariances.device)
    return torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False).transpose(-1, -2)


def log_gaussian(x: torch.Tensor, means: torch.Tensor, prec_chol: torch.Tensor, covariance: str) -> torch.Tensor:
    """log N(x | mean_k, cov_k) for every sample and component: [N, K]."""
    d = x.shape[1]
    if covariance == "diag":
        log_det = prec_chol.log().sum(1)
        maha = ((x[:, None, :] - means[None]) * prec_chol[None]).pow(2).sum(2)
    else:
        log_det = torch.diagonal(prec_chol, dim1=-2, dim2=-1).log().sum(1)
        # one component at a time: memory stays N x D, not N x K x D
        maha = torch.stack([(x @ p - m @ p).pow(2).sum(1) for m, p in zip(means, prec_chol)], dim=1)
    return -0.5 * (d * LOG_2PI + maha) + log_det


def e_step(x, weights, means, prec_chol, covariance):
    weighted = log_gaussian(x, means, prec_chol, covariance) + weights.log()
    log_norm = torch.logsumexp(weighted, dim=1)
    return log_norm.mean(), weighted - log_norm[:, None]


def m_step(x, log_resp, covariance: str, reg: float):
    resp = log_resp.exp()
    nk = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps
    means = resp.T @ x / nk[:, None]
    if covariance == "diag":
        covariances = (resp.T @ (x * x)) / nk[:, None] - means ** 2 + reg
    else:
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        covariances = torch.stack([((resp[:, k:k + 1] * (x - means[k])).T @ (x - means[k])) / nk[k] + reg * eye
                                   for k in range(len(nk))])
    return nk / len(x), means, precision_cholesky(covariances, covariance)


def em(x, weights, means, prec_chol, covariance: str, reg: float, max_iter: int, tol: float):
    """EM from the given parameters; returns the fitted parameters, the mean log-likelihood and
    the number of iterations (scikit-learn's loop: stop when the change is below tol)."""
    lower_bound = -math.inf
    for iteration in range(1, max_iter + 1):
        log_norm, log_resp = e_step(x, weights, means, prec_chol, covariance)
        weights, means, prec_chol = m_step(x, log_resp, covariance, reg)
        change = log_norm.item() - lower_bound
        lower_bound = log_norm.item()
        if abs(change) < tol:
            break
    return (weights, means, prec_chol), mean_log_likelihood(x, weights, means, prec_chol, covariance), iteration


def mean_log_likelihood(x, weights, means, prec_chol, covariance) -> float:
    return torch.logsumexp(log_gaussian(x, means, prec_chol, covariance) + weights.log(), dim=1).mean().item()


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: spread-out data points as the initial means."""
    centres = [x[torch.randint(len(x), (1,), generator=generator).item()]]
    nearest = (x - centres[0]).pow(2).sum(1)
    for _ in range(1, k):
        pick = torch.multinomial(nearest / nearest.sum(), 1, generator=generator).item()
        centres.append(x[pick])
        nearest = torch.minimum(nearest, (x - x[pick]).pow(2).sum(1))
    return torch.stack(centres)


def initial_parameters(x, k: int, covariance: str, reg: float, generator):
    """k-means++ means, hard assignment to the nearest, then one M-step."""
    means = kmeans_plus_plus(x, k, generator)
    nearest = torch.cdist(x, means).argmin(1)
    resp = torch.nn.functional.one_hot(nearest, k).to(x.dtype)
    return m_step(x, (resp + 1e-12).log(), covariance, reg)


def n_parameters(k: int, d: int, covariance: str) -> int:
    cov = k * d if covariance == "diag" else k * d * (d + 1) // 2
    return cov + k * d + k - 1


# ---------------------------------------------------------------- the head

class GmmHead(nn.Module):
    def __init__(self, channels: list[int], components: int | None = None, grid: tuple = (1, 2, 4, 8, 16),
                 covariance: str = "full", reg: float = 1e-3, max_iter: int = 100, tol: float = 1e-3,
                 max_samples: int = 20_000, pool: int = 3, seed: int = 0):
        super().__init__()
        if covariance not in ("full", "diag"):
            raise VqcError(f"gmm: covariance must be full or diag, not {covariance!r}")
        self.components, self.grid, self.covariance, self.reg = components, tuple(grid), covariance, reg
        self.max_iter, self.tol, self.max_samples, self.pool, self.seed = max_iter, tol, max_samples, pool, seed
        d = sum(channels)
        self.register_buffer("weights", torch.ones(1))
        self.register_buffer("means", torch.zeros(1, d))
        self.register_buffer("prec_chol", torch.ones(1, d) if covariance == "diag" else torch.eye(d)[None])

    def options(self) -> dict:
        return {"components": self.components, "grid": list(self.grid), "covariance": self.covariance,
                "reg": self.reg, "max_iter": self.max_iter, "tol": self.tol, "max_samples": self.max_samples,
                "pool": self.pool, "seed": self.seed}

    @torch.no_grad()
    def fit(self, batches, val_batches=(), progress: bool = True) -> dict:
        x = torch.cat([flatten_positions(patch_features(levels, self.pool)) for levels in batches])
        generator = torch.Generator().manual_seed(self.seed)
        if len(x) > self.max_samples:
            x = x[torch.randperm(len(x), generator=generator)[:self.max_samples].to(x.device)]
        x = x.double()
        candidates = [self.components] if self.components else [k for k in self.grid if k <= len(x)]
        fits, bic, seconds = {}, {}, {}
        for k in progress_bar(candidates, desc="gmm (components)", unit="fit", shown=progress):
            start = time.perf_counter()
            params = initial_parameters(x, k, self.covariance, self.reg, generator)
            params, mean_ll, iterations = em(x, *params, self.covariance, self.reg, self.max_iter, self.tol)
            fits[k] = params
            bic[k] = -2 * mean_ll * len(x) + n_parameters(k, x.shape[1], self.covariance) * math.log(len(x))
            seconds[k] = round(time.perf_counter() - start, 3)
        best = min(bic, key=bic.get)
        weights, means, prec_chol = (p.float() for p in fits[best])
        self.weights, self.means, self.prec_chol = weights, means, prec_chol
        return {"components": best, "bic": {str(k): round(v, 1) for k, v in bic.items()},
                "fit_seconds_per_k": {str(k): s for k, s in seconds.items()}, "samples": len(x)}

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        features = patch_features(levels, self.pool)
        b, _, h, w = features.shape
        log_p = log_gaussian(flatten_positions(features), self.means, self.prec_chol, self.covariance)
        return -torch.logsumexp(log_p + self.weights.log(), dim=1).view(b, 1, h, w)
