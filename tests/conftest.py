import os
from pathlib import Path

import numpy as np
import pytest

from vqc.training.demo import demo_data

SHARED = Path(os.environ.get("VQC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared_set(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"needs the shared data set {path} (set VQC_SHARED_DATA to its folder)")
    return path


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory) -> Path:
    """Exported graphs go to a fresh cache, not the user's ~/.cache/vqc."""
    path = tmp_path_factory.mktemp("vqc-cache")
    os.environ["VQC_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def demo_root() -> Path:
    return demo_data()


@pytest.fixture(scope="session")
def demo_model(demo_root):
    """efficientnet_lite0 + knn with real ImageNet weights, fitted once on the demo set."""
    import vqc
    return vqc.AnomalyModel(backbone="efficientnet_lite0", head="knn").fit(demo_root, progress=False)


@pytest.fixture(scope="session")
def demo_model_file(demo_model, tmp_path_factory) -> Path:
    """The demo model saved once, for tests that run the command line or a service on a file."""
    return demo_model.save(tmp_path_factory.mktemp("demo-model") / "tiles.safetensors")


@pytest.fixture(scope="session")
def bottle_knn():
    """The default efficientnet_lite0 + knn fitted on the shared bottle set, and its PyTorch evaluation
    (fitted once: the acceptance, drift and fast-engine tests all start from it)."""
    import vqc
    from vqc.training.evaluation import evaluate
    root = shared_set("mvtec_bottle")
    model = vqc.AnomalyModel(backbone="efficientnet_lite0", head="knn").fit(root, progress=False)
    return model, evaluate(model, root, progress=False)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the session (see throwaway_postgres.py)."""
    from .throwaway_postgres import binaries, throwaway_postgres
    if binaries() is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine: apt-get install postgresql "
                    "(.ci/run installs it)")
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty records database: a SQLite file, then a database on the throwaway PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.sqlite'}"
    from .throwaway_postgres import fresh_database
    return fresh_database(request.getfixturevalue("postgres_server"))
