"""Detection and localisation metrics."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def _both_classes(labels: np.ndarray) -> bool:
    return 0 < labels.sum() < labels.size


def auroc(labels, scores) -> float:
    """Area under the ROC curve; NaN when only one class is present (it is undefined there)."""
    labels = np.asarray(labels).astype(bool).ravel()
    return float(roc_auc_score(labels, np.asarray(scores).ravel())) if _both_classes(labels) else float("nan")


def average_precision(labels, scores) -> float:
    """Area under the precision-recall curve (step-wise, as scikit-learn); NaN without defects."""
    labels = np.asarray(labels).astype(bool).ravel()
    return float(average_precision_score(labels, np.asarray(scores).ravel())) if labels.any() else float("nan")
