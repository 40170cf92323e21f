"""One model per category of a data root (`vqc fit ROOT --per-category`), here one after
another or, with `--ray`, each category a Ray task.

A task returns the model file's bytes and the driver writes OUT/<category>.safetensors under a
temporary name and renames it, so a model file is only ever complete and a rerun skips the
categories already fitted, whichever way they were fitted.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import VqcError
from ..files import atomic_path
from .ray_session import RayOptions, images_in, ray_session, run_tasks, task_failure, task_needs


@dataclass(frozen=True)
class FitSpec:
    model: dict  # AnomalyModel keyword arguments, as `vqc fit` builds them
    threshold: str = "false-reject-rate=0.01"  # a policy that needs no labelled data


def fit_categories(root: str | Path, spec: FitSpec, out: str | Path, options: RayOptions | None = None,
                   say=print) -> dict[str, str]:
    """Fit one model per category of a data root into OUT/<category>.safetensors, here one after
    another, or as Ray tasks (options given). Returns {category: error} for the categories that
    failed; the others are fitted."""
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
            failed[name] = f"{targets[name][0]}: {task_failure(outcome)}"
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
            images = {name: images_in(args[0], ("train",)) for name, args in jobs.items()}
            for name, outcome in run_tasks(ray, _fit_task, jobs, task_needs(ray, options), images,
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
                        f"{info['fit_seconds']:.1f} s, threshold {model.threshold.value:.6g}")
