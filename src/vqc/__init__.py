"""vqc: visual quality control from defect-free images.

`import vqc` loads no torch: AnomalyModel and load come from vqc.training.model on first use,
so the parts that never score (records, monitoring, the key tools) stay light."""
from .errors import VqcError
from .version import __version__

__all__ = ["AnomalyModel", "Prediction", "VqcError", "load", "__version__"]


def __getattr__(name: str):
    if name in ("AnomalyModel", "load"):
        from .training import model
        return getattr(model, name)
    if name == "Prediction":
        from .scoring import Prediction
        return Prediction
    raise AttributeError(f"module 'vqc' has no attribute {name!r}")
