"""Scaling out on Ray: batch inspection of large archives, the benchmark matrix, one model per category.

Ray is imported only here and only when asked for (`--ray`), so vqc stays a plain local tool.

Batch inspection (`vqc predict MODEL SOURCE --ray`) is a Ray Data pipeline:
  paths -> decoding + geometry (tasks) -> the model (an actor pool, model loaded once per actor)
  -> small result rows streamed back to the driver -> Parquet parts in OUT/scores/.
Only scores travel back, never images or maps, and the driver writes each part to a temporary
name and renames it when complete (ScoreStore), so the output folder needs no shared file system,
the driver's memory does not grow with the archive, and a rerun skips what is already stored.

The benchmark matrix and per-category fitting run each cell or category as a Ray task with
declared CPU/GPU needs; the task returns its files and the driver stores them exactly as the
local run does (OUT/cells/<key>.json, FOLDER/<category>.safetensors), so the two share one
resumable result store.
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import logging
import os
import pickle
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..engines import EngineSettings
from ..errors import VqcError, first_line
from ..files import atomic_path, write_text_atomic
from ..inspection import SCORE_COLUMNS
from ..progress import progress_bar


LIST_SUFFIXES = {".txt", ".lst", ".list"}  # a text file naming one image per line


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: start a local Ray instance on this machine; else join this cluster
    workers: int = 0  # scoring actors; 0: one per GPU, or one per cpus_per_worker CPUs of the cluster
    cpus_per_worker: float = 1.0  # CPUs each scoring actor, benchmark cell or fit task declares (its threads)


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
        _check_reachable(address)
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


def _check_reachable(address: str) -> None:
    """A wrong HOST:PORT fails here in seconds, where Ray would retry for minutes."""
    import socket
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # another form Ray understands (auto, ray://...): Ray's own errors
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise VqcError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


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


# ---------------------------------------------------------------- the result store

class ScoreStore:
    """Scores as Parquet parts in one folder (`pandas.read_parquet(folder)` reads them all).

    A part is written to a temporary name, synced and renamed, so it either holds all its rows or
    does not exist; temporary files of a killed run are removed on opening, and their images are
    scored again. Every path is written once: paths in stored parts, and paths already written
    in this run, are skipped. One run at a time per folder (a lock file says so)."""

    PART_GLOB = "part-*.parquet"

    def __init__(self, folder: Path, part_rows: int = 10_000, part_seconds: float = 15.0):
        import pyarrow as pa
        self.folder, self.part_rows, self.part_seconds = Path(folder), part_rows, part_seconds
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.folder / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise VqcError(f"another run is writing scores to {self.folder}") from None
        try:
            for leftover in self.folder.glob(".part-*.tmp"):
                leftover.unlink()
            self.done = self._stored_paths()
        except BaseException:
            self._lock.close()
            raise
        types = {"score": pa.float64(), "normalised_score": pa.float64()}  # the rest are text
        self.schema = pa.schema([(name, types.get(name, pa.string())) for name in SCORE_COLUMNS])  # as scores.csv
        self.rows: list[tuple] = []
        self.run, self.parts, self.last_flush = uuid.uuid4().hex[:8], 0, time.monotonic()

    def _stored_paths(self) -> set[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq
        done: set[str] = set()
        for part in sorted(self.folder.glob(self.PART_GLOB)):
            try:
                done.update(pq.read_table(part, columns=["path"]).column("path").to_pylist())
            except (pa.ArrowException, OSError) as exc:
                raise VqcError(f"score part {part} cannot be read ({exc}); remove it to score its images again") from None
        return done

    def add(self, path: str, score: float, normalised_score: float, verdict: str | None,
            warning: str | None = None) -> bool:
        """Buffer one row; False (and nothing written) if the path is already stored."""
        if path in self.done:
            return False
        self.done.add(path)
        self.rows.append((path, score, normalised_score, verdict, warning))
        if len(self.rows) >= self.part_rows or time.monotonic() - self.last_flush >= self.part_seconds:
            self.flush()
        return True

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        self.last_flush = time.monotonic()
        if not self.rows:
            return
        table = pa.Table.from_pylist([dict(zip(self.schema.names, row)) for row in self.rows], self.schema)
        with atomic_path(self.folder / f"part-{self.run}-{self.parts:06d}.parquet") as tmp:
            pq.write_table(table, tmp)
            with open(tmp, "rb") as written:  # on disk before the rename makes it count as stored
                os.fsync(written.fileno())
        self.parts += 1
        self.rows = []

    def close(self) -> None:
        self.flush()
        self._lock.close()

    def write_csv(self, path: Path) -> int:
        """All stored rows as one CSV, in the local `predict`'s columns and number format."""
        import pyarrow.parquet as pq
        count = 0
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "score", "normalised_score", "verdict"])
            for part in sorted(self.folder.glob(self.PART_GLOB)):
                for row in pq.read_table(part).to_pylist():
                    writer.writerow([row["path"], f"{row['score']:.6g}", f"{row['normalised_score']:.4f}",
                                     row["verdict"] or ""])
                    count += 1
        return count


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
                   engine: str = "auto", precision: str = "fp32", compile: bool = False,
                   write_csv: bool = False, progress: bool = True) -> BatchResult:
    """Score every listed image not yet stored in OUT/scores/; see the module docstring."""
    from .model import load
    out = Path(out)
    paths = list_sources(sources)
    model = load(model_path, device="cpu")  # here only to check the file and prepare the engine
    store = ScoreStore(out / "scores")
    try:
        pending = [p for p in paths if p not in store.done]
        result = BatchResult(len(paths), len(paths) - len(pending), 0)
        if pending:
            _score_on_ray(model, Path(model_path), pending, store, result, options, engine, precision, compile,
                          progress)
        store.flush()
        if write_csv:
            store.write_csv(out / "scores.csv")
    finally:
        store.close()  # after an interruption too: the rows already scored are kept
    return result


