"""What every engine of the exported graph feeds it."""
from __future__ import annotations

import numpy as np


def graph_feed(inputs: list[str], images: np.ndarray, valid: np.ndarray | None) -> dict[str, np.ndarray]:
    """The graph's inputs: uint8 images [n, 3, H, W] and, for a letterbox graph, the float32
    mask `valid` [n, 1, H, W] (none given: all image)."""
    feed = {"images": np.ascontiguousarray(images, dtype=np.uint8)}
    if "valid" in inputs:
        feed["valid"] = np.ones((len(images), 1, *images.shape[2:]), np.float32) if valid is None \
            else np.ascontiguousarray(valid, dtype=np.float32)
    return feed
