"""The names and defaults the command line offers, in a module that imports nothing, so
`vqc --help` needs no torch. The registries they name (vqc.training.heads.HEADS, vqc.geometry.MODES) are checked against
these in the tests."""

HEADS = ("knn", "nf", "gmm", "mdn", "ae")
GEOMETRIES = ("resize", "letterbox", "native", "tile")
BORDERS = ("zero", "reflect")  # how the trunk sees past the image edge (vqc.training.detector)
ENGINES = ("auto", "torch", "onnx", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16")
AUTO_BUDGET_S = 600.0  # `vqc fit --auto`: seconds for trying candidates (about 10 minutes for bottle on 2 cores)
