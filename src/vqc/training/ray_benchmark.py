"""The benchmark matrix on Ray (`vqc benchmark --ray`): each cell a Ray task.

A cell task runs the cell as the local run does, in a scratch folder on its worker, and returns
its record and overlay files; the driver stores them exactly as the local run does
(OUT/cells/<key>.json, overlays first), so local and Ray runs share one resumable result store.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..errors import VqcError
from ..files import atomic_path, write_text_atomic
from .ray_session import RayOptions, images_in, ray_session, run_tasks, task_failure, task_needs


def run_matrix_on_ray(cells: list, out: Path, costs: dict, options: RayOptions, progress: bool = True,
                      say=print) -> list[dict]:
    """The benchmark matrix with each cell as a Ray task; same store, same records as run_matrix."""
    from .benchmark import cell_summary, error_record, stored_record, weights_problems
    out.mkdir(parents=True, exist_ok=True)
    records = {cell: stored_record(cell, out) for cell in cells}
    problems = weights_problems([cell for cell in cells if records[cell] is None])
    for cell, problem in problems.items():
        records[cell] = _store_cell(out, error_record(cell, problem, "missing"), {})
        say(cell_summary(cell, records[cell]))
    jobs = {cell: (cell, costs) for cell in cells if records[cell] is None}
    if jobs:
        with ray_session(options.address) as ray:
            images = {cell: images_in(cell.data, ("train", "test")) for cell in jobs}
            for cell, outcome in run_tasks(ray, _cell_task, jobs, task_needs(ray, options), images,
                                           f"benchmark on ray ({len(jobs)} cells)", progress):
                if isinstance(outcome, Exception):
                    outcome = error_record(cell, f"cell task failed: {task_failure(outcome)}"), {}
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
    for name, data in files.items():
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(data)
    write_text_atomic(out / "cells" / f"{record['key']}.json", json.dumps(record, indent=1))
    return record
