"""knn: distance of each patch to its nearest neighbour in a memory bank of good patches.

PatchCore-style. A coreset (greedy k-center or random) bounds the bank's memory and the search
time; the search runs over the bank in fixed-size blocks so memory does not grow with the bank.

Leave-one-out: ``fit`` remembers which fit input each bank row came from (``bank_inputs``), and
``without(keep)`` scores with only some rows, so every fit image can be scored as if it had not
been fitted, and the threshold set on all good images instead of a held-out few.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ...errors import VqcError
from ...progress import progress_bar
from .patches import flatten_positions, patch_features


class KnnHead(nn.Module):
    def __init__(self, channels: list[int], coreset: float = 0.1, coreset_method: str = "greedy",
                 max_bank: int = 4096, pool: int = 3, seed: int = 0, block: int = 4096, coreset_dim: int = 32):
        super().__init__()
        if coreset_method not in ("greedy", "random", "none"):
            raise VqcError(f"knn: coreset_method must be greedy, random or none, not {coreset_method!r}")
        if not 0 < coreset <= 1:
            raise VqcError(f"knn: coreset must be a fraction in (0, 1], not {coreset}")
        self.coreset, self.coreset_method, self.max_bank = coreset, coreset_method, max_bank
        self.pool, self.seed, self.block = pool, seed, block
        self.coreset_dim = coreset_dim  # the greedy coreset's projection: 32 picks as well as 128, 4x faster
        self.register_buffer("bank", torch.zeros(0, sum(channels)))
        self.bank_inputs: torch.Tensor | None = None  # fit-input index of each bank row; not saved

    def options(self) -> dict:
        return {"coreset": self.coreset, "coreset_method": self.coreset_method, "max_bank": self.max_bank,
                "pool": self.pool, "seed": self.seed, "block": self.block, "coreset_dim": self.coreset_dim}

    @torch.no_grad()
    def fit(self, batches, val_batches=(), progress: bool = True) -> dict:
        parts, inputs, seen = [], [], 0
        for levels in batches:
            features = patch_features(levels, self.pool)
            parts.append(flatten_positions(features).cpu())
            b, _, h, w = features.shape
            inputs.append(torch.arange(seen, seen + b).repeat_interleave(h * w))  # flatten_positions' row order
            seen += b
        patches, inputs = torch.cat(parts), torch.cat(inputs)
        n = len(patches)
        keep = n if self.coreset_method == "none" else min(n, max(1, math.ceil(n * self.coreset)), self.max_bank)
        if keep < n:
            pick = greedy_coreset if self.coreset_method == "greedy" else random_subset
            rows = pick(patches, keep, self.seed, progress, self.coreset_dim)
            patches, inputs = patches[rows], inputs[rows]
        self.bank = patches.contiguous().to(self.bank.device)
        self.bank_inputs = inputs
        return {"patches": n, "bank": keep}

    @torch.no_grad()
    def extend(self, batches) -> tuple[torch.Tensor, int]:
        """Add good patches to the bank without a refit: the same share of them as the fit kept
        (`coreset`), chosen farthest-first from what the bank holds already, so the patches that
        made a good part score high come in first. Returns (the fit-input index of each added
        row, the patches offered)."""
        parts, inputs, seen = [], [], 0
        for levels in batches:
            features = patch_features(levels, self.pool)
            parts.append(flatten_positions(features).cpu())
            b, _, h, w = features.shape
            inputs.append(torch.arange(seen, seen + b).repeat_interleave(h * w))
            seen += b
        patches, inputs = torch.cat(parts), torch.cat(inputs)
        keep = len(patches) if self.coreset_method == "none" else max(1, math.ceil(len(patches) * self.coreset))
        rows = greedy_extension(self.bank.cpu(), patches, min(keep, len(patches)), self.seed, self.coreset_dim)
        self.bank = torch.cat([self.bank, patches[rows].to(self.bank.device)]).contiguous()
        return inputs[rows], len(patches)

    @contextlib.contextmanager
    def without(self, drop: torch.Tensor):
        """Score with the bank rows where `drop` (bool, one per row) is False, inside the block."""
        bank = self.bank
        self.bank = bank[~drop.to(bank.device)]
        try:
            yield
        finally:
            self.bank = bank

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        features = patch_features(levels, self.pool)
        b, _, h, w = features.shape
        queries = flatten_positions(features)
        # |q - x|^2 = |q|^2 + (|x|^2 - 2 q.x): the bracket is one matmul of [q, 1] with [-2x, |x|^2],
        # so the search is a matmul and a min, with no full-size elementwise pass; |q|^2 comes after the min.
        augmented = torch.cat([queries, torch.ones_like(queries[:, :1])], dim=1)
        nearest = None
        for start in range(0, self.bank.shape[0], self.block):  # bounded memory: one block at a time
            bank = self.bank[start:start + self.block]
            keys = torch.cat([-2 * bank, (bank * bank).sum(1, keepdim=True)], dim=1)
            block_min = (augmented @ keys.T).amin(1)
            nearest = block_min if nearest is None else torch.minimum(nearest, block_min)
        nearest = nearest + (queries * queries).sum(1)
        return nearest.clamp_min(0).sqrt().view(b, 1, h, w)


def random_subset(points: torch.Tensor, n: int, seed: int, progress: bool = False, dim: int = 0) -> torch.Tensor:
    return torch.randperm(len(points), generator=torch.Generator().manual_seed(seed))[:n]


def greedy_coreset(points: torch.Tensor, n: int, seed: int, progress: bool = False, dim: int = 32) -> torch.Tensor:
    """Greedy k-center selection: each step takes the point farthest from those chosen so far.

    Distances are taken after a seeded random projection to `dim` dimensions
    (Johnson-Lindenstrauss), as PatchCore does, which keeps each step cheap. Each step is one
    matrix-vector product, bound by memory, not arithmetic: it runs on one thread, as fast as
    on two on an idle machine and 2.7x faster than two on a loaded one (2 cores, 42,000 x 128:
    2.8 against 7.6 ms a step), so fitting on a busy line PC does not stall. 32 dimensions pick
    a bank that scores as well as 128 (bottle and tire, bench/feature_study.py) at a quarter of
    the memory traffic a step.
    """
    with single_thread():
        return _greedy_coreset(points, n, seed, progress, dim)


@contextlib.contextmanager
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _greedy_coreset(points: torch.Tensor, n: int, seed: int, progress: bool, dim: int,
                    nearest: torch.Tensor | None = None) -> torch.Tensor:
    """nearest: each point's squared (projected) distance to points chosen before; None: none were."""
    points, generator = _projected(points, seed, dim)
    norms = (points * points).sum(1)
    chosen = torch.empty(n, dtype=torch.long)
    if nearest is None:
        chosen[0] = torch.randint(len(points), (1,), generator=generator)
        nearest = torch.full((len(points),), float("inf"))
    else:
        chosen[0] = nearest.argmax()
    for i in progress_bar(range(n), desc="coreset", unit="patch", shown=progress, miniters=max(1, n // 100)):
        if i:
            chosen[i] = nearest.argmax()
        c = chosen[i]
        torch.minimum(nearest, norms - 2 * (points @ points[c]) + norms[c], out=nearest)
    return chosen


def _projected(points: torch.Tensor, seed: int, dim: int) -> tuple[torch.Tensor, torch.Generator]:
    """The seeded random projection to `dim` dimensions (and the generator after drawing it)."""
    generator = torch.Generator().manual_seed(seed)
    if points.shape[1] <= dim:
        return points, generator
    projection = torch.randn(points.shape[1], dim, generator=generator) / math.sqrt(dim)
    return points @ projection, generator


def greedy_extension(bank: torch.Tensor, points: torch.Tensor, n: int, seed: int, dim: int = 32,
                     block: int = 4096) -> torch.Tensor:
    """Rows of `points` for a bank that already holds `bank`: greedy k-center continued from the
    bank, so each step takes the point farthest from the bank and from the points taken so far."""
    with single_thread():
        both, _ = _projected(torch.cat([bank, points]), seed, dim)
        old, new = both[:len(bank)], both[len(bank):]
        nearest = torch.full((len(new),), float("inf"))
        new_norms = (new * new).sum(1, keepdim=True)
        for start in range(0, len(old), block):  # bounded memory, one block of the bank at a time
            part = old[start:start + block]
            distances = new_norms - 2 * new @ part.T + (part * part).sum(1)
            torch.minimum(nearest, distances.amin(1), out=nearest)
        return _greedy_coreset(new, n, seed, False, dim=new.shape[1], nearest=nearest)
