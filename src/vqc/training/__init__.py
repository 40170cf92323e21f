"""The training part: backbones, heads, the torch Detector and AnomalyModel, fitting, evaluation,
export, benchmark, speed and Ray. Everything here needs the training stack (pip install "vqc-inspect[train]");
nothing outside this folder imports it at module level (tests/test_runtime.py).
"""
