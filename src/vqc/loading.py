"""Opening a model to score with: a line bundle on any install, a training model file on the full one."""
from __future__ import annotations

from pathlib import Path

from .bundle import MANIFEST, LineBundle, is_bundle
from .engines import EngineSettings
from .errors import VqcError
from .scoring import Scorer


def open_model(path: str | Path, settings: EngineSettings | None = None, max_pixels: int | None = None) -> Scorer:
    """A model ready to score: a bundle folder (any install), or a training model file (the
    full install: it needs torch), on the engine the settings pick."""
    path = Path(path)
    settings = settings or EngineSettings()
    if path.is_dir():
        if not is_bundle(path):
            raise VqcError(f"{path} is a folder without {MANIFEST}: not a line bundle (vqc export MODEL --out DIR)")
        model = LineBundle(path, settings)
    else:
        try:
            from .training.model import load
        except ModuleNotFoundError as exc:
            raise VqcError(f"{path} is a training model file, which needs the full install (no {exc.name} here): "
                           f"export it to a line bundle with `vqc export {path.name} --out DIR` where vqc-inspect[train] "
                           f"is installed, and give DIR") from None
        model = load(path).use_engine(settings)
    if max_pixels is not None:
        model.max_pixels = max_pixels
    return model
