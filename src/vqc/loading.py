"""Opening a model to score with: a line bundle on any install, a training model file on the full one."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .bundle import MANIFEST, LineBundle, is_bundle
from .engines import EngineSettings
from .errors import VqcError
from .modelfile import check_model_file
from .scoring import Scorer


def check_model_path(path: str | Path) -> str:
    """"bundle" or "file" when this install can open the model at `path`; else a VqcError naming why
    (missing, not a model, a training model file on the runtime install). Opens no engine."""
    path = Path(path)
    if path.is_dir():
        if not is_bundle(path):
            raise VqcError(f"{path} is a folder without {MANIFEST}: not a line bundle (vqc export MODEL --out DIR)")
        return "bundle"
    if not path.exists():
        raise VqcError(f"model {path} does not exist")
    check_model_file(path)  # a text file or a picture given as the model is refused here, on either install
    if not _has_torch():
        raise VqcError(f"{path} is a training model file, which needs the full install (no torch here): "
                       f"export it to a line bundle with `vqc export {path.name} --out DIR` where vqc-inspect[train] "
                       f"is installed, and give DIR") from None
    return "file"


def _has_torch() -> bool:
    """Looked up, not imported: `vqc station check` stays quick on the full install."""
    try:
        return importlib.util.find_spec("torch") is not None
    except ModuleNotFoundError:  # an import hook that refuses the name outright
        return False


def open_model(path: str | Path, settings: EngineSettings | None = None, max_pixels: int | None = None) -> Scorer:
    """A model ready to score: a bundle folder (any install), or a training model file (the
    full install: it needs torch), on the engine the settings pick."""
    path = Path(path)
    settings = settings or EngineSettings()
    if check_model_path(path) == "bundle":
        model = LineBundle(path, settings)
    else:
        from .training.model import load
        model = load(path).scorer(settings)
    if max_pixels is not None:
        model.max_pixels = max_pixels
    return model
