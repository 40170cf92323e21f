import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import vqc
from vqc import VqcError
from vqc.training.backbones import build_trunk
from vqc.data import read_split
from vqc.training.detector import Detector
from vqc.geometry import Geometry, assemble, tile_starts


def test_plans_keep_aspect_and_cover_the_image(rng):
    image = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    box = Geometry("letterbox", 224).plan(image)
    assert box.inputs[0].shape == (224, 224, 3) and box.content == [(134, 224)] and box.canvas == (134, 224)
    assert (box.inputs[0][134:] == (124, 116, 104)).all()  # the pad colour below the part
    native = Geometry("native", 224).plan(image)
    assert native.inputs[0].shape == (224, 384, 3)  # short side 224, long side 373 rounded to the stride
    tiles = Geometry("tile", 224, stride=192).plan(image)
    assert tiles.canvas == (300, 500)
    assert sorted({t for t, _ in tiles.offsets}) == [0, 76] and sorted({x for _, x in tiles.offsets}) == [0, 192, 276]
    small = Geometry("tile", 224, stride=192, scale=0.5).plan(image)  # 150 px high: scaled up to one tile
    assert small.canvas == (224, 373)
    assert tile_starts(224, 224, 100) == [0] and tile_starts(500, 224, 224) == [0, 224, 276]
    with pytest.raises(VqcError, match="geometry"):
        Geometry("stretch")


@pytest.mark.parametrize("stride", [100, 192, 224])
def test_stitched_tiles_reproduce_a_map_they_were_cut_from(stride, rng):
    """Blending is a convex combination: tiles cut from one map stitch back to that map."""
    geometry = Geometry("tile", 224, stride=stride)
    plan = geometry.plan(rng.integers(0, 256, (300, 517, 3), dtype=np.uint8))
    whole = rng.random(plan.canvas).astype(np.float32)
    tiles = np.stack([whole[t:t + 224, x:x + 224] for t, x in plan.offsets])[:, None]
    np.testing.assert_allclose(assemble(plan, tiles, overlap=224 - stride), whole, rtol=1e-6)


def test_one_tile_covering_the_image_equals_the_single_pass(demo_root):
    train = [s.path for s in read_split(demo_root, "train")][:10]
    square = np.asarray(Image.open(read_split(demo_root, "test")[0].path).convert("RGB").resize((224, 224)))
    resized = vqc.AnomalyModel(head="knn", head_options={"coreset": 0.05}).fit(train, progress=False)
    tiled = vqc.AnomalyModel(head="knn", head_options={"coreset": 0.05}, geometry="tile").fit(train, progress=False)
    # the training images are not square, so the two models learned from different inputs: share one head
    tiled.detector.head = resized.detector.head
    a, b = resized.predict(square)[0], tiled.predict(square)[0]
    assert a.score == b.score
    np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)


class _MapHead(nn.Module):
    """A stand-in head that returns a fixed patch map."""

    def __init__(self, patch_map):
        super().__init__()
        self.patch_map = patch_map

    def forward(self, levels):
        return self.patch_map.expand(levels[0].shape[0], -1, -1, -1)


def test_letterbox_padding_never_raises_scores(rng):
    trunk, _ = build_trunk("efficientnet_lite0", (2, 3), "random")
    patch_map = torch.from_numpy(rng.random((1, 1, 28, 28)).astype(np.float32))
    valid = torch.zeros(1, 1, 224, 224)
    valid[..., :, :120] = 1  # a part 120 px wide; padding to its right (columns 15+ of the 28 x 28 map)
    images = torch.from_numpy(rng.integers(0, 256, (1, 3, 224, 224), dtype=np.uint8))
    results = []
    for padding_value in (0.0, 1e6):  # whatever the head says about the padding...
        hot = patch_map.clone()
        hot[..., 16:] = padding_value
        detector = Detector(trunk, _MapHead(hot), (0.5,) * 3, (0.25,) * 3).eval()
        with torch.no_grad():
            results.append(detector(images, valid))
    (maps_cold, score_cold), (maps_hot, score_hot) = results
    assert score_hot.item() == score_cold.item() < 1.0  # ...the score cannot see it
    torch.testing.assert_close(maps_hot[..., :120], maps_cold[..., :120])  # nor can the part's map
    assert maps_hot[..., 120:].abs().max() == 0


def test_letterbox_and_native_models_return_maps_at_the_original_size(demo_root, tmp_path):
    train = [s.path for s in read_split(demo_root, "train")][:10]
    image = read_split(demo_root, "test")[0].path
    shape = np.asarray(Image.open(image)).shape[:2]
    assert shape[0] != shape[1]
    for geometry in ("letterbox", "native"):
        model = vqc.AnomalyModel(head="knn", head_options={"coreset": 0.05}, geometry=geometry).fit(train, progress=False)
        pred = model.predict(image)[0]
        assert pred.anomaly_map.shape == shape
        assert pred.score == pytest.approx(float(pred.anomaly_map.max()), rel=0.05)  # max on the canvas
        loaded = vqc.load(model.save(tmp_path / f"{geometry}.safetensors"))
        assert loaded.config.geometry == geometry and loaded.predict(image)[0].score == pred.score


def test_fixed_size_backbones_refuse_native_input():
    with pytest.raises(VqcError, match="224 x 224 inputs only"):
        vqc.AnomalyModel(backbone="deit_base_distilled_patch16_224", geometry="native", weights="random")


@pytest.mark.parametrize("size", [(224, 224), (100, 300), (500, 400)])
def test_resize_follows_pillow_bilinear(size, demo_root):
    from vqc.data import decode_image
    from vqc.geometry import resize
    image = decode_image(read_split(demo_root, "test")[0].path)
    h, w = size
    want = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    got = resize(image, h, w)
    assert got.shape == (h, w, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)  # shrinking by under 3x: no reducing step, Pillow's bilinear as it is


def test_to_original_is_torch_bilinear_and_jet_is_matplotlib_jet(rng):
    """The torch-free map upsampling and colour table against the libraries they replace on a line PC."""
    import torch.nn.functional as F
    from matplotlib import colormaps

    from vqc.geometry import Plan, to_original
    from vqc.viz import _jet
    for (h, w), (height, width) in [((224, 224), (1100, 900)), ((134, 224), (300, 500)), ((224, 224), (100, 77))]:
        canvas = rng.random((h, w), dtype=np.float32) * 50
        want = F.interpolate(torch.from_numpy(canvas)[None, None], size=(height, width), mode="bilinear",
                             align_corners=False)[0, 0].numpy()
        got = to_original(Plan([], [], [], (h, w), (height, width)), canvas)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(_jet(), colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255, atol=1e-3)


def test_native_at_the_images_own_scale():
    """native with size 0: no rescaling, each side only rounded to the coarsest stride; other
    geometries refuse size 0; the decode bound is the own-scale one."""
    from vqc.data import OWN_SCALE_MAX_PIXELS, default_max_pixels
    from vqc.errors import VqcError
    from vqc.geometry import Geometry
    image = np.zeros((200, 512, 3), np.uint8)
    plan = Geometry("native", 0).plan(image)
    assert plan.inputs[0].shape == (192, 512, 3) and plan.original == (200, 512)
    assert Geometry("native", 224).plan(image).inputs[0].shape == (224, 576, 3)  # the short side to 224
    with pytest.raises(VqcError, match="image size must be positive"):
        Geometry("resize", 0)
    assert default_max_pixels(0) == OWN_SCALE_MAX_PIXELS < default_max_pixels(224)
