"""What a detector costs: parameters, FLOPs, latency, throughput, peak memory. Same code on CPU and GPU."""
from __future__ import annotations

import resource
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from .detector import Detector


def count_parameters(detector: Detector) -> dict:
    """Trained backbone parameters, and every tensor the head holds (weights and memory banks)."""
    head = sum(t.numel() for t in detector.head.state_dict().values())
    return {"params_backbone": sum(p.numel() for p in detector.trunk.parameters()), "params_head": head}


def flops_per_image(detector: Detector, image_size: int) -> int:
    """Floating-point operations of one forward pass on one image (PyTorch's flop counter:
    matrix multiplications and convolutions, 2 per multiply-add)."""
    device = next(detector.buffers()).device
    x = torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        detector(x)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(detector: Detector, image_size: int, batch: int, repeats: int, warmup: int = 2,
                 trunk_dtype: torch.dtype | None = None) -> list[float]:
    """Wall seconds of `repeats` forward passes on a uint8 batch after `warmup` passes (the
    backbone in trunk_dtype: see Detector.features)."""
    device = next(detector.buffers()).device
    x = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, device=device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            detector(x, trunk_dtype=trunk_dtype)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: the most memory the allocator held; CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # macOS reports bytes, Linux KiB


def measure(detector: Detector, image_size: int, batch: int = 32, latency_repeats: int = 20,
            throughput_repeats: int = 3) -> dict:
    """Parameters, FLOPs, batch-1 latency (median and p99) and throughput at `batch`."""
    latency = time_forward(detector, image_size, 1, latency_repeats)
    bulk = time_forward(detector, image_size, batch, throughput_repeats, warmup=1)
    ordered = sorted(latency)
    return {
        **count_parameters(detector),
        "flops_per_image": flops_per_image(detector, image_size),
        "latency_ms": round(statistics.median(latency) * 1000, 3),
        "latency_p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 3),
        "throughput_batch": batch,
        "throughput_ips": round(batch / statistics.median(bulk), 2),
    }
