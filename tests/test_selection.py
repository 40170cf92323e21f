"""Issue 21: synthetic defects, and `vqc fit --auto` choosing from good images alone."""
import numpy as np
import pytest

from vqc.data import decode_image, read_split
from vqc.training.synthetic import KINDS, SIZES, defect_set, perlin_noise, synthetic_defect


@pytest.fixture(scope="module")
def good_images(demo_root):
    return [decode_image(s.path) for s in read_split(demo_root, "train")[:6]]


def test_every_kind_and_size_paints_only_inside_its_mask(good_images):
    rng = np.random.default_rng(0)
    image, source = good_images[0], good_images[1]
    for kind in KINDS:
        for size in SIZES:
            for contrast in (0.3, 1.0):
                out, mask, what = synthetic_defect(image, rng, kind, size, contrast,
                                                   source if source.shape == image.shape else None)
                assert out.shape == image.shape and out.dtype == np.uint8 and mask.shape == image.shape[:2]
                assert what == {"kind": kind, "size": size, "contrast": contrast}
                changed = (out != image).any(axis=2)
                assert mask.any() and changed.any(), (kind, size, contrast)
                assert not (changed & ~mask).any(), (kind, size)  # nothing painted outside the mask
                assert mask.mean() < 0.5  # a defect, not a new image
    assert not (good_images[0] != image).any()  # the input is never changed


def test_defects_are_seeded_and_repeatable(good_images):
    first, again, other = defect_set(good_images, 7), defect_set(good_images, 7), defect_set(good_images, 8)
    assert len(first) == 2 * len(good_images)
    assert sorted({what["kind"] for _, _, what in first}) == sorted(KINDS)
    for (a, ma, wa), (b, mb, wb) in zip(first, again):
        assert np.array_equal(a, b) and np.array_equal(ma, mb) and wa == wb
    assert any(not np.array_equal(ma, mb) for (_, ma, _), (_, mb, _) in zip(first, other))


def test_perlin_noise_is_smooth_and_bounded():
    noise = perlin_noise((64, 96), 4, np.random.default_rng(0))
    assert noise.shape == (64, 96) and np.abs(noise).max() <= 1.0 + 1e-9
    assert np.abs(np.diff(noise, axis=1)).max() < 0.2  # gradient noise: no jumps between neighbours
    assert noise.std() > 0.1


def test_auto_picks_the_better_of_two_candidates(demo_root):
    """A constructed case: the same detector with ImageNet weights and with random ones. On the
    real test split the ImageNet one is better; --auto, seeing only good images, must pick it."""
    from vqc.training.selection import CONTRASTS, Candidate, choose, chosen_options
    pool = [Candidate("random weights", {"weights": "random"}), Candidate("imagenet weights", {})]
    result = choose(demo_root, pool=pool, test_data=demo_root, progress=False, say=lambda line: None)
    records = result["candidates"]
    assert [r["status"] for r in records] == ["ok"] * 4  # two fits, two image scores each
    chosen = records[result["chosen"]]
    assert chosen["name"].startswith("imagenet weights")
    by_name = {r["name"]: r for r in records}
    assert by_name["imagenet weights"]["test_image_auroc"] > by_name["random weights"]["test_image_auroc"]
    assert chosen_options(result)["top_k"] == chosen["top_k"] and "weights" not in chosen_options(result)
    assert result["held_out_good"] >= 5 and result["synthetic_defects"] == 2 * 3 * result["held_out_good"]
    assert result["contrast"] in [list(c) for c in CONTRASTS]


def test_auto_candidates_follow_the_images_shape(tmp_path):
    from PIL import Image

    from vqc.training.selection import candidates
    for name, size in (("square", (256, 256)), ("long", (200, 512)), ("large", (900, 900))):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(3):
            Image.new("L", size).save(folder / f"{i}.png")
        names = [c.name for c in candidates(sorted(folder.glob("*.png")))]
        assert names[0] == "lite0 knn 224"
        assert any("letterbox" in n for n in names) == (name == "long")
        assert any("tiles" in n for n in names) == (name == "large")
        assert any("own scale" in n for n in names) == (name == "long")


def test_auto_prints_one_row_per_candidate(capsys):
    from vqc.cli.fit import print_candidates

    def judged(name, k, image, score):
        return {"name": name + (f", top-{k} score" if k else ""), "candidate": name, "options": {}, "top_k": k,
                "status": "ok", "seconds": 3.0, "image_auroc": image, "pixel_auroc": 0.9, "false_reject_rate": 0.0,
                "selection_score": score}
    result = {"candidates": [judged("a", 0, 0.81, 0.85), judged("a", 10, 0.83, 0.86),
                             judged("b", 0, 0.91, 0.90), judged("b", 10, 0.92, 0.91),
                             {"name": "c", "candidate": "c", "options": {}, "status": "skipped: the time budget"}],
              "chosen": 3, "fit_images": 40, "held_out_good": 10, "synthetic_defects": 20, "seconds": 12}
    print_candidates(result)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith(("│ a", "│ b", "│ c"))]
    assert [line.split()[1] for line in lines] == ["a", "b", "c"]  # one row each, none twice
    assert "0.8100 / 0.8300" in lines[0] and "<- chosen, top-10 score" in lines[1]


def test_candidates_are_compared_at_the_contrast_where_they_find_about_three_defects_in_four():
    """Numbers measured on KolektorSDD (a mottled surface): faint synthetic defects are found by
    no candidate and tell them apart by noise alone; at the plain level the candidate that is best
    on the real defects (own scale, layers 3,4) leads. On a plain part the faint level decides."""
    from vqc.training.selection import informative_level, settle

    def record(name, levels):
        return {"name": name, "status": "ok", "false_reject_rate": 0.0,
                "levels": [{"image_auroc": i, "pixel_auroc": p} for i, p in levels]}
    mottled = [record("224", [(0.532, 0.617), (0.576, 0.804), (0.681, 0.911)]),
               record("own scale 3,4", [(0.559, 0.745), (0.625, 0.881), (0.765, 0.954)]),
               record("letterbox 448", [(0.566, 0.760), (0.624, 0.885), (0.758, 0.954)]),
               {"name": "skipped", "status": "skipped: the time budget"}]
    assert settle(mottled, 0.01) == 2
    assert max(mottled[:3], key=lambda r: r["selection_score"])["name"] == "own scale 3,4"
    assert mottled[1]["image_auroc"] == 0.765 and mottled[1]["selection_score"] == round(0.765 + 0.0954, 4)
    plain = [record("224", [(0.938, 0.989), (0.992, 0.994), (1.0, 0.995)]),
             record("letterbox 448", [(0.954, 0.995), (0.998, 0.997), (1.0, 0.998)])]
    assert informative_level(plain) == 0
    assert settle([{"name": "x", "status": "failed: no"}], 0.01) is None


def test_a_candidate_that_leaves_no_room_for_the_refit_is_skipped_and_said(demo_root):
    from vqc.training.selection import Candidate, choose
    said = []
    pool = [Candidate("first", {"head_options": {"coreset": 0.02}}), Candidate("second", {"image_size": 320})]
    result = choose(demo_root, budget_s=1.0, pool=pool, progress=False, say=said.append)
    assert [r["status"] for r in result["candidates"]][:2] == ["ok", "ok"]  # the first always runs (two scores)
    assert result["candidates"][2]["status"] == "skipped: the time budget of 1 s would be passed"
    assert said == ["  second: skipped (time budget)"] and result["chosen"] in (0, 1)
