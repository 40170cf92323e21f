import numpy as np
import pytest

import vqc
from vqc import VqcError
from vqc.cli import main
from vqc.data import read_split
from vqc.training.metrics import cost_threshold, f1_max
from vqc.training.thresholds import choose_threshold, parse_policy


def test_fit_stores_a_false_reject_threshold_from_every_good_image_left_out_in_turn(demo_model):
    t = demo_model.threshold
    assert t["policy"] == "false-reject-rate=0.01" and t["n_images"] == 60
    assert "leave-one-out" in t["validated_on"]
    # at most 1 % of 60 good images may be rejected: none, so above the largest
    assert t["value"] > max(demo_model.info["normal_scores"])


def test_heads_without_leave_one_out_hold_good_images_out(demo_root):
    images = [s.path for s in read_split(demo_root, "train")][:20]
    model = vqc.AnomalyModel(leave_one_out=False, head_options={"coreset": 0.05}).fit(images, progress=False)
    assert (model.info["n_train"], model.info["n_validation"], model.threshold["n_images"]) == (18, 2, 2)
    assert model.threshold["validated_on"] == "held-out good training images"


def test_cost_and_f1_policies_on_labelled_data(demo_model, demo_root):
    samples = read_split(demo_root, "test")
    labels = np.array([s.label for s in samples])
    scores = np.array([p.score for p in demo_model.predict([s.path for s in samples])])
    cost = choose_threshold(demo_model, "cost", demo_root, fp_cost=1, fn_cost=20)
    assert cost["value"] == cost_threshold(labels, scores, 1, 20)["threshold"]
    assert cost["expected_cost_per_1000"] >= 0 and cost["n_images"] == 42
    f1 = choose_threshold(demo_model, "f1", demo_root)
    assert f1["value"] == f1_max(labels, scores)[1]
    with pytest.raises(VqcError, match="needs labelled validation data"):
        choose_threshold(demo_model, "cost")
    with pytest.raises(VqcError, match="unknown threshold policy"):
        parse_policy("youden")
    with pytest.raises(VqcError, match="rate in"):
        parse_policy("false-reject-rate=2")


def test_threshold_command_stores_policy_and_predict_uses_it(demo_root, tmp_path, capsys):
    images = [s.path for s in read_split(demo_root, "train")][:15]
    model = vqc.AnomalyModel(head_options={"coreset": 0.05}).fit(images, progress=False)
    path = model.save(tmp_path / "m.safetensors")
    assert main(["threshold", str(path), "--policy", "cost", "--data", str(demo_root), "--fn-cost", "5"]) == 0
    stored = vqc.load(path).threshold
    assert stored["policy"] == "cost" and stored["fn_cost"] == 5
    test = read_split(demo_root, "test")[:4]
    assert main(["predict", str(path), *[str(s.path) for s in test], "--out", str(tmp_path / "p"), "--no-overlays"]) == 0
    rows = (tmp_path / "p" / "scores.csv").read_text().splitlines()[1:]
    # The CSV rounds scores to 6 digits, and a threshold is one of the scores it was chosen on: the
    # verdicts are checked against the same engine's full-precision scores, not the printed ones.
    predictions = vqc.load(path).use_engine("auto").predict([s.path for s in test])
    assert [row.split(",")[3] for row in rows] == [p.verdict for p in predictions]
    for row, p in zip(rows, predictions):
        assert p.verdict == ("defective" if p.score >= stored["value"] else "ok")
        assert row.split(",")[1] == f"{p.score:.6g}"


def test_a_threshold_on_few_good_images_says_so_and_evaluate_reports_the_rate_it_gives(demo_model, demo_root):
    """Issue 21, item 5: the demo's threshold rests on 60 good images; a 1 % false-reject rate
    cannot be measured on them, and the rate on good parts the fit never saw is reported."""
    import numpy as np

    from vqc.training.evaluation import evaluate
    from vqc.training.thresholds import choose_threshold, few_images_warning
    chosen = choose_threshold(demo_model, "false-reject-rate=0.01")
    assert chosen["n_images"] == 60 and "rests on 60 good images" in chosen["warning"]
    assert few_images_warning(100, 0.01) == {} and few_images_warning(19, 0.1) != {}
    saved = demo_model.threshold
    demo_model.threshold = chosen
    try:
        result = evaluate(demo_model, demo_root, progress=False, keep_predictions=True)
    finally:
        demo_model.threshold = saved
    labels = np.array([s.label for s, _ in result["predictions"]])
    scores = np.array([p.score for _, p in result["predictions"]])
    verdict = result["at_threshold"]
    assert verdict["n_good"] == int((labels == 0).sum())
    assert verdict["false_reject_rate"] == np.mean(scores[labels == 0] >= chosen["value"])
    assert verdict["miss_rate"] == np.mean(scores[labels == 1] < chosen["value"])
