import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vqc.training import metrics
from vqc.training.metrics import (aupro, auroc, average_precision, cost_threshold, f1_max,
                         false_reject_threshold, pixel_auroc, pointing, pointing_hits, pro_curve)


def test_auroc_hand_computed():
    # pairs (defect, good) ranked right: (0.8>0.1) (0.8>0.4) (0.35<0.4) (0.35>0.1) -> 3 of 4
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half


def test_average_precision_hand_computed():
    # ranked: 0.8 (defect, P=1, R=.5), 0.4 (good), 0.35 (defect, P=2/3, R=1): AP = .5*1 + .5*2/3
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.5 + 1 / 3)


def test_single_class_is_undefined_not_a_crash():
    assert math.isnan(auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))


# --------------------------------------------------------------------------- naive references

def label8(mask):
    """8-connected components by flood fill, independent of scipy."""
    labels, n = np.zeros(mask.shape, int), 0
    for seed in zip(*np.nonzero(mask)):
        if labels[seed]:
            continue
        n += 1
        labels[seed], stack = n, [seed]
        while stack:
            i, j = stack.pop()
            for a in range(max(i - 1, 0), min(i + 2, mask.shape[0])):
                for b in range(max(j - 1, 0), min(j + 2, mask.shape[1])):
                    if mask[a, b] and not labels[a, b]:
                        labels[a, b] = n
                        stack.append((a, b))
    return labels, n


def naive_pro_curve(masks, maps):
    """(fpr, pro) straight from the definition, one point per distinct score, after (0, 0)."""
    scores = np.concatenate([m.ravel() for m in maps])
    good = np.concatenate([~m.ravel() for m in masks])
    regions, offset = [], 0  # one boolean over all pixels per region
    for mask in masks:
        labels, n = label8(mask)
        for r in range(1, n + 1):
            region = np.zeros(scores.size, bool)
            region[offset:offset + mask.size] = (labels == r).ravel()
            regions.append(region)
        offset += mask.size
    fpr, pro = [0.0], [0.0]
    for t in np.unique(scores)[::-1]:
        above = scores >= t
        fpr.append(above[good].mean())
        pro.append(np.mean([above[region].mean() for region in regions]))
    return np.array(fpr), np.array(pro)


def naive_aupro(masks, maps, limit=0.3):
    fpr, pro = naive_pro_curve(masks, maps)
    keep = fpr <= limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < limit:  # add the interpolated point at the limit
        k = np.argmax(fpr > limit)
        x = np.append(x, limit)
        y = np.append(y, pro[k - 1] + (pro[k] - pro[k - 1]) * (limit - fpr[k - 1]) / (fpr[k] - fpr[k - 1]))
    return np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / limit


def random_case(rng, decimals=1):
    """1-3 images of random sizes: defect-free, rectangles, or scattered pixels (diagonal contacts);
    scores rounded for many ties, defects a bit higher; float32 or float64 per image."""
    masks, maps = [], []
    for _ in range(rng.integers(1, 4)):
        h, w = rng.integers(3, 12, size=2)
        mask = np.zeros((h, w), bool)
        kind = rng.integers(3)
        for _ in range(rng.integers(1, 3) if kind else 0):
            top, left = rng.integers(h), rng.integers(w)
            mask[top:top + rng.integers(1, 4), left:left + rng.integers(1, 5)] = True
        if kind == 2:
            mask |= rng.random((h, w)) < 0.15
        masks.append(mask)
        maps.append(np.round(rng.random((h, w)) + 0.4 * mask, decimals).astype(rng.choice([np.float32, np.float64])))
    masks[0][0, 0], masks[0][-1, -1] = True, False  # at least one region and one defect-free pixel
    return masks, maps


@pytest.fixture(params=[1, 7, 1 << 20], ids=["chunk1", "chunk7", "chunk_default"])
def chunk(request, monkeypatch):
    """Walk the sorted pixels in tiny chunks too, so tie groups span chunk boundaries."""
    monkeypatch.setattr(metrics, "_CHUNK", request.param)