def _score_on_ray(model, model_path: Path, pending: list[str], store: ScoreStore, result: BatchResult,
                  options: RayOptions, engine: str, precision: str, compile: bool, progress: bool) -> None:
    with ray_session(options.address) as ray:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
        workers = options.workers or gpus or max(1, int(cpus // options.cpus_per_worker))
        if (workers > gpus) if gpus else (workers * options.cpus_per_worker > cpus):
            raise VqcError(f"{workers} workers need {workers} GPUs" if gpus else
                           f"{workers} workers x {options.cpus_per_worker:g} CPUs need more than the "
                           f"cluster's {cpus:g} CPUs")
        if not gpus:  # CPU workers: the engine is chosen once, here (auto: ONNX Runtime unless the export fails)
            engine = model.scorer(EngineSettings(engine, precision=precision, compile=compile)).engine_name
        files = {"model": ray.put(model_path.read_bytes()), "onnx": None}
        if engine == "onnx":  # exported (and parity-checked) once, not once per worker
            from .export import cached_onnx
            files["onnx"] = ray.put(cached_onnx(model).read_bytes())
        # Decoding is about a fifth of the work (see Speed). Where the workers hold every CPU it
        # declares none and runs beside them, one task per worker; a declared CPU would be one the
        # workers can never give back, and the pipeline would stall.
        spare = cpus - (0 if gpus else workers * options.cpus_per_worker)
        decode = {"num_cpus": 1} if spare >= 1 else {"num_cpus": 0, "compute": ray.data.TaskPoolStrategy(size=workers)}
        scorer = {"num_gpus": 1} if gpus else {}
        dataset = (ray.data.from_items([{"path": p} for p in pending])
                   .map_batches(_decode_plans, batch_size=model.batch_size, batch_format="numpy",
                                fn_kwargs={"geometry": model.geometry}, **decode)
                   .map_batches(_Scorer, batch_size=model.batch_size, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=workers),
                                num_cpus=options.cpus_per_worker, **scorer,
                                fn_constructor_kwargs={"files": files, "engine": engine, "precision": precision,
                                                       "compile": compile,
                                                       "threads": max(1, int(options.cpus_per_worker))}))
        start = time.perf_counter()
        with progress_bar(total=result.listed, initial=result.already, desc=f"predict on ray ({workers} workers)",
                  unit="img", shown=progress, file=sys.stderr) as bar, _job_failure(ray, result):
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for path, score, normalised, verdict, error in zip(
                        batch["path"], batch["score"], batch["normalised_score"], batch["verdict"], batch["error"]):
                    if error:
                        result.unreadable.append(str(error))
                        bar.write(f"vqc: skipped: {error}", file=sys.stderr)
                    elif store.add(str(path), float(score), float(normalised), str(verdict) or None):
                        result.scored += 1
                if not result.first_row_seconds:
                    result.first_row_seconds = time.perf_counter() - start
                bar.update(len(batch["path"]))
        result.seconds = time.perf_counter() - start


@contextlib.contextmanager
def _job_failure(ray, result: BatchResult) -> Iterator:
    """A job Ray gives up on (its retries spent) ends in one line; what was scored is kept."""
    try:
        yield
    except ray.exceptions.RayError as exc:
        raise VqcError(f"the Ray job stopped: {_task_failure(exc)} ({result.scored} images scored before that are "
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


class _Scorer:
    """Ray Data actor: the model loaded once (from the bytes the driver shipped), then batch after
    batch of planned images scored with the chosen engine."""

    def __init__(self, files: dict, engine: str, precision: str, compile: bool, threads: int):
        import ray

        from .model import load
        with tempfile.TemporaryDirectory(prefix="vqc-worker-") as tmp:
            model_path = Path(tmp) / "model.safetensors"
            model_path.write_bytes(ray.get(files["model"]))
            onnx_path = None
            if files["onnx"] is not None:
                onnx_path = Path(tmp) / "model.onnx"
                onnx_path.write_bytes(ray.get(files["onnx"]))
            self.model = load(model_path).scorer(EngineSettings(engine, threads, precision, compile), onnx_path)

    def __call__(self, batch: dict) -> dict:
        n = len(batch["path"])
        score, normalised = np.full(n, np.nan), np.full(n, np.nan)
        verdict = np.full(n, "", dtype=object)
        readable = [i for i in range(n) if not batch["error"][i]]
        predictions = self.model.predict_plans([pickle.loads(batch["plan"][i]) for i in readable])
        for i, prediction in zip(readable, predictions):
            score[i], normalised[i] = prediction.score, prediction.normalised_score
            verdict[i] = prediction.verdict or ""
        return {"path": batch["path"], "score": score, "normalised_score": normalised, "verdict": verdict,
                "error": batch["error"]}


# ---------------------------------------------------------------- jobs as Ray tasks

def _task_needs(ray, options: RayOptions) -> dict:
    """What each benchmark cell or fit task declares: its CPUs, and one GPU where the cluster has any.
    max_calls=1: a fresh worker process per task, so its peak memory is its own (as a local cell's)."""
    gpus = 1 if ray.cluster_resources().get("GPU", 0) else 0
    return {"num_cpus": options.cpus_per_worker, "num_gpus": gpus, "max_calls": 1}


def _images_in(data: str | Path, splits: tuple[str, ...]) -> int:
    """Images a cell or fit task reads, for the progress bar (0 where the folder is unreadable:
    the task reports why)."""
    from ..data import read_split
    try:
        return sum(len(read_split(data, split)) for split in splits)
    except VqcError:
        return 0


def _task_failure(exc: BaseException) -> str:
    """The last line of a Ray task's failure: the exception the task raised, not Ray's wrappers."""
    while (inner := getattr(exc, "cause", None) or exc.__cause__) is not None:
        exc = inner
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return lines[-1]


def _run_tasks(ray, function, jobs: dict, needs: dict, images: dict, desc: str, progress: bool) -> Iterator:
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


def run_matrix_on_ray(cells: list, out: Path, costs: dict, options: RayOptions, progress: bool = True,
                      say=print) -> list[dict]:
    """The benchmark matrix with each cell as a Ray task; same store, same records as run_matrix."""
    from .benchmark import error_record, cell_summary, stored_record, weights_problems
    out.mkdir(parents=True, exist_ok=True)
    records = {cell: stored_record(cell, out) for cell in cells}
    problems = weights_problems([cell for cell in cells if records[cell] is None])
    for cell, problem in problems.items():
        records[cell] = _store_cell(out, error_record(cell, problem, "missing"), {})
        say(cell_summary(cell, records[cell]))
    jobs = {cell: (cell, costs) for cell in cells if records[cell] is None}
    if jobs:
        with ray_session(options.address) as ray:
            images = {cell: _images_in(cell.data, ("train", "test")) for cell in jobs}
            for cell, outcome in _run_tasks(ray, _cell_task, jobs, _task_needs(ray, options), images,
                                            f"benchmark on ray ({len(jobs)} cells)", progress):
                if isinstance(outcome, Exception):
                    outcome = error_record(cell, f"cell task failed: {_task_failure(outcome)}"), {}
                records[cell] = _store_cell(out, *outcome)
                say(cell_summary(cell, records[cell]))
    return [records[cell] for cell in cells]


def _cell_task(cell, costs: dict) -> tuple[dict, dict[str, bytes]]:
    """Ray task: one cell, as the local cell process runs it, into a scratch folder on the worker;
    returns the record and the overlay files, for the driver to store."""
    from .benchmark import error_record, run_cell
    with tempfile.TemporaryDirectory(prefix="vqc-cell-") as tmp:
        try:
            record = run_cell(cell, Path(tmp), costs)
        except VqcError as exc:
            record = error_record(cell, str(exc))
        files = {str(p.relative_to(tmp)): p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()}
    files.pop(f"cells/{cell.key}.json", None)  # the driver stores the record, last
    return record, files


def _store_cell(out: Path, record: dict, files: dict[str, bytes]) -> dict:
    """Overlays first, then the record: a stored record means a finished cell."""
    import json
    for name, data in files.items():
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(data)
    write_text_atomic(out / "cells" / f"{record['key']}.json", json.dumps(record, indent=1))
    return record


# ---------------------------------------------------------------- one model per category

@dataclass(frozen=True)
class FitSpec:
    model: dict  # AnomalyModel keyword arguments, as `vqc fit` builds them
    threshold: str = "false-reject-rate=0.01"  # a policy that needs no labelled data


def fit_categories(root: str | Path, spec: FitSpec, out: str | Path, options: RayOptions | None = None,
                   say=print) -> dict[str, str]:
    """Fit one model per category of a data root into OUT/<category>.safetensors, here one after
    another, or as Ray tasks (options given). A model file is only ever complete (written to a
    temporary name, then renamed), so a rerun skips the categories already fitted. Returns
    {category: error} for the categories that failed; the others are fitted."""
    from .benchmark import categories
    out = Path(out)
    targets = {category.name: (category, out / f"{category.name}.safetensors") for category in categories([root])}
    for name, (_, target) in targets.items():
        if target.exists():
            say(f"{name}: already fitted, {target}")
    jobs = {name: (str(category), spec) for name, (category, target) in targets.items() if not target.exists()}
    failed: dict[str, str] = {}

    def store(name: str, outcome) -> None:
        if isinstance(outcome, Exception):
            failed[name] = f"{targets[name][0]}: {_task_failure(outcome)}"
            say(f"{name}: failed: {failed[name]}")
            return
        data, summary = outcome
        with atomic_path(targets[name][1]) as tmp:
            tmp.write_bytes(data)
        say(f"{name}: {summary}; saved {targets[name][1]}")

    if options is None:
        for name, args in jobs.items():
            try:
                store(name, _fit_task(*args, progress=True))
            except VqcError as exc:
                store(name, exc)
    elif jobs:
        with ray_session(options.address) as ray:
            images = {name: _images_in(args[0], ("train",)) for name, args in jobs.items()}
            for name, outcome in _run_tasks(ray, _fit_task, jobs, _task_needs(ray, options), images,
                                            f"fit on ray ({len(jobs)} categories)", progress=True):
                store(name, outcome)
    return failed


def _fit_task(data: str, spec: FitSpec, progress: bool = False) -> tuple[bytes, str]:
    """Fit one category; the model file's bytes (for the driver to store) and a one-line summary."""
    from .model import AnomalyModel
    from .thresholds import choose_threshold
    model = AnomalyModel(**spec.model).fit(data, progress=progress)
    model.threshold = choose_threshold(model, spec.threshold)
    with tempfile.TemporaryDirectory(prefix="vqc-fit-") as tmp:
        data_bytes = model.save(Path(tmp) / "model.safetensors").read_bytes()
    info = model.info
    return data_bytes, (f"{model.config.backbone} + {model.config.head} on {info['n_train']} images in "
                        f"{info['fit_seconds']:.1f} s, threshold {model.threshold['value']:.6g}")
