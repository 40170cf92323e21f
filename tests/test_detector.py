import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from vqc.detector import GaussianBlur


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