# --------------------------------------------------------------------------- AUPRO, hand computed

def test_aupro_single_region():
    # pixels: good 0.1, good 0.5, region 0.9, region 0.3, good 0.2 (3 good, 1 region of 2 pixels)
    # t=.9: (fpr 0, pro 1/2)  t=.5: (1/3, 1/2)  t=.3: (1/3, 1)  t=.2: (2/3, 1)  t=.1: (1, 1)
    masks = [np.array([[False, False, True, True, False]])]
    maps = [np.array([[0.1, 0.5, 0.9, 0.3, 0.2]])]
    fpr, pro = pro_curve(masks, maps)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 1, 1, 1])
    # up to 0.3 the curve is flat at 1/2 after the jump at fpr 0: area .3 * .5, normalised .5
    assert aupro(masks, maps) == pytest.approx(0.5)
    # whole curve: 1/3 * 1/2 + 2/3 * 1 = 5/6
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(5 / 6)


def test_aupro_regions_weigh_equally_whatever_their_size():
    # 3x4 image: region A = 1 pixel (score .9), region B = 3 pixels (.8, .4, .4);
    # 8 good pixels: one at .6, seven at 0.
    # t=.9: pro (1 + 0)/2 = 1/2   t=.8: (1 + 1/3)/2 = 2/3   t=.6: fpr 1/8   t=.4: pro 1   t=0: fpr 1
    # area to .3: 1/8 * 2/3 + (.3 - 1/8) * 1 = 31/120, normalised 31/36
    # (pixel-weighted overlap would give 2/4 at t=.8 instead of 2/3)
    mask = np.zeros((3, 4), bool)
    mask[0, 0] = True
    mask[2, 1:] = True
    amap = np.zeros((3, 4))
    amap[0, 0], amap[2, 1:], amap[1, 2] = 0.9, [0.8, 0.4, 0.4], 0.6
    assert aupro([mask], [amap]) == pytest.approx(31 / 36)


def test_aupro_tied_scores_switch_together_and_the_limit_interpolates():
    # region pixel and a good pixel tie at .5; the other good pixel scores .1
    # t=.5: (fpr 1/2, pro 1) in one step, t=.1: (1, 1). The segment (0,0)-(1/2,1) crosses .3 at
    # pro .6: area .3 * .6 / 2 = .09, normalised .3. (Region first would give 1, good first 0.)
    masks = [np.array([[True, False, False]])]
    maps = [np.array([[0.5, 0.5, 0.1]])]
    assert aupro(masks, maps) == pytest.approx(0.3)
    np.testing.assert_allclose(pro_curve(masks, maps)[0], [0, 0.5, 1])
    # -0.0 == 0.0 is a tie too: one step to (1, 1), area .3 * .3 / 2, normalised .15
    masks, maps = [np.array([[True, False]])], [np.array([[0.0, -0.0]], np.float32)]
    assert aupro(masks, maps) == pytest.approx(0.15)
    assert pixel_auroc(masks, maps) == 0.5


def test_aupro_regions_are_8_connected():
    # defect pixels (0,0) (0,1) (1,2): one region of 3 through the diagonal contact (4-connectivity
    # would give two regions, of 2 and 1). Scores: (1,2) .9, the other two .5; good pixels: one .7, five 0.
    # t=.9: (0, 1/3)  t=.7: (1/6, 1/3)  t=.5: (1/6, 1)  t=0: (1, 1)
    # area to .3: 1/6 * 1/3 + (.3 - 1/6) * 1 = 17/90, normalised 17/27 (4-connected: 13/18)
    mask = np.zeros((3, 3), bool)
    mask[0, 0] = mask[0, 1] = mask[1, 2] = True
    amap = np.zeros((3, 3))
    amap[0, 0] = amap[0, 1] = 0.5
    amap[1, 2], amap[2, 0] = 0.9, 0.7
    assert aupro([mask], [amap]) == pytest.approx(17 / 27)


