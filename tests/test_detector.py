import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from vqc.training.detector import GaussianBlur


def test_blur_matches_scipy(rng):
    x = rng.random((1, 1, 40, 50)).astype(np.float32)
    got = GaussianBlur(4.0)(torch.from_numpy(x)).numpy()[0, 0]
    # torch 'reflect' padding is scipy's 'mirror' mode (edge sample not repeated)
    want = gaussian_filter(x[0, 0].astype(np.float64), sigma=4.0, mode="mirror", truncate=4.0)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_blur_keeps_constant_maps_and_tiny_maps():
    out = GaussianBlur(4.0)(torch.full((2, 1, 7, 9), 3.0))
    assert out.shape == (2, 1, 7, 9)
    torch.testing.assert_close(out, torch.full_like(out, 3.0))


@pytest.mark.parametrize("sigma", [4.0, 1.0, 0.0])
@pytest.mark.parametrize("patches,size", [((28, 28), (224, 224)), ((28, 40), (224, 320)), ((3, 2), (24, 16)),
                                          ((1, 1), (8, 8)), ((14, 14), (14, 14))])
def test_upsample_equals_bilinear_resize_then_blur(sigma, patches, size):
    blur = GaussianBlur(sigma).double()
    x = torch.randn(3, 1, *patches, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = blur(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
    torch.testing.assert_close(blur.upsample(x, size), want, rtol=0, atol=1e-12)


def test_reflect_border_makes_the_edges_look_like_the_middle():
    """A uniform image: with the trunk's zero padding its border patches differ from the middle
    ones; mirrored outwards first (border="reflect"), far less. Shapes stay those of zero."""
    from vqc.training.backbones import build_trunk
    from vqc.training.detector import Detector
    trunk, _ = build_trunk("efficientnet_lite0", (2, 3))
    image = torch.full((1, 3, 224, 224), 128, dtype=torch.uint8)
    spread = {}
    for border in ("zero", "reflect"):
        detector = Detector(trunk, torch.nn.Identity(), (0.5,) * 3, (0.25,) * 3, border=border).eval()
        with torch.inference_mode():
            levels = detector.features(image)
        assert [tuple(level.shape[-2:]) for level in levels] == [(28, 28), (14, 14)]
        middle = [level[..., 5:-5, 5:-5].mean((-2, -1), keepdim=True) for level in levels]
        spread[border] = [float((level - m).abs().mean() / m.abs().mean()) for level, m in zip(levels, middle)]
    assert all(r < 0.6 * z for r, z in zip(spread["reflect"], spread["zero"])), spread


def test_reflect_border_model_saves_loads_and_exports_with_parity(demo_root, tmp_path):
    import vqc
    from vqc.data import read_split
    from vqc.training.export import export_onnx
    train = [s.path for s in read_split(demo_root, "train")][:8]
    model = vqc.AnomalyModel(border="reflect").fit(train, progress=False)
    test = [s.path for s in read_split(demo_root, "test")][:4]
    before = [p.score for p in model.predict(test)]
    loaded = vqc.load(model.save(tmp_path / "m.safetensors"))
    assert loaded.config.border == "reflect" and loaded.detector.border_pad == 16
    assert [p.score for p in loaded.predict(test)] == pytest.approx(before, rel=1e-6)
    parity = export_onnx(loaded, tmp_path / "m.onnx", check_images=test)["parity"]
    assert parity["images"] == 7 and parity["score_max_rel_diff"] <= 1e-4  # 4 images, 3 of seeded noise
