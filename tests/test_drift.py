"""Drift: the KS check on recent scores, and /health on real images of the right and of another product."""
import numpy as np
import pytest
from fastapi.testclient import TestClient

from vqc.engines import EngineSettings
from vqc.data import read_split
from vqc.monitoring import DriftMonitor
from vqc.serve import create_app

from .conftest import shared_set


def test_drift_monitor_flags_a_shifted_distribution_only(rng):
    reference = rng.normal(10, 1, 21)
    monitor = DriftMonitor(reference, window=50, min_scores=20)
    monitor.add(rng.normal(10, 1, 19))
    assert monitor.check()["status"] == "ok" and monitor.check()["statistic"] is None  # still collecting
    monitor.add(rng.normal(10, 1, 31))
    same = monitor.check()
    assert same["status"] == "ok" and same["window"] == 50 and same["p_value"] > 0.001
    monitor.add(rng.normal(13, 1, 50))  # the window now holds only shifted scores
    shifted = monitor.check()
    assert shifted["status"] == "drifting" and shifted["statistic"] > 0.8 and shifted["p_value"] < 0.001
    monitor.add(list(reference) * 3)  # back to normal: the alarm clears as the window slides
    assert monitor.check()["status"] == "ok"


@pytest.mark.parametrize("n1, n2, shift, ties", [(20, 20, 0.5, False), (200, 54, 0.3, False), (37, 113, 0.0, True),
                                                 (5, 7, 1.0, False), (200, 1000, 0.15, True), (3000, 2000, 0.05, False)])
def test_ks_two_sample_equals_scipy(n1, n2, shift, ties, rng):
    """The runtime's own KS test against scipy's: the statistic and the exact p-value (the last
    case is past EXACT_KS_CELLS: Kolmogorov's limit distribution, scipy's kstwobign)."""
    from scipy.stats import ks_2samp, kstwobign

    from vqc.monitoring import EXACT_KS_CELLS, ks_two_sample
    a, b = rng.normal(shift, 1, n1), rng.normal(0, 1, n2)
    if ties:  # scores rounded as a line's would be: many equal values within and across the samples
        a, b = np.round(a, 1), np.round(b, 1)
    d, p = ks_two_sample(a, b)
    want = ks_2samp(a, b, method="exact")
    assert d == pytest.approx(want.statistic, abs=1e-12)
    if n1 * n2 > EXACT_KS_CELLS:
        want_p = kstwobign.sf(want.statistic * np.sqrt(n1 * n2 / (n1 + n2)))
    else:
        want_p = want.pvalue
    assert p == pytest.approx(want_p, rel=1e-6, abs=1e-12)


def test_drift_window_survives_a_restart(demo_model, demo_root, tmp_path):
    path = demo_model.save(tmp_path / "tiles.safetensors")
    images = [s.path.read_bytes() for s in read_split(demo_root, "test")[:5]]
    with TestClient(create_app(path, engine=EngineSettings("torch"), drift_window=30)) as client:
        for image in images:
            assert client.post("/v1/inspect", content=image).status_code == 200
    with TestClient(create_app(path, engine=EngineSettings("torch"), drift_window=30)) as client:  # the same records file
        assert client.get("/health").json()["drift"]["window"] == 5


@pytest.fixture(scope="module")
def bottle_model(bottle_knn, tmp_path_factory):
    model, _ = bottle_knn
    return model.save(tmp_path_factory.mktemp("drift") / "bottle.safetensors"), shared_set("mvtec_bottle")


def test_health_turns_drifting_on_another_product_and_stays_ok_on_good_bottles(bottle_model):
    path, bottle = bottle_model
    metal_plate = shared_set("mpdd_metal_plate")
    good_bottles = sorted((bottle / "test" / "good").glob("*.png"))
    plates = sorted((metal_plate / "test" / "good").glob("*.png"))[:20]
    assert len(good_bottles) == 20
    with TestClient(create_app(path, engine=EngineSettings("torch"), db="none", drift_window=20)) as client:
        for image in good_bottles:
            assert client.post("/v1/inspect", content=image.read_bytes()).status_code == 200
        ok = client.get("/health").json()
        assert ok["status"] == "ok" and ok["drift"]["window"] == 20 and ok["drift"]["p_value"] >= 0.001
        for image in plates:  # the window slides until it holds metal plates only
            assert client.post("/v1/inspect", content=image.read_bytes()).status_code == 200
        drifting = client.get("/health").json()
        assert drifting["status"] == "drifting" and drifting["drift"]["p_value"] < 0.001
        assert drifting["drift"]["statistic"] > ok["drift"]["statistic"]
        assert "vqc_score_drifting 1.0" in client.get("/metrics").text
    print(f"\ngood bottles: KS D {ok['drift']['statistic']}, p {ok['drift']['p_value']}; "
          f"metal plates: KS D {drifting['drift']['statistic']}, p {drifting['drift']['p_value']}")