def test_no_defects_is_undefined():
    masks = [np.zeros((4, 4), bool)] * 2
    maps = [np.random.default_rng(0).random((4, 4)) for _ in range(2)]
    assert math.isnan(aupro(masks, maps))
    assert math.isnan(pixel_auroc(masks, maps))
    with pytest.raises(ValueError):
        pro_curve(masks, maps)


def test_bad_inputs_are_rejected():
    mask, amap = np.zeros((2, 2), bool), np.zeros((2, 2))
    with pytest.raises(ValueError):
        aupro([mask], [np.zeros((2, 3))])
    with pytest.raises(ValueError):
        aupro([mask], [amap, amap])
    with pytest.raises(ValueError):
        aupro([mask], [np.full((2, 2), np.nan)])
    with pytest.raises(ValueError):
        aupro([mask], [amap], fpr_limit=0)


# --------------------------------------------------------------------------- against the references

def test_aupro_and_pro_curve_match_the_naive_reference(chunk):
    rng = np.random.default_rng(1)
    for case in range(20):
        masks, maps = random_case(rng, decimals=1 if case < 15 else 3)
        fpr, pro = pro_curve(masks, maps)
        naive_fpr, naive_pro = naive_pro_curve(masks, maps)
        np.testing.assert_allclose(fpr, naive_fpr, atol=1e-9)
        np.testing.assert_allclose(pro, naive_pro, atol=1e-9)
        for limit in (0.3, rng.uniform(0.01, 1), 1.0):
            assert aupro(masks, maps, limit) == pytest.approx(naive_aupro(masks, maps, limit), abs=1e-6)


def test_aupro_keeps_float64_scores_apart_that_float32_would_merge():
    # .5 and .5 + 1e-12 are one float32 number; the region pixel must still come first
    masks = [np.array([[True, False, False]])]
    maps = [np.array([[0.5 + 1e-12, 0.5, 0.1]])]
    assert aupro(masks, maps) == pytest.approx(naive_aupro(masks, maps), abs=1e-12)
    assert aupro(masks, maps) == pytest.approx(1.0)


def test_pixel_auroc_matches_scikit_learn(chunk):
    rng = np.random.default_rng(2)
    for _ in range(20):
        masks, maps = random_case(rng)
        expected = roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps]))
        assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-9)


def test_pixel_auroc_hand_computed():
    # one defect pixel (.5) against good .5 (tie: half), .1 (win), .9 (loss): 1.5 / 3
    assert pixel_auroc([np.array([[True, False], [False, False]])], [np.array([[0.5, 0.5], [0.1, 0.9]])]) == 0.5


# --------------------------------------------------------------------------- image-level thresholds

LABELS, SCORES = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]


def test_f1_max_hand_computed():
    # t=.8: tp1 fp0 fn1 -> 2/3; t=.4: tp1 fp1 fn1 -> 1/2; t=.35: tp2 fp1 -> 4/5; t=.1: tp2 fp2 -> 2/3
    assert f1_max(LABELS, SCORES) == pytest.approx((0.8, 0.35))
    assert all(math.isnan(v) for v in f1_max([0, 0], [0.1, 0.2]))


def test_f1_max_matches_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(30):
        n = int(rng.integers(2, 40))
        labels = rng.random(n) < 0.4
        labels[0] = True
        scores = np.round(rng.random(n) + 0.3 * labels, 1)
        f1 = {}
        for t in np.unique(scores):
            tp, fp, fn = np.sum(labels & (scores >= t)), np.sum(~labels & (scores >= t)), np.sum(labels & (scores < t))
            f1[t] = 2 * tp / (2 * tp + fp + fn)
        best = max(f1.values())
        assert f1_max(labels, scores) == pytest.approx((best, max(t for t, v in f1.items() if v == best)))


