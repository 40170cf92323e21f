"""vqc: visual quality control from defect-free images."""
__version__ = "0.1.0"

from .errors import VqcError  # noqa: E402
from .model import AnomalyModel, Prediction, load  # noqa: E402

__all__ = ["AnomalyModel", "Prediction", "VqcError", "load", "__version__"]
