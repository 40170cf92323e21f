"""The foundation's acceptance numbers on real data (skipped without ../shared/data)."""
import pytest

import vqc
from vqc.training.evaluation import evaluate

from .conftest import shared_set


@pytest.mark.parametrize("name", ["mvtec_bottle", "mpdd_metal_plate"])
def test_lite0_knn_reaches_the_target(name, request):
    if name == "mvtec_bottle":
        _, result = request.getfixturevalue("bottle_knn")
    else:
        root = shared_set(name)
        model = vqc.AnomalyModel(backbone="efficientnet_lite0", head="knn").fit(root, progress=False)
        result = evaluate(model, root, progress=False)
    assert result["image_auroc"] >= 0.99, result
    assert result["pixel_auroc"] >= 0.98, result
