"""The names and defaults the command line offers, in a module that imports nothing, so
`vqc --help` needs no torch. The registries they name (vqc.training.heads.HEADS, vqc.geometry.MODES) are checked against
these in the tests."""

HEADS = ("knn", "nf", "gmm", "mdn", "ae")
GEOMETRIES = ("resize", "letterbox", "native", "tile")
BORDERS = ("zero", "reflect")  # how the trunk sees past the image edge (vqc.training.detector)
ENGINES = ("auto", "torch", "onnx", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16")
# `vqc fit --preset`: named input sizes and geometries, measured in the README's Quality section.
# fast is the default: what keeps 100 images/s end to end. The others enlarge small images so the
# patch grid is finer than the defects (bottle's and tire's 256-pixel images are upsampled).
PRESETS = {
    "fast": {"image_size": 224, "geometry": "resize"},
    "balanced": {"image_size": 320, "geometry": "resize"},
    "best": {"image_size": 448, "geometry": "letterbox"},
}
DEFAULT_PRESET = "fast"
AUTO_BUDGET_S = 600.0  # `vqc fit --auto`: seconds for trying candidates (about 10 minutes for bottle on 2 cores)
