"""What a studio job does, in its own process: `python -m vqc.studio.work JOB.json`.

A fit writes the model into the job's scratch folder, scores the project's test images into a
gallery, and adds the model to the store only at the end (the store copies it in under a
temporary name and renames it), so a job stopped at any point leaves no half-written version.
Progress goes to stderr, the same step lines and bars the command line shows; the runner keeps
it in the job's log. The outcome goes to JOB.result.json: the version made, or a one-line error.
"""
from __future__ import annotations

import json
import shutil
import signal
import sys
import traceback
from pathlib import Path

import numpy as np

from ..choices import DEFAULT_PRESET, PRESETS
from ..errors import VqcError
from ..files import write_text_atomic
from ..records import ModelIdentity
from ..threshold import stored
from .projects import Project

OVERLAY_SIDE = 256  # pixels on the longer side of a gallery picture: enough to see where, small to send


def step(text: str) -> None:
    print(f"step: {text}", file=sys.stderr, flush=True)


def fit_job(job: dict, scratch: Path) -> dict:
    from ..store.versions import ModelStore
    from ..training.model import AnomalyModel
    project = Project(Path(job["project_folder"]))
    counts = project.counts()
    if counts["train"] < 2:
        raise VqcError(f"project {project.name}: a fit needs at least 2 good images ({counts['train']} uploaded)")
    options, auto = model_options(job["options"], project.data)
    step(f"fitting on {counts['train']} good images")
    model = AnomalyModel(**options).fit(project.data)
    if auto is not None:
        model.info["auto"] = auto
    path = model.save(scratch / f"{project.name}.safetensors")
    version = ModelIdentity.of(path, "").version
    results = scratch / "results"
    write_gallery(model, project, results)
    final = project.folder / "results" / version
    shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    results.rename(final)
    step("adding the model to the store")
    row = ModelStore.open(job["store"], job.get("db")).add(path, job["by"], note=f"fitted in the studio ({project.name})")
    return {"version": row["version"]}


def model_options(options: dict, data: Path) -> tuple[dict, dict | None]:
    """AnomalyModel options of a preset, or of the --auto choice (and its record)."""
    preset = options.get("preset", DEFAULT_PRESET)  # checked when the job was asked for
    if preset != "auto":
        return dict(PRESETS[preset]), None
    from ..training.selection import choose, chosen_options
    step("auto: judging candidates on held-out good images with synthetic defects")
    result = choose(data, 0.01, float(options.get("time_budget", 120)), say=lambda text: step(text.strip()))
    return chosen_options(result), result


def write_gallery(model, project: Project, folder: Path) -> None:
    """folder/gallery.json and one overlay PNG per test image: score, label, whether it points at
    the defect; and the metrics of vqc evaluate where test images exist."""
    from ..viz import prediction_overlay, save_png
    folder.mkdir(parents=True)
    gallery = {"threshold": stored(model.threshold), "normal_scores": model.info["normal_scores"],
               "range": list(model.normal_range()), "images": [], "metrics": None}
    if project.counts()["test_good"] + project.counts()["test_defective"]:
        from ..training.evaluation import evaluate
        step("scoring the test images")
        result = evaluate(model, project.data, keep_predictions=True)
        floor, top = model.normal_range()
        for i, (sample, prediction) in enumerate(result.pop("predictions")):
            picture = prediction_overlay(_decoded(sample.path), prediction, floor, top, max_side=OVERLAY_SIDE)
            save_png(folder / f"{i}.png", picture)
            gallery["images"].append({"name": sample.path.relative_to(project.data / "test").as_posix(),
                                      "label": "defective" if sample.label else "good", "defect": sample.defect,
                                      "score": float(prediction.score), "points": _points(sample, prediction),
                                      "overlay": f"{i}.png"})
        gallery["metrics"] = {k: _number(result[k]) for k in ("image_auroc", "pixel_auroc", "aupro", "pointing",
                                                              "n_images", "n_defective", "n_pointing")}
    write_text_atomic(folder / "gallery.json", json.dumps(gallery))


def _decoded(path: Path) -> np.ndarray:
    from ..data import decode_image
    return decode_image(path)


def _points(sample, prediction) -> bool | None:
    """Whether the map's peak lies on the defect; None where no mask says where it is."""
    if sample.mask is None:
        return None
    from ..data import load_mask
    from ..training.metrics import pointing_hits
    amap = prediction.anomaly_map
    hits = pointing_hits([load_mask(sample.mask, amap.shape)], [amap])
    return bool(hits[0]) if hits.size else None


def _number(value) -> float | int | None:
    """JSON has no NaN: an undefined metric (no defective images, no masks) is null."""
    return None if isinstance(value, float) and np.isnan(value) else value


def export_job(job: dict, scratch: Path) -> dict:
    """The line bundle of a version: exported, zipped for download, added to the store as a version."""
    from ..store.versions import ModelStore
    from ..training.export import export_bundle
    from ..training.model import load
    store = ModelStore.open(job["store"], job.get("db"))
    source = store.path_of(job["version"])
    project = Project(Path(job["project_folder"]))
    step("exporting the line bundle (graph, parity check)")
    bundle = scratch / "bundle" / project.name  # a bundle's folder names it: the store lists it with the project
    export_bundle(load(source), bundle, source=source)  # checked on seeded noise, as vqc export MODEL --out DIR
    step("packing the bundle for download")
    packed = shutil.make_archive(str(scratch / "packed"), "zip", bundle.parent, bundle.name)
    row = store.add(bundle, job["by"], parent=job["version"], note=f"line bundle made in the studio ({project.name})")
    final = project.folder / "exports" / f"{row['version']}.zip"
    final.parent.mkdir(parents=True, exist_ok=True)
    Path(packed).rename(final)
    return {"bundle_version": row["version"], "download": final.name}


JOBS = {"fit": fit_job, "export": export_job}


def main(argv: list[str]) -> int:
    # a cancel is a SIGTERM: leave through Python, so files being written (atomic_path) are removed on the way out
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    job_file = Path(argv[0])
    job = json.loads(job_file.read_text())
    scratch = job_file.with_suffix("")
    scratch.mkdir(exist_ok=True)
    try:
        outcome, code = JOBS[job["kind"]](job, scratch), 0
    except VqcError as exc:
        outcome, code = {"error": str(exc)}, 1
    except Exception as exc:  # anything else: its one line for the page, the trace in the job's log
        traceback.print_exc()
        outcome, code = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}, 1
    write_text_atomic(job_file.with_suffix(".result.json"), json.dumps(outcome))
    shutil.rmtree(scratch, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
