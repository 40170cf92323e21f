"""The names the command line offers, in a module that imports nothing, so `vqc --help` needs
no torch. The registries they name (vqc.heads.HEADS, vqc.geometry.MODES) are checked against
these in the tests."""

HEADS = ("knn", "nf", "gmm", "mdn", "ae")
GEOMETRIES = ("resize", "letterbox", "native", "tile")
ENGINES = ("auto", "torch", "onnx", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16")
