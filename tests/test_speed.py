import json

import numpy as np
import pytest
import torch

import vqc
from vqc.cli import main
from vqc.data import read_split
from vqc.engines import EngineSettings
from vqc.training.evaluation import evaluate
from vqc.training.export import model_digest
from vqc.training.torch_engine import TorchEngine

from .conftest import shared_set


def _cpu_has_bf16() -> bool:
    import openvino
    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


BF16 = ("bf16",) if _cpu_has_bf16() else ()  # OpenVINO's bf16 needs AMX or AVX-512 BF16 units
needs_bf16 = pytest.mark.skipif(not BF16, reason="this CPU has no bfloat16 units for OpenVINO's bf16")


def _images(root, every=4):
    return [s.path for s in read_split(root, "test")][::every]


def test_auto_engine_is_onnx_on_a_cpu_exported_once_and_cached(demo_model, demo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("VQC_CACHE_DIR", str(tmp_path))
    onnx_cache = tmp_path
    images = _images(demo_root)
    reference = [p.score for p in demo_model.predict(images)]
    scorer = demo_model.scorer(EngineSettings("auto"))
    assert scorer.engine_name == "onnx"
    [graph] = (onnx_cache / "onnx").glob(f"{model_digest(demo_model)}.onnx")
    stamp = graph.stat().st_mtime_ns
    scores = [p.score for p in scorer.predict(images)]
    demo_model.scorer(EngineSettings("auto"))  # again: from the cache, not exported a second time
    assert graph.stat().st_mtime_ns == stamp and len(list((onnx_cache / "onnx").glob("*.onnx"))) == 1
    np.testing.assert_allclose(scores, reference, rtol=1e-4)


def test_the_cache_key_follows_the_tensors_and_the_config(demo_model):
    before = model_digest(demo_model)
    bank = demo_model.detector.head.bank
    try:
        bank[0, 0] += 1
        assert model_digest(demo_model) != before
    finally:
        bank[0, 0] -= 1
    assert model_digest(demo_model) == before


def test_prefetched_chunks_keep_the_order_of_the_images(demo_model, demo_root):
    images = _images(demo_root, every=3)
    one_by_one = [demo_model.predict(image)[0].score for image in images]
    batch_size = demo_model.batch_size
    demo_model.batch_size = 3  # several chunks, decoded ahead of the model
    try:
        chunked = [p.score for p in demo_model.predict(images)]
    finally:
        demo_model.batch_size = batch_size
    np.testing.assert_allclose(chunked, one_by_one, rtol=1e-5)


@pytest.mark.parametrize("head,options", [("knn", {}), ("nf", {"max_epochs": 3})])
def test_the_fast_cpu_engine_keeps_auroc_on_bottle(head, options, request):
    bottle = shared_set("mvtec_bottle")
    if head == "knn":  # the default model, shared with the acceptance test (a session fixture)
        model, reference = request.getfixturevalue("bottle_knn")
    else:
        model = vqc.AnomalyModel(head=head, head_options=options).fit(bottle, progress=False)
        reference = evaluate(model, bottle, progress=False)
    for engine, precision, name in (("auto", "fp32", "onnx"), ("openvino", "fp32", "openvino"),
                                    *(("auto", p, "openvino-bf16") for p in BF16)):
        scorer = model.scorer(EngineSettings(engine, precision=precision))
        assert scorer.engine_name == name
        fast = evaluate(scorer, bottle, progress=False)
        assert abs(fast["image_auroc"] - reference["image_auroc"]) <= 0.002, name
        if head == "nf" and precision == "bf16":
            # Not claimed: the flows turn bf16's feature rounding into visibly different maps.
            # Fully trained (60 epochs), nf's pixel AUROC on bottle falls from 0.966 to 0.943
            # in bf16 (README, Speed); a 3-epoch flow here would not show it.
            continue
        assert abs(fast["pixel_auroc"] - reference["pixel_auroc"]) <= 0.002, name


def test_speed_benchmark_reports_every_figure(demo_root, tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert main(["benchmark", "--speed", "--data", str(demo_root), "--heads", "knn", "--engines", "torch",
                 "--batches", "2,4", "--end-to-end-images", "24", "--json", str(out)]) == 0
    [record] = json.loads(out.read_text())["records"]
    assert record["status"] == "ok" and record["engine_used"] == "torch"
    for key in ("latency_ms", "latency_p99_ms", "images_per_second_b2", "images_per_second_b4",
                "decode_ms_per_image", "end_to_end_images_per_second", "peak_memory_mb"):
        assert record[key] > 0, key
    assert record["latency_ms"] <= record["latency_p99_ms"]
    assert 0 < record["head_share"] < 1
    assert "| efficientnet_lite0 + knn | torch | cpu |" in capsys.readouterr().out


def test_fp16_backbone_keeps_scores_within_1e_2_and_the_same_auroc(demo_model, demo_root):
    reference = evaluate(demo_model, demo_root, progress=False)
    ref_scores = [p.score for p in demo_model.predict(_images(demo_root))]
    scorer = demo_model.scorer(EngineSettings("torch", precision="fp16"))
    assert scorer.engine.trunk_dtype is torch.float16
    scores = [p.score for p in scorer.predict(_images(demo_root))]
    reduced = evaluate(scorer, demo_root, progress=False)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-2)
    # the same ranking but for at most one near-tied pair of images (the demo set has such pairs)
    pairs = (reference["n_images"] - reference["n_defective"]) * reference["n_defective"]
    assert reduced["image_auroc"] == pytest.approx(reference["image_auroc"], abs=1.01 / pairs)


@needs_bf16
def test_bf16_openvino_keeps_scores_within_2e_2(demo_model, demo_root):
    """bf16 keeps 8 bits of mantissa through the whole graph (the search and the flows included):
    scores move by about 1 %. Whether rankings hold is a property of the data, checked on bottle
    in test_the_fast_cpu_engine_keeps_auroc_on_bottle (the demo set's near-ties can swap)."""
    ref_scores = [p.score for p in demo_model.predict(_images(demo_root))]
    scorer = demo_model.scorer(EngineSettings("auto", precision="bf16"))
    assert scorer.engine_name == "openvino-bf16"
    scores = [p.score for p in scorer.predict(_images(demo_root))]
    single = scorer.predict(_images(demo_root)[0])[0].score  # batch 1: the latency-mode compilation
    np.testing.assert_allclose(scores, ref_scores, rtol=2e-2)
    assert single == pytest.approx(scores[0], rel=1e-3)
    assert not np.allclose(scores, ref_scores, rtol=1e-5)  # it did run in reduced precision


def test_precisions_an_engine_cannot_run_are_refused():
    with pytest.raises(vqc.VqcError, match="fp32 graph"):
        EngineSettings("onnx", precision="bf16")
    with pytest.raises(vqc.VqcError, match="openvino engine runs fp32 or bf16"):
        EngineSettings("openvino", precision="fp16")
    with pytest.raises(vqc.VqcError, match="precision"):
        EngineSettings("torch", precision="int4")


def test_auto_falls_back_to_torch_at_the_same_precision_and_forced_engines_raise(demo_model, demo_root, monkeypatch,
                                                                                caplog):
    import vqc.training.export

    def export_fails(model):
        raise vqc.VqcError("export failed (forced by the test)")

    monkeypatch.setattr(vqc.training.export, "cached_onnx", export_fails)
    image = _images(demo_root)[0]
    reference = demo_model.predict(image)[0].score
    scorer = demo_model.scorer(EngineSettings("auto"))
    assert (scorer.engine_name, type(scorer.engine), scorer.engine.trunk_dtype) == ("torch", TorchEngine, None)
    assert "scoring with PyTorch: export failed" in caplog.text
    assert scorer.predict(image)[0].score == pytest.approx(reference, rel=1e-6)
    scorer = demo_model.scorer(EngineSettings("auto", precision="bf16"))  # OpenVINO's route; torch keeps the bf16
    assert (scorer.engine_name, scorer.engine.trunk_dtype) == ("torch", torch.bfloat16)
    for forced in ("onnx", "openvino"):
        with pytest.raises(vqc.VqcError, match="export failed"):
            demo_model.scorer(EngineSettings(forced))
