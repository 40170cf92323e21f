"""One training loop for the heads that learn by gradient descent (nf, mdn, ae).

Adam, full passes over cached training batches, the validation loss after every epoch, early
stopping with patience, and the best epoch's weights restored at the end.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Callable, Sequence

import torch
from torch import nn

from ...progress import progress_bar


def train_early_stopping(module: nn.Module, loss_fn: Callable, train: Sequence, val: Sequence, *,
                         lr: float = 1e-3, weight_decay: float = 1e-5, max_epochs: int = 200, patience: int = 30,
                         seed: int = 0, progress: bool = True, desc: str = "train") -> dict:
    """Minimise mean loss_fn(batch) over `train`; stop when the loss on `val` has not improved for
    `patience` epochs; restore the best epoch. Without validation data the training loss decides."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    best_loss, best_epoch, best_state = math.inf, -1, copy.deepcopy(module.state_dict())
    history = []
    start = time.perf_counter()
    bar = progress_bar(range(max_epochs), desc=desc, unit="epoch", shown=progress)
    for epoch in bar:
        module.train()
        total, count = 0.0, 0
        for index in torch.randperm(len(train), generator=generator).tolist():
            loss = loss_fn(train[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total, count = total + loss.item(), count + 1
        train_loss = total / max(count, 1)
        val_loss = evaluate_loss(module, loss_fn, val) if val else train_loss
        history.append((train_loss, val_loss))
        if val_loss < best_loss:
            best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(module.state_dict())
        bar.set_postfix(loss=f"{train_loss:.4g}", val=f"{val_loss:.4g}", best=best_epoch)
        if epoch - best_epoch >= patience or not math.isfinite(train_loss):
            break
    bar.close()
    module.load_state_dict(best_state)
    module.eval()
    return {"epochs": len(history), "best_epoch": best_epoch, "best_val_loss": best_loss,
            "stopped_early": len(history) < max_epochs, "train_seconds": round(time.perf_counter() - start, 3)}


def rebatch(batches, size: int) -> list[list[torch.Tensor]]:
    """Regroup cached feature-level batches into batches of `size` images (fewer, larger steps);
    batches of different spatial sizes (geometry "native") are kept apart."""
    by_shape: dict[tuple, list] = {}
    for batch in batches:
        by_shape.setdefault(tuple(batch[0].shape[-2:]), []).append(batch)
    out = []
    for group in by_shape.values():
        levels = [torch.cat([batch[i] for batch in group]) for i in range(len(group[0]))]
        out += [[level[start:start + size] for level in levels] for start in range(0, len(levels[0]), size)]
    return out


@torch.no_grad()
def evaluate_loss(module: nn.Module, loss_fn: Callable, batches: Sequence) -> float:
    module.eval()
    return sum(loss_fn(batch).item() for batch in batches) / len(batches)
