import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

import vqc
from vqc.data import read_split
from vqc.training.heads.gmm import GmmHead, em, mean_log_likelihood
from vqc.training.heads.training import train_early_stopping


class _Scalar(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))


def test_early_stopping_stops_and_restores_the_best_epoch():
    """Training pulls w towards 1; validation prefers w = 0.3, so it improves, then worsens."""
    module = _Scalar()
    seen = []

    def loss(target):
        if module.training:
            seen.append(module.w.item())
        return (module.w - target) ** 2

    stats = train_early_stopping(module, loss, train=[1.0], val=[0.3], lr=0.05, weight_decay=0.0,
                                 max_epochs=500, patience=5, progress=False)
    assert stats["stopped_early"] and stats["epochs"] == stats["best_epoch"] + 1 + 5
    # w after each epoch's step: the best is the one closest to 0.3
    after = seen[1:] + [None]
    best = min(range(stats["epochs"] - 1), key=lambda e: abs(after[e] - 0.3))
    assert stats["best_epoch"] == best
    assert module.w.item() == pytest.approx(after[best])  # restored, not the last epoch's weights
    assert stats["best_val_loss"] == pytest.approx((after[best] - 0.3) ** 2, rel=1e-4)  # float32 vs float64


def _blobs(rng, n=600, d=4):
    centres = np.array([[0.0] * d, [4.0] * d, [-4.0, 4.0] + [0.0] * (d - 2)])
    return np.concatenate([rng.normal(c, s, size=(n, d)) for c, s in zip(centres, (0.5, 1.0, 0.7))])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # tol=0 runs all max_iter on purpose
