"""Batch inspection on Ray (`vqc predict MODEL SOURCE --ray`): a Ray Data pipeline.

  paths -> decoding + geometry (tasks) -> the model (an actor pool, model opened once per actor)
  -> small result rows streamed back to the driver -> Parquet parts in OUT/scores/ (ScoreStore).

Owns the image sources (folders, globs, .txt and .parquet lists), shipping the model to the
workers, the pipeline and its result. Only scores travel back, never images or maps, so the
output folder needs no shared file system, the driver's memory does not grow with the archive,
and a rerun skips what is already stored. The model travels as its files' bytes through Ray's
object store, so workers on other machines need no copy of it: a line bundle as it is, a
training model file as it is for PyTorch workers, else exported here, once, to a line bundle.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from ..engines import EngineSettings
from ..errors import VqcError
from ..inspection import score_row
from ..loading import check_model_path, open_model
from ..progress import progress_bar
from .ray_session import RayOptions, ray_session, task_failure
from .score_store import ScoreStore

log = logging.getLogger(__name__)

LIST_SUFFIXES = {".txt", ".lst", ".list"}  # a text file naming one image per line


# ---------------------------------------------------------------- sources

def list_sources(sources: list[str | Path]) -> list[str]:
    """Absolute image paths, each once, in order, from folders, globs, image files, text files with
    one path per line and Parquet files with a `path` column. Relative paths in a list are relative to
    the list's folder. Absolute, because the workers do not share the driver's working directory."""
    from ..data import IMAGE_SUFFIXES, list_images
    paths: list[str] = []
    for source in map(Path, sources):
        suffix = source.suffix.lower()
        if source.is_file() and suffix in LIST_SUFFIXES:
            named = [line.strip() for line in source.read_text().splitlines()]
            named = [line for line in named if line and not line.startswith("#")]
        elif source.is_file() and suffix == ".parquet":
            named = _parquet_paths(source)
        elif source.is_file() and suffix not in IMAGE_SUFFIXES:
            raise VqcError(f"{source} is not an image, a .txt list or a .parquet list of images")
        else:
            paths += [os.path.abspath(p) for p in list_images([source])]
            continue
        paths += [os.path.abspath(source.parent / p) for p in named]  # an absolute p stays as it is
    if not paths:
        raise VqcError(f"no images listed in {', '.join(map(str, sources))}")
    return list(dict.fromkeys(paths))


def _parquet_paths(source: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        names = pq.read_schema(source).names
        column = "path" if "path" in names else names[0] if len(names) == 1 else None
        if column is None:
            raise VqcError(f"{source} lists images in a column named path (columns: {', '.join(names)})")
        return [str(p) for p in pq.read_table(source, columns=[column]).column(column).to_pylist() if p]
    except (pa.ArrowException, OSError) as exc:
        raise VqcError(f"cannot read the image list {source}: {exc}") from None


# ---------------------------------------------------------------- the model on the workers

@dataclass(frozen=True)
class ShippedModel:
    """What every scoring worker opens: a line bundle folder or a training model file, as its
    files' bytes in Ray's object store, and the engine settings; put there once for all workers."""
    name: str  # the bundle folder's or the model file's name
    files: dict  # {path below the scratch folder: Ray object reference to the file's bytes}
    settings: EngineSettings
    on_gpu: bool  # a model file on PyTorch, one GPU per worker

    def open(self):
        """The model, opened with vqc.loading.open_model from a scratch copy of its files (removed
        once open: the engine holds the model in memory)."""
        import ray
        with tempfile.TemporaryDirectory(prefix="vqc-worker-") as tmp:
            for relative, data in self.files.items():
                target = Path(tmp) / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(ray.get(data))
            return open_model(Path(tmp) / self.name, self.settings)


def ship_model(ray, model_path: str | Path, settings: EngineSettings, options: RayOptions, cluster_has_gpus: bool,
               scratch: Path) -> ShippedModel:
    """The model for the workers, put in Ray's object store. Threads: the settings', else the CPUs
    each worker declares. A training model file the workers would run as an exported graph is
    exported here, once, to a line bundle in `scratch` (auto falls back to PyTorch where that fails)."""
    if settings.threads is None:
        settings = replace(settings, threads=max(1, int(options.cpus_per_worker)))
    path = Path(model_path).resolve()
    if check_model_path(path) == "file" and settings.graph_engine(on_gpu=cluster_has_gpus) is not None:
        path, settings = _exported(path, settings, scratch / f"{path.stem}-bundle")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    refs = {str(p.relative_to(path.parent)): ray.put(p.read_bytes()) for p in files}
    return ShippedModel(path.name, refs, settings, on_gpu=cluster_has_gpus and path.is_file())


def _exported(model_file: Path, settings: EngineSettings, folder: Path) -> tuple[Path, EngineSettings]:
    """The model file as a line bundle in `folder`, or (engine auto, the export failing) the file on PyTorch."""
    from .export import export_bundle
    from .model import load
    try:
        export_bundle(load(model_file, device="cpu"), folder, source=model_file)
    except VqcError as exc:
        if settings.name != "auto":
            raise
        log.warning("exported-graph engine unavailable, the workers score with PyTorch: %s", exc)
        return model_file, replace(settings, name="torch")
    return folder, settings


# ---------------------------------------------------------------- batch inspection

@dataclass
class BatchResult:
    listed: int  # images in the source
    already: int  # scored by an earlier run, skipped
    scored: int  # scored by this run
    unreadable: list[str] = field(default_factory=list)  # one message per image that could not be read
    seconds: float = 0.0  # from starting the pipeline to the last row
    first_row_seconds: float = 0.0  # from starting the pipeline to the first row: start-up of the workers

    @property
    def images_per_second(self) -> float:
        """Steady rate, start-up excluded: rows after the first one over the time they took."""
        span = self.seconds - self.first_row_seconds
        return (self.scored - 1) / span if self.scored > 1 and span > 0 else float("nan")


def predict_on_ray(model_path: str | Path, sources: list[str | Path], out: str | Path, options: RayOptions,
                   settings: EngineSettings = EngineSettings(), write_csv: bool = False,
                   progress: bool = True) -> BatchResult:
    """Score every listed image not yet stored in OUT/scores/ with the model file or line bundle
    at `model_path`; see the module docstring."""
    out = Path(out)
    paths = list_sources(sources)
    check_model_path(model_path)  # a wrong model fails before Ray starts
    store = ScoreStore(out / "scores")
    try:
        pending = [p for p in paths if p not in store.done]
        result = BatchResult(len(paths), len(paths) - len(pending), 0)
        if pending:
            with ray_session(options.address) as ray, tempfile.TemporaryDirectory(prefix="vqc-driver-") as scratch:
                _score_on_ray(ray, model_path, settings, pending, store, result, options, Path(scratch), progress)
        store.flush()
        if write_csv:
            store.write_csv(out / "scores.csv")
    finally:
        store.close()  # after an interruption too: the rows already scored are kept
    return result


def _score_on_ray(ray, model_path, settings: EngineSettings, pending: list[str], store: ScoreStore,
                  result: BatchResult, options: RayOptions, scratch: Path, progress: bool) -> None:
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    shipped = ship_model(ray, model_path, settings, options, gpus > 0, scratch)
    gpus = gpus if shipped.on_gpu else 0
    model = shipped.open()  # as each worker opens it: one that cannot be opened fails here, once
    workers = options.workers or gpus or max(1, int(cpus // options.cpus_per_worker))
    if (workers > gpus) if gpus else (workers * options.cpus_per_worker > cpus):
        raise VqcError(f"{workers} workers need {workers} GPUs" if gpus else
                       f"{workers} workers x {options.cpus_per_worker:g} CPUs need more than the "
                       f"cluster's {cpus:g} CPUs")
    # Decoding is about a fifth of the work (see Speed). Where the workers hold every CPU it
    # declares none and runs beside them, one task per worker; a declared CPU would be one the
    # workers can never give back, and the pipeline would stall.
    spare = cpus - (0 if gpus else workers * options.cpus_per_worker)
    decode = {"num_cpus": 1} if spare >= 1 else {"num_cpus": 0, "compute": ray.data.TaskPoolStrategy(size=workers)}
    dataset = (ray.data.from_items([{"path": p} for p in pending])
               .map_batches(_decode_plans, batch_size=model.batch_size, batch_format="numpy",
                            fn_kwargs={"geometry": model.geometry}, **decode)
               .map_batches(ScoringWorker, batch_size=model.batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=options.cpus_per_worker,
                            **({"num_gpus": 1} if gpus else {}), fn_constructor_kwargs={"shipped": shipped}))
    start = time.perf_counter()
    with progress_bar(total=result.listed, initial=result.already, desc=f"predict on ray ({workers} workers)",
                      unit="img", shown=progress, file=sys.stderr) as bar, _job_failure(ray, result):
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            _store_rows(batch, store, result, bar)
            if not result.first_row_seconds:
                result.first_row_seconds = time.perf_counter() - start
            bar.update(len(batch["path"]))
    result.seconds = time.perf_counter() - start


def _store_rows(batch: dict, store: ScoreStore, result: BatchResult, bar) -> None:
    """One batch of result rows into the store; unreadable images and warnings said as local predict says them."""
    for path, score, normalised, verdict, warning, error in zip(
            batch["path"], batch["score"], batch["normalised_score"], batch["verdict"], batch["warning"],
            batch["error"]):
        if error:
            result.unreadable.append(str(error))
            bar.write(f"vqc: skipped: {error}", file=sys.stderr)
        elif store.add(str(path), float(score), float(normalised), str(verdict) or None, str(warning) or None):
            result.scored += 1
            if warning:
                bar.write(f"vqc: warning: {path}: {warning}", file=sys.stderr)


@contextlib.contextmanager
def _job_failure(ray, result: BatchResult) -> Iterator:
    """A job Ray gives up on (its retries spent) ends in one line; what was scored is kept."""
    try:
        yield
    except ray.exceptions.RayError as exc:
        raise VqcError(f"the Ray job stopped: {task_failure(exc)} ({result.scored} images scored before that are "
                       f"stored; a rerun goes on from there)") from None


def _decode_plans(batch: dict, geometry) -> dict:
    """Ray Data task: read, decode and plan (resize, pad, tile) a batch of images, exactly as the
    local path does; an unreadable image becomes a row with its error instead of failing the job."""
    from ..data import decode_image
    plans, errors = [], []
    for path in batch["path"]:
        try:
            plans.append(pickle.dumps(geometry.plan(decode_image(str(path))), protocol=5))
            errors.append("")
        except VqcError as exc:
            plans.append(b"")
            errors.append(str(exc))
    return {"path": batch["path"], "plan": np.array(plans, dtype=object), "error": np.array(errors, dtype=object)}


class ScoringWorker:
    """Ray Data actor: the shipped model opened once, then batch after batch of planned images
    scored into rows of scores.csv's columns (vqc.inspection.score_row)."""

    def __init__(self, shipped: ShippedModel):
        self.model = shipped.open()

    def __call__(self, batch: dict) -> dict:
        n = len(batch["path"])
        score, normalised = np.full(n, np.nan), np.full(n, np.nan)
        verdict, warning = np.full(n, "", dtype=object), np.full(n, "", dtype=object)
        readable = [i for i in range(n) if not batch["error"][i]]
        predictions = self.model.predict_plans([pickle.loads(batch["plan"][i]) for i in readable])
        for i, prediction in zip(readable, predictions):
            row = score_row(batch["path"][i], prediction)
            score[i], normalised[i] = row["score"], row["normalised_score"]
            verdict[i], warning[i] = row["verdict"] or "", row["warning"] or ""
        return {"path": batch["path"], "score": score, "normalised_score": normalised, "verdict": verdict,
                "warning": warning, "error": batch["error"]}