def test_cost_threshold_hand_computed():
    # cost per part, fp 1 / fn 5 over 4 parts: inf 10/4, .8 5/4, .4 6/4, .35 1/4, .1 2/4 -> .35
    assert cost_threshold(LABELS, SCORES, fp_cost=1, fn_cost=5) == pytest.approx(
        {"threshold": 0.35, "expected_cost_per_1000": 250, "false_reject_rate": 0.5, "miss_rate": 0})
    # plant defect rate 1%: .99 * fr + .05 * miss: inf .05, .8 .025, .4 .52, .35 .495, .1 .99 -> .8
    assert cost_threshold(LABELS, SCORES, fp_cost=1, fn_cost=5, defect_rate=0.01) == pytest.approx(
        {"threshold": 0.8, "expected_cost_per_1000": 25, "false_reject_rate": 0, "miss_rate": 0.5})
    # tie between rejecting nothing (1 miss) and everything (1 false reject): fewest rejections wins
    assert cost_threshold([0, 1], [0.2, 0.1], 1, 1)["threshold"] == math.inf
    with pytest.raises(ValueError):  # a plant defect rate needs defective validation parts
        cost_threshold([0, 0], [0.2, 0.1], 1, 1, defect_rate=0.1)


def test_cost_threshold_matches_brute_force():
    rng = np.random.default_rng(4)
    for case in range(30):
        n = int(rng.integers(2, 40))
        labels = rng.random(n) < 0.3
        labels[:2] = [True, False]
        scores = np.round(rng.random(n) + 0.3 * labels, 1)
        fp_cost, fn_cost = int(rng.integers(1, 10)), int(rng.integers(1, 50))
        rate = None if case % 2 else float(rng.uniform(0.001, 0.5))

        def cost(t):
            fp, fn = np.sum(~labels & (scores >= t)), np.sum(labels & (scores < t))
            if rate is None:
                return (fp_cost * fp + fn_cost * fn) / n
            return fp_cost * (1 - rate) * fp / np.sum(~labels) + fn_cost * rate * fn / np.sum(labels)

        costs = {t: cost(t) for t in [math.inf, *np.unique(scores)]}
        got = cost_threshold(labels, scores, fp_cost, fn_cost, defect_rate=rate)
        assert got["expected_cost_per_1000"] == pytest.approx(1000 * min(costs.values()), abs=1e-9)
        assert cost(got["threshold"]) == pytest.approx(min(costs.values()), abs=1e-12)
        assert got["false_reject_rate"] == pytest.approx(np.mean(scores[~labels] >= got["threshold"]))
        assert got["miss_rate"] == pytest.approx(np.mean(scores[labels] < got["threshold"]))
        if rate is None:  # integer costs over n are exact: the highest of the optimal thresholds
            assert got["threshold"] == max(t for t, c in costs.items() if c == min(costs.values()))


def test_false_reject_threshold():
    good = [0.1, 0.2, 0.2, 0.3, 0.9]
    assert false_reject_threshold(good, 0.2) == 0.9  # >= .9 rejects 1/5; >= .3 would reject 2/5
    assert false_reject_threshold(good, 0.5) == 0.3  # >= .2 would reject the tied pair too: 4/5
    assert false_reject_threshold(good, 1.0) == 0.1
    assert false_reject_threshold(good, 0.1) == np.nextafter(0.9, np.inf)  # nothing may be rejected
    rng = np.random.default_rng(5)
    for _ in range(30):
        scores = np.round(rng.random(int(rng.integers(1, 30))), 1)
        rate = float(rng.random())
        candidates = [*np.unique(scores), np.nextafter(scores.max(), np.inf)]
        assert false_reject_threshold(scores, rate) == min(t for t in candidates if np.mean(scores >= t) <= rate)


# --------------------------------------------------------------------------- pointing

def peak_map(shape, peak):
    amap = np.zeros(shape, np.float32)
    amap[peak] = 1.0
    return amap


