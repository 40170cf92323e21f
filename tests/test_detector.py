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
