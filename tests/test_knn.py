import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from vqc import VqcError
from vqc.training.heads import create_head
from vqc.training.heads.knn import KnnHead, greedy_coreset, random_subset
from vqc.training.heads.patches import flatten_positions, patch_features


def _levels(rng, b=3):
    return [torch.from_numpy(rng.normal(size=(b, 5, 8, 8)).astype(np.float32)),
            torch.from_numpy(rng.normal(size=(b, 7, 4, 4)).astype(np.float32))]


def test_knn_distances_match_scikit_learn(rng):
    head = KnnHead([5, 7], coreset_method="none", block=50)  # several blocks over a 192-row bank
    head.fit([_levels(rng)])
    query = _levels(rng, b=2)
    got = head(query).numpy().ravel()
    bank = head.bank.numpy()
    points = flatten_positions(patch_features(query)).numpy()
    want = NearestNeighbors(n_neighbors=1).fit(bank).kneighbors(points)[0].ravel()
    assert head.bank.shape == (192, 12)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_training_patches_score_zero_without_coreset(rng):
    levels = _levels(rng)
    head = KnnHead([5, 7], coreset_method="none")
    head.fit([levels])
    assert head(levels).abs().max() < 1e-2


def test_greedy_coreset_matches_naive_k_center(rng):
    points = torch.from_numpy(rng.normal(size=(300, 16)).astype(np.float32))
    chosen = greedy_coreset(points, 20, seed=3).tolist()
    # naive: recompute every distance from scratch at each step
    d = torch.cdist(points, points)
    naive = [chosen[0]]
    for _ in range(19):
        naive.append(int(d[:, naive].min(1).values.argmax()))
    assert chosen == naive
    assert len(set(chosen)) == 20


def test_coreset_sizes_and_options(rng):
    head = KnnHead([5, 7], coreset=0.25, coreset_method="random")
    stats = head.fit([_levels(rng)])
    assert stats == {"patches": 192, "bank": 48} and head.bank.shape == (48, 12)
    assert sorted(random_subset(torch.zeros(10, 2), 10, 0).tolist()) == list(range(10))
    with pytest.raises(VqcError, match="coreset_method"):
        KnnHead([4], coreset_method="kmeans")
    with pytest.raises(VqcError, match="bad option"):
        create_head("knn", [4], {"neighbours": 3})
    with pytest.raises(VqcError, match="unknown head"):
        create_head("svm", [4], {})


def test_leave_one_out_scores_equal_a_fit_without_that_image(demo_root):
    """Without a coreset the bank is every fit patch, so an image scored without its own rows
    must score exactly as it would under a model fitted on the other images only."""
    import vqc
    from vqc.data import read_split
    paths = [s.path for s in read_split(demo_root, "train")][:8]
    options = dict(backbone="efficientnet_lite0", head="knn", head_options={"coreset_method": "none"})
    model = vqc.AnomalyModel(**options).fit(paths, progress=False)
    assert model.info["n_train"] == 8 and model.info["n_validation"] == 0
    assert len(model.info["normal_scores"]) == 8 and "leave-one-out" in model.threshold.validated_on
    for i in (0, 5):
        others = vqc.AnomalyModel(**options, leave_one_out=False, validation_fraction=0)
        others.fit(paths[:i] + paths[i + 1:], progress=False)
        assert model.info["normal_scores"][i] == pytest.approx(others.predict(paths[i])[0].score, rel=1e-5)
        assert model.info["normal_scores"][i] > model.predict(paths[i])[0].score  # seen, it scores lower
