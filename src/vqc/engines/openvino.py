"""OpenVINO: the same exported graph on oneDNN's CPU kernels, and in bfloat16 where the CPU has the units."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import VqcError, first_line
from .feed import graph_feed


class OpenVinoEngine:
    """Runs the same exported graph with OpenVINO on a CPU: oneDNN's kernels and, with precision
    "bf16", the CPU's bfloat16 units (AMX, AVX-512 BF16) for the whole graph.

    A batch is split across OpenVINO's throughput streams, each on its own cores, which keeps every
    core busy through the heads' many small operations; a single image runs in latency mode, all
    cores on it. Graphs of a fixed image size are compiled for each batch shape they meet (a few:
    predict's batch and its remainder), since OpenVINO runs a static shape about 1.5 times faster
    than a dynamic one here; `native` graphs, whose image size varies, run dynamic."""

    PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
    MAX_SHAPES = 8  # compiled batch shapes kept; the least recently used goes first

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "fp32"):
        try:
            import openvino
        except ImportError:
            raise VqcError("the OpenVINO engine needs openvino (pip install openvino)") from None
        if precision not in self.PRECISIONS:
            raise VqcError(f"the OpenVINO engine runs fp32 or bf16, not {precision}")
        self.core = openvino.Core()
        if precision == "bf16" and "BF16" not in self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise VqcError("this CPU has no bfloat16 units: use precision fp32")
        self.config = {"INFERENCE_PRECISION_HINT": self.PRECISIONS[precision]}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.model = self.core.read_model(str(path))
            dynamic = self.core.compile_model(self.model, "CPU", {**self.config, "PERFORMANCE_HINT": "THROUGHPUT"})
        except Exception as exc:
            raise VqcError(f"cannot load ONNX model {path} in OpenVINO: {first_line(exc)}") from None
        self.streams = max(1, int(dynamic.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.inputs = [i.get_any_name() for i in self.model.inputs]
        self.fixed_size = all(d.is_static for d in list(self.model.inputs[0].get_partial_shape())[1:])
        self.dynamic = [dynamic.create_infer_request() for _ in range(self.streams)]
        self.compiled: OrderedDict[tuple[str, int], list] = OrderedDict()

    def _requests(self, hint: str, batch: int) -> list:
        """Infer requests compiled for `batch` images each, one per stream (latency mode: one)."""
        key = (hint, batch)
        if key not in self.compiled:
            model = self.model.clone()
            model.reshape({i.get_any_name(): [batch, *list(i.get_partial_shape())[1:]] for i in model.inputs})
            compiled = self.core.compile_model(model, "CPU", {**self.config, "PERFORMANCE_HINT": hint})
            self.compiled[key] = [compiled.create_infer_request() for _ in range(1 if hint == "LATENCY" else self.streams)]
            if len(self.compiled) > self.MAX_SHAPES:
                self.compiled.popitem(last=False)
        self.compiled.move_to_end(key)
        return self.compiled[key]

    def run(self, images: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        n, feed = len(images), graph_feed(self.inputs, images, valid)
        if not self.fixed_size:
            requests = self.dynamic[:n]
            parts = np.array_split(np.arange(n), len(requests))
        else:
            requests = self._requests("LATENCY", 1) if n == 1 else self._requests("THROUGHPUT", -(-n // self.streams))
            per = -(-n // len(requests))
            if per * len(requests) > n:  # pad with copies of the last image: every request has its compiled shape
                feed = {k: np.concatenate([v, np.repeat(v[-1:], per * len(requests) - n, axis=0)]) for k, v in feed.items()}
            parts = [np.arange(i * per, (i + 1) * per) for i in range(len(requests))]
        for request, part in zip(requests, parts):
            request.start_async({name: array[part[0]:part[-1] + 1] for name, array in feed.items()})
        for request in requests:
            request.wait()
        maps = np.concatenate([r.get_tensor("maps").data for r in requests])[:n]
        return maps, np.concatenate([r.get_tensor("scores").data for r in requests])[:n]
