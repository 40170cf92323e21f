"""The Ray session and jobs as Ray tasks: what every `--ray` run shares.

Owns the options of a run on Ray (RayOptions), connecting to a cluster (or starting a local
instance) with this very vqc shipped to the workers, the check that a cluster address answers,
and running jobs (benchmark cells, category fits) as Ray tasks with declared CPU/GPU needs.
Ray is imported only here, and only when a run asks for it, so vqc stays a plain local tool.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import VqcError, first_line
from ..progress import progress_bar


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: start a local Ray instance on this machine; else join this cluster
    workers: int = 0  # scoring actors; 0: one per GPU, or one per cpus_per_worker CPUs of the cluster
    cpus_per_worker: float = 1.0  # CPUs each scoring actor, benchmark cell or fit task declares


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise VqcError("--ray needs Ray Data: pip install 'vqc-inspect[ray]' (or pip install 'ray[data]')") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator:
    """Connected to a Ray cluster for the block: a new local instance, or the cluster at `address`.
    Workers import this very vqc (shipped as a py_module), so driver and cluster never differ."""
    ray = import_ray()
    if address:
        check_reachable(address)
    import vqc
    runtime_env = {"py_modules": [str(Path(vqc.__file__).parent)], "excludes": ["__pycache__", "*.pyc"]}
    local = {} if address else {"include_dashboard": False}
    try:
        ray.init(address=address or "local", runtime_env=runtime_env, logging_level=logging.WARNING, **local)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
        raise VqcError(f"cannot {where}: {first_line(exc)}") from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # vqc draws one bar: images done, images/s
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": we know
    try:
        yield ray
    finally:
        ray.shutdown()


def check_reachable(address: str) -> None:
    """A wrong HOST:PORT fails here in seconds, where Ray would retry for minutes."""
    import socket
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # another form Ray understands (auto, ray://...): Ray's own errors
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise VqcError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def task_failure(exc: BaseException) -> str:
    """The last line of a Ray task's failure: the exception the task raised, not Ray's wrappers."""
    while (inner := getattr(exc, "cause", None) or exc.__cause__) is not None:
        exc = inner
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return lines[-1]


def task_needs(ray, options: RayOptions) -> dict:
    """What each benchmark cell or fit task declares: its CPUs, and one GPU where the cluster has any.
    max_calls=1: a fresh worker process per task, so its peak memory is its own (as a local cell's)."""
    gpus = 1 if ray.cluster_resources().get("GPU", 0) else 0
    return {"num_cpus": options.cpus_per_worker, "num_gpus": gpus, "max_calls": 1}


def images_in(data: str | Path, splits: tuple[str, ...]) -> int:
    """Images a cell or fit task reads, for the progress bar (0 where the folder is unreadable:
    the task reports why)."""
    from ..data import read_split
    try:
        return sum(len(read_split(data, split)) for split in splits)
    except VqcError:
        return 0


def run_tasks(ray, function, jobs: dict, needs: dict, images: dict, desc: str, progress: bool) -> Iterator:
    """Run `function(*args)` for every job {key: args} as a Ray task; yield (key, result or the
    exception) as each finishes, advancing a bar by the job's image count."""
    remote = ray.remote(**needs)(function)
    running = {remote.remote(*args): key for key, args in jobs.items()}
    with progress_bar(total=sum(images.values()), desc=desc, unit="img", shown=progress, file=sys.stderr) as bar:
        while running:
            (ready,), _ = ray.wait(list(running), num_returns=1)
            key = running.pop(ready)
            try:
                yield key, ray.get(ready)
            except ray.exceptions.RayError as exc:  # the task raised, or its worker or node died
                yield key, exc
            bar.update(images[key])
