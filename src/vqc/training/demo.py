"""`vqc demo`: fit, evaluate and draw heat maps on the magnetic-tile subset shipped with vqc."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from ..data import decode_image, load_mask
from .evaluation import evaluate
from .model import AnomalyModel
from ..viz import prediction_overlay, save_png


def demo_data() -> Path:
    return Path(str(files("vqc") / "demo_data" / "magnetic_tile"))


def run_demo(out: Path, print_metrics) -> dict:
    data = demo_data()
    print(f"demo data: {data} (magnetic tile subset, Huang et al. 2020)")
    model = AnomalyModel(backbone="efficientnet_lite0", head="knn").fit(data)
    print(f"fitted efficientnet_lite0 + knn on {model.info['n_train']} good images in "
          f"{model.info['fit_seconds']:.1f} s (weights {model.info['weights_source']})")
    model_path = model.save(out / "model.safetensors")
    result = evaluate(model, data, keep_predictions=True)
    print_metrics(result, "demo: magnetic tile subset, efficientnet_lite0 + knn")
    floor, top = model.normal_range()
    for sample, pred in result.pop("predictions"):
        image = decode_image(sample.path)
        mask = load_mask(sample.mask, image.shape[:2]) if sample.mask else None
        save_png(out / "overlays" / f"{sample.defect}_{sample.path.stem}.png",
                 prediction_overlay(image, pred, floor, top, mask))
    print(f"model: {model_path}\noverlays: {out / 'overlays'} ({result['n_images']} images; "
          f"green outlines are the ground truth)")
    return result