def test_pointing_hand_computed():
    # 100 x 60 images: radius max(1, ceil(0.02 * 100)) = 2 pixels; the defect is rows and columns 10..19
    mask = np.zeros((100, 60), bool)
    mask[10:20, 10:20] = True
    peaks = [(15, 15),  # inside the mask: a hit
             (15, 21),  # 2 pixels right of it: outside the mask, inside the dilation, a hit
             (21, 21),  # sqrt(8) > 2 from its corner: a miss (a square dilation would take it)
             (50, 50)]  # far away: a miss
    masks = [mask] * 4 + [np.zeros((100, 60), bool)]  # the empty mask is left out
    maps = [peak_map(mask.shape, p) for p in peaks] + [peak_map(mask.shape, (15, 15))]
    assert pointing_hits(masks, maps).tolist() == [True, True, False, False]
    assert pointing(masks, maps) == 0.5
    # 20 x 20: 2 % is 0.4 pixels, so the radius is its floor of 1
    small = np.zeros((20, 20), bool)
    small[5, 5] = True
    assert pointing_hits([small] * 2, [peak_map((20, 20), (6, 5)), peak_map((20, 20), (7, 5))]).tolist() == [True, False]
    assert math.isnan(pointing([np.zeros((4, 4), bool)], [np.ones((4, 4))]))
    with pytest.raises(ValueError):
        pointing([mask], [np.zeros((60, 100))])


def test_pointing_matches_a_disk_dilation():
    from scipy import ndimage
    rng = np.random.default_rng(6)
    for _ in range(30):
        shape = tuple(int(n) for n in rng.integers(8, 120, size=2))
        mask = rng.random(shape) > 0.995
        amap = rng.random(shape)
        radius = max(1, math.ceil(0.05 * max(shape)))
        offsets = np.arange(-radius, radius + 1)
        disk = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2
        dilated = ndimage.binary_dilation(mask, disk)
        expected = [bool(dilated[np.unravel_index(np.argmax(amap), shape)])] if mask.any() else []
        assert pointing_hits([mask], [amap], dilation=0.05).tolist() == expected


def test_evaluate_reports_pointing_overall_and_per_defect(tmp_path, capsys):
    """A constructed 100 x 100 set and a stand-in model whose maps peak where the test says."""
    from types import SimpleNamespace

    from PIL import Image

    from vqc.training.evaluation import evaluate

    def write(path, array):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)

    defect = np.zeros((100, 100), np.uint8)
    defect[40:50, 40:50] = 255
    peaks = {"g": (5, 5), "a": (45, 45), "b": (45, 51), "c": (45, 45), "d": (90, 90), "e": (45, 45)}
    for folder, stem in [("good", "g"), ("scratch", "a"), ("scratch", "b"), ("scratch", "c"), ("dent", "d"),
                         ("dent", "e")]:
        write(tmp_path / "test" / folder / f"{stem}.png", np.zeros((100, 100, 3), np.uint8))
    write(tmp_path / "ground_truth" / "scratch" / "a_mask.png", defect)
    write(tmp_path / "ground_truth" / "scratch" / "b_mask.png", defect)  # c has no mask: left out
    write(tmp_path / "ground_truth" / "dent" / "d_mask.png", defect)
    write(tmp_path / "ground_truth" / "dent" / "e_mask.png", np.zeros((100, 100), np.uint8))  # empty: left out

    def predict_iter(paths, progress):
        for path in paths:
            amap = peak_map((100, 100), peaks[path.stem])
            yield SimpleNamespace(score=float(amap.max()), anomaly_map=amap)

    model = SimpleNamespace(predict_iter=predict_iter, threshold=None)
    result = evaluate(model, tmp_path, progress=False)
    # a: inside, b: 2 pixels right of the defect (radius 2), d: far off
    assert (result["pointing"], result["n_pointing"]) == (pytest.approx(2 / 3), 3)
    assert {k: (row["pointing"], row["n_pointing"]) for k, row in result["per_defect"].items()} == {
        "scratch": (1.0, 2), "dent": (0.0, 1)}
    assert 0 <= result["pointing"] <= 1

    from vqc.cli.scoring import _metrics_json, print_metrics
    print_metrics(result, "constructed")
    out = capsys.readouterr().out
    assert "pointing" in out and "0.6667 of 3" in out and "1.0000 of 2" in out
    assert json.loads(_metrics_json(result))["per_defect"]["dent"]["n_pointing"] == 1
