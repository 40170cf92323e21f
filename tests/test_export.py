import numpy as np
import pytest

import vqc
from vqc import VqcError
from vqc.cli import main
from vqc.data import read_split
from vqc.training.evaluation import evaluate
from vqc.engines import EngineSettings
from vqc.engines.onnx import OnnxEngine
from vqc.engines.openvino import OpenVinoEngine
from vqc.training.export import check_batches, export_onnx, parity


@pytest.fixture(scope="module")
def small_train(demo_root):
    return [s.path for s in read_split(demo_root, "train")][:12]


def _check_images(demo_root):
    return [s.path for s in read_split(demo_root, "test")][::5]


@pytest.mark.parametrize("head,options", [
    ("knn", {"coreset": 0.05}),
    ("nf", {"max_epochs": 2, "steps": 4}),
    ("gmm", {"grid": [1, 2], "max_iter": 10}),
])
def test_exported_model_matches_pytorch(head, options, small_train, demo_root, tmp_path):
    model = vqc.AnomalyModel(head=head, head_options=options).fit(small_train, progress=False)
    images = _check_images(demo_root)
    exported = export_onnx(model, tmp_path / f"{head}.onnx", images)
    assert [p.name for p in tmp_path.iterdir()] == [f"{head}.onnx"]  # the graph only: nothing reads a side file
    assert exported["parity"]["score_max_rel_diff"] <= 1e-4
    assert exported["parity"]["map_max_diff_rel_to_scale"] <= 1e-3
    assert exported["input"]["dtype"] == "uint8"
    batch = check_batches(model, images)[0][0]
    reference_maps, reference_scores = OnnxEngine(tmp_path / f"{head}.onnx").run(batch)
    for engine in (OnnxEngine(tmp_path / f"{head}.onnx"), OpenVinoEngine(tmp_path / f"{head}.onnx")):
        for size in (1, 5):  # the batch dimension is dynamic; OpenVINO splits it across its requests
            maps, scores = engine.run(batch[:size])
            assert maps.shape == (size, 1, 224, 224) and scores.shape == (size,)
            np.testing.assert_allclose(scores, reference_scores[:size], rtol=1e-4)
            np.testing.assert_allclose(maps, reference_maps[:size], rtol=0, atol=1e-4 * np.abs(reference_maps).max())


def test_onnx_engine_gives_the_same_auroc_on_the_demo_set(demo_model, demo_root):
    torch_result = evaluate(demo_model, demo_root, progress=False)
    onnx_result = evaluate(demo_model.scorer(EngineSettings("onnx")), demo_root, progress=False)
    assert onnx_result["image_auroc"] == pytest.approx(torch_result["image_auroc"], abs=1e-9)
    assert onnx_result["pixel_auroc"] == pytest.approx(torch_result["pixel_auroc"], abs=1e-4)


def test_parity_check_refuses_a_drifting_model():
    ref = (np.ones((1, 1, 4, 4), np.float32), np.array([2.0], np.float32))
    assert parity(ref, ref)["ok"]
    assert not parity(ref, (ref[0], np.array([2.001], np.float32)))["ok"]
    assert not parity(ref, (ref[0] * 1.01, ref[1]))["ok"]


def test_export_command_and_bad_onnx_file(demo_model, tmp_path, demo_root, capsys):
    path = demo_model.save(tmp_path / "m.safetensors")
    image = next((demo_root / "test" / "crack").glob("*.png"))
    assert main(["export", str(path), "--out", str(tmp_path / "m.onnx"), "--check-images", str(image)]) == 0
    assert "parity on 4 images" in capsys.readouterr().out
    (tmp_path / "junk.onnx").write_bytes(b"nope")
    with pytest.raises(VqcError, match="junk.onnx"):
        OnnxEngine(tmp_path / "junk.onnx")
    with pytest.raises(VqcError, match="junk.onnx"):
        OpenVinoEngine(tmp_path / "junk.onnx")


def test_letterbox_model_exports_with_its_padding_mask(small_train, demo_root, tmp_path):
    model = vqc.AnomalyModel(head="knn", head_options={"coreset": 0.05}, geometry="letterbox").fit(small_train, progress=False)
    images = _check_images(demo_root)
    exported = export_onnx(model, tmp_path / "box.onnx", images)
    assert exported["input"]["geometry"] == "letterbox" and exported["input"]["valid"]
    torch_scores = [p.score for p in model.predict(images)]
    for engine in ("onnx", "openvino"):
        scorer = model.scorer(EngineSettings(engine), tmp_path / "box.onnx")
        engine_scores = [p.score for p in scorer.predict(images)]
        np.testing.assert_allclose(engine_scores, torch_scores, rtol=1e-4, err_msg=engine)