@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_em_matches_scikit_learn_from_the_same_start(rng, covariance):
    x = _blobs(rng)
    k, d = 3, x.shape[1]
    means = x[rng.choice(len(x), k, replace=False)]
    weights = np.full(k, 1 / k)
    if covariance == "full":
        precisions = np.stack([np.eye(d) * (1 + i) for i in range(k)])
        chol = np.linalg.cholesky(precisions)
    else:
        precisions = np.ones((k, d)) * np.arange(1, k + 1)[:, None]
        chol = np.sqrt(precisions)
    sk = GaussianMixture(k, covariance_type=covariance, reg_covar=1e-6, max_iter=15, tol=0.0,
                         weights_init=weights, means_init=means, precisions_init=precisions).fit(x)
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))
    (w, m, p), ll, iterations = em(t(x), t(weights), t(means), t(chol), covariance, 1e-6, 15, 0.0)
    assert iterations == 15
    np.testing.assert_allclose(m.numpy(), sk.means_, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(w.numpy(), sk.weights_, rtol=1e-8, atol=1e-10)
    assert ll == pytest.approx(sk.score(x), rel=1e-9, abs=1e-9)
    assert mean_log_likelihood(t(x), w, m, p, covariance) == pytest.approx(sk.score(x), rel=1e-9, abs=1e-9)


def test_gmm_head_chooses_k_by_bic_and_scores_outliers(rng):
    x = torch.from_numpy(_blobs(rng, d=3).astype(np.float32))
    level = x.T.reshape(1, 3, 45, 40)  # 1800 patches on a grid; pool=1 keeps them as they are
    head = GmmHead([3], grid=(1, 2, 3, 5, 8), pool=1, reg=1e-6)
    stats = head.fit([[level]])
    assert stats["components"] == 3, stats
    outlier = torch.tensor([[20.0, -20.0, 20.0]]).T.reshape(1, 3, 1, 1)
    inlier = torch.tensor([[0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 1)
    assert head([outlier]).item() > head([inlier]).item() + 50


@pytest.fixture(scope="module")
def few_images(demo_root):
    train = [s.path for s in read_split(demo_root, "train")][:10]
    test = [s.path for s in read_split(demo_root, "test")][::6]
    return train, test


@pytest.mark.parametrize("head,options", [
    ("nf", {"max_epochs": 2, "steps": 4}),
    ("gmm", {"grid": [1, 2], "max_iter": 10}),
    ("mdn", {"max_epochs": 2, "components": 8}),
    ("ae", {"max_epochs": 2}),
])
def test_every_head_is_seeded_and_survives_save_load(head, options, few_images, tmp_path):
    train, test = few_images
    a = vqc.AnomalyModel(head=head, head_options=options).fit(train, progress=False)
    b = vqc.AnomalyModel(head=head, head_options=options).fit(train, progress=False)
    scores = [p.score for p in a.predict(test)]
    assert scores == [p.score for p in b.predict(test)]  # same seed, same CPU: same model
    assert len(set(scores)) > 1 and all(np.isfinite(scores))
    loaded = vqc.load(a.save(tmp_path / f"{head}.safetensors"))
    assert [p.score for p in loaded.predict(test)] == scores
    assert loaded.info["fit_seconds"] > 0 and loaded.info["inference_ms_per_image"] > 0
    assert loaded.config.backbone == ("none" if head == "ae" else "efficientnet_lite0")
    from vqc.training.efficiency import flops_per_image
    assert flops_per_image(loaded.detector, 224) > 1e8  # the flop counter runs on every fitted head


def test_flow_forward_with_gathered_permutations_equals_freia():
    from vqc.training.heads.nf import build_flow, flow_forward
    torch.manual_seed(0)
    flow = build_flow(12, steps=6, hidden_ratio=0.5, clamp=2.0)
    with torch.no_grad():  # move every trainable parameter off its initial value
        for parameter in flow.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn_like(parameter))
    x = torch.randn(3, 12, 5, 7)
    want, want_log_jac = flow(x)
    got, got_log_jac = flow_forward(flow, x, with_log_jac=True)
    assert got.shape == want.shape and got_log_jac.shape == want_log_jac.shape == (3,)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_log_jac, want_log_jac, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(flow_forward(flow, x)[0], want, rtol=1e-5, atol=1e-5)  # inference path


def test_nf_level_maps_and_files_from_before_the_option(few_images, tmp_path):
    """nf combines levels as likelihoods by default, with every option named in the saved file; a
    file without level_map (an older vqc, which summed nll) loads as "nll" and scores as it did."""
    import json
    from safetensors.torch import load_file, safe_open, save_file
    train, test = few_images
    model = vqc.AnomalyModel(head="nf", head_options={"max_epochs": 2, "steps": 4}).fit(train, progress=False)
    assert model.config.layers == (2, 3, 4)  # nf's own default levels on lite0
    assert model.config.head_options["level_map"] == "likelihood" and model.config.head_options["steps"] == 4
    maps = [p.anomaly_map for p in model.predict(test)]
    assert all(0 <= m.min() and m.max() <= 1 for m in maps)  # 1 - mean likelihood
    path = model.save(tmp_path / "nf.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    config = json.loads(meta["config"])
    del config["head_options"]["level_map"]
    save_file(load_file(str(path)), str(tmp_path / "old.safetensors"), metadata={**meta, "config": json.dumps(config)})
    old = vqc.load(tmp_path / "old.safetensors")
    assert old.config.head_options["level_map"] == "nll"
    model.detector.head.level_map = "nll"
    assert [p.score for p in old.predict(test)] == [p.score for p in model.predict(test)]


def test_every_registered_head_meets_the_head_protocol():
    import inspect

    from vqc.training.heads import HEADS, Head, create_head
    for name in HEADS:
        head = create_head(name, [8, 16], {})
        assert isinstance(head, Head), name
        assert list(inspect.signature(head.fit).parameters)[:2] == ["batches", "val_batches"], name

    class NoScore:  # a would-be head without forward() fails the check
        def fit(self, batches, val_batches, progress=True):
            return {}

        def options(self):
            return {}

        def state_dict(self):
            return {}
    assert not isinstance(NoScore(), Head)
