import csv

import numpy as np
import pytest
from PIL import Image

from vqc import VqcError
from vqc.data import decode_image, detect_layout, list_images, load_mask, read_split


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def test_demo_set_reads_as_mvtec(demo_root):
    assert detect_layout(demo_root) == "mvtec"
    train, test = read_split(demo_root, "train"), read_split(demo_root, "test")
    assert len(train) == 60 and all(s.label == 0 for s in train)
    assert len(test) == 42 and sum(s.label for s in test) == 30
    defective = [s for s in test if s.label]
    assert {s.defect for s in defective} == {"blowhole", "break", "crack", "fray", "uneven"}
    assert all(s.mask.name == f"{s.path.stem}_mask.png" for s in defective)


def test_btad_layout_with_bmp_masks(tmp_path):
    img = np.full((40, 60, 3), 100, np.uint8)
    _png(tmp_path / "train/ok/0000.bmp", img)
    _png(tmp_path / "test/ok/0001.bmp", img)
    _png(tmp_path / "test/ko/0002.bmp", img)
    _png(tmp_path / "ground_truth/ko/0002.png", np.zeros((40, 60), np.uint8))
    assert detect_layout(tmp_path) == "btad"
    test = read_split(tmp_path, "test")
    assert [(s.path.name, s.label, s.mask and s.mask.name) for s in test] == [
        ("0002.bmp", 1, "0002.png"), ("0001.bmp", 0, None)]


def test_visa_layout_from_split_csv(tmp_path):
    root = tmp_path / "candle"
    img = np.zeros((30, 30, 3), np.uint8)
    _png(root / "Data/Images/Normal/000.JPG".replace(".JPG", ".png"), img)
    _png(root / "Data/Images/Anomaly/001.png", img)
    _png(root / "Data/Masks/Anomaly/001.png", np.zeros((30, 30), np.uint8))
    (tmp_path / "split_csv").mkdir()
    with open(tmp_path / "split_csv/1cls.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerow(["candle", "train", "normal", "candle/Data/Images/Normal/000.png", ""])
        w.writerow(["candle", "test", "anomaly", "candle/Data/Images/Anomaly/001.png", "candle/Data/Masks/Anomaly/001.png"])
        w.writerow(["capsules", "test", "normal", "capsules/x.png", ""])
    assert detect_layout(root) == "visa"
    assert [s.path.name for s in read_split(root, "train")] == ["000.png"]
    (anomaly,) = read_split(root, "test")
    assert anomaly.label == 1 and anomaly.mask.name == "001.png"


def test_decode_grayscale_rgba_and_16_bit(tmp_path):
    gray = _png(tmp_path / "g.png", np.tile(np.arange(16, dtype=np.uint8) * 15, (18, 1)))
    assert decode_image(gray).shape == (18, 16, 3)
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    out = decode_image(_png(tmp_path / "a.png", rgba, "RGBA"))
    assert out.shape == (16, 16, 3) and (out[..., 0] == 200).all()
    deep = tmp_path / "d.png"
    Image.fromarray(np.tile(np.array([[0, 65535], [32896, 257]], np.uint16), (8, 8))).save(deep)
    assert decode_image(deep)[:2, :2, 0].tolist() == [[0, 255], [128, 1]]


def test_corrupt_and_truncated_images_name_the_file(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    with pytest.raises(VqcError, match="junk.png"):
        decode_image(tmp_path / "junk.png")
    good = _png(tmp_path / "full.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:400])
    with pytest.raises(VqcError, match=r"cannot read image .*cut.png"):
        decode_image(tmp_path / "cut.png")
    with pytest.raises(VqcError, match="upload"):
        decode_image(b"\x89PNG garbage")


def test_masks_resized_nearest(tmp_path):
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 255
    out = load_mask(_png(tmp_path / "m.png", mask), (8, 8))
    assert out.dtype == bool and out.sum() == 16 and out[:4, :4].all()


def test_mask_without_image_is_an_error(tmp_path):
    _png(tmp_path / "train/good/a.png", np.zeros((8, 8, 3), np.uint8))
    _png(tmp_path / "test/crack/b.png", np.zeros((8, 8, 3), np.uint8))
    _png(tmp_path / "ground_truth/crack/c_mask.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(VqcError, match=r"mask .*c_mask.png has no image"):
        read_split(tmp_path, "test")


def test_empty_folders_are_errors(tmp_path):
    (tmp_path / "train/good").mkdir(parents=True)
    with pytest.raises(VqcError, match="no images found"):
        read_split(tmp_path, "train")
    with pytest.raises(VqcError, match="no images found"):
        list_images([tmp_path / "train"])
    with pytest.raises(VqcError, match="does not exist"):
        read_split(tmp_path / "nowhere", "train")
