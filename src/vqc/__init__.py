"""vqc: visual quality control from defect-free images.

This package owns the runtime: judging a part (live.py: a Judge opened from a model file, a line
bundle or a store target with one EngineSettings; result.py: the InspectionResult every output is
made from; threshold.py: the Threshold and the Verdict), scoring images (scoring.py, bundle.py,
engines/), the records (records.py), the formats (modelfile.py, bundle.py) and the adapters
around the core (serve.py, station/, scorefiles.py for `vqc predict`, cli/). Training lives in
training/, the model store in store/, the studio in studio/.

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
