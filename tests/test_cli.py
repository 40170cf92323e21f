import csv
from pathlib import Path
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from vqc.cli import main
from vqc.viz import picture_size


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, demo_root):
    out = tmp_path_factory.mktemp("cli") / "model.safetensors"
    assert main(["fit", str(demo_root), "--coreset", "0.05", "--out", str(out)]) == 0
    return out


def test_fit_predict_evaluate(fitted, demo_root, tmp_path, capsys):
    images = sorted((demo_root / "test" / "crack").glob("*.png"))[:2]
    assert main(["predict", str(fitted), *map(str, images), "--out", str(tmp_path / "p")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p" / "scores.csv")))
    assert [r["path"] for r in rows] == [str(p) for p in images]
    assert all(float(r["score"]) > 0 for r in rows)
    assert sorted(p.name for p in (tmp_path / "p" / "overlays").iterdir()) == sorted(p.name for p in images)
    assert [r["overlay"] for r in rows] == [f"overlays/{p.name}" for p in images]
    overlay = Image.open(tmp_path / "p" / "overlays" / images[0].name)
    width, height = Image.open(images[0]).size
    assert overlay.size == picture_size(width, height)  # the colour legend beneath the image
    verdicts = [r["verdict"] for r in rows]
    assert f"scored 2 images ({verdicts.count('defective')} defective, {verdicts.count('ok')} ok) -> " in \
        capsys.readouterr().out

    assert main(["evaluate", str(fitted), str(demo_root), "--json", str(tmp_path / "m.json"), "--record"]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    import vqc
    assert vqc.load(fitted).info["evaluation"]["image_auroc"] == metrics["image_auroc"]
    assert {"image_auroc", "image_ap", "pixel_auroc", "n_images"} <= set(metrics)
    assert metrics["n_images"] == 42 and metrics["image_auroc"] > 0.7
    assert "image AUROC" in capsys.readouterr().out


def test_errors_are_one_line_and_name_the_file(fitted, demo_root, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["predict", str(fitted), str(bad), "--out", str(tmp_path / "p")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("vqc: error:") and "bad.png" in errors[0]
    assert not (tmp_path / "p" / "scores.csv").exists()  # nothing half-written

    data = tmp_path / "data"
    shutil.copytree(demo_root / "train", data / "train")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(data / "train" / "good" / "zz.png")
    (data / "train" / "good" / "zz.png").write_bytes(b"GIF89a broken")
    assert main(["fit", str(data), "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "zz.png" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()

    assert main(["evaluate", str(tmp_path / "missing.safetensors"), str(demo_root)]) == 2
    assert "missing.safetensors does not exist" in capsys.readouterr().err


def test_backbones_lists_all(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    for name in ("deit_base_distilled", "efficientformer_l1", "swin_tiny", "wide_resnet50_2", "efficientnet_lite2"):
        assert name in out
    assert "pypi:efficientnet-lite0" in out


def test_watch_scores_each_new_image_once_and_skips_bad_files(fitted, demo_root, tmp_path, capsys):
    import shutil
    from vqc.engines import EngineSettings
    from vqc.live import JudgeOptions, open_judge
    from vqc.scorefiles import ScoreWriter, watch_folder
    drop = tmp_path / "camera"
    drop.mkdir()
    images = sorted((demo_root / "test" / "good").glob("*.png"))[:2]
    for image in images:
        shutil.copy(image, drop / image.name)
    (drop / "broken.png").write_bytes(b"\x89PNG half a file")
    judge = open_judge(Path(fitted), JudgeOptions(EngineSettings("torch")))
    writer = ScoreWriter(tmp_path / "out" / "scores.csv", judge, drop, overlays=False)
    watch_folder(drop, writer, interval=0.01, rounds=5)  # five looks at the folder
    writer.close()
    rows = list(csv.DictReader(open(tmp_path / "out" / "scores.csv")))
    assert sorted(Path(r["path"]).name for r in rows) == [i.name for i in images]  # once each, not the bad one
    assert "broken.png" in capsys.readouterr().err


def test_preset_sets_size_and_geometry_and_explicit_options_win(demo_root, tmp_path):
    import vqc
    from vqc.choices import PRESETS
    out = tmp_path / "balanced.safetensors"
    assert main(["fit", str(demo_root), "--preset", "balanced", "--geometry", "letterbox", "--coreset", "0.02",
                 "--out", str(out)]) == 0
    config = vqc.load(out).config
    assert config.image_size == PRESETS["balanced"]["image_size"] == 320  # from the preset
    assert config.geometry == "letterbox"  # given explicitly: wins over the preset's resize
    with pytest.raises(SystemExit):
        main(["fit", str(demo_root), "--preset", "quickest"])
