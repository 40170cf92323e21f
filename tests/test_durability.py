"""A `vqc serve` process killed with SIGKILL under load loses no answered inspection (SQLite and
PostgreSQL), and API keys never reach its log. Drives bench/load_test.py's server and clients."""
import importlib.util
from pathlib import Path

import httpx
import pytest

from vqc.access import add_key
from vqc.data import read_split

spec = importlib.util.spec_from_file_location("load_test", Path(__file__).resolve().parents[1] / "bench" / "load_test.py")
load_test = importlib.util.module_from_spec(spec)
spec.loader.exec_module(load_test)


@pytest.fixture(scope="module")
def served(demo_model, demo_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("durability")
    path = str(demo_model.save(folder / "tiles.safetensors"))
    samples = read_split(demo_root, "test")
    payloads = [(s.path.name, s.path.read_bytes(), p.score)
                for s, p in zip(samples, demo_model.predict([s.path for s in samples]))]
    key = add_key(folder / "keys.txt", "test")
    return path, payloads, folder / "keys.txt", key


def test_sigkill_under_load_loses_no_answered_inspection(served, db_url, tmp_path):
    path, payloads, key_file, key = served
    crash = load_test.crash_run(path, db_url, key_file, key, payloads, clients=4, seconds=8, engine="torch",
                                log=tmp_path / "server.log")
    print(f"\n{db_url.split(':')[0]}: {crash}")
    assert crash["answered"] > 0  # the kill came while answers were flowing
    assert crash["missing"] == [] and crash["rows_added"] >= crash["answered"]
    assert crash["incomplete"] == [] and crash["integrity"] in ("ok", "n/a")
    assert crash["healthy_after_restart"]


def test_api_keys_never_reach_the_log(served, tmp_path):
    path, payloads, key_file, key = served
    log = tmp_path / "server.log"
    server = load_test.Server(path, f"sqlite:///{tmp_path / 'r.sqlite'}", key_file, "torch", log).start()
    wrong = "vqc_" + "x" * 43
    try:
        image = payloads[0][1]
        statuses = [httpx.post(f"{server.url}/v1/inspect?station=cam1", content=image, headers=headers,
                               timeout=60).status_code
                    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key},
                                    {"Authorization": f"Bearer {wrong}"}, {})]
    finally:
        server.stop()
    assert statuses == [200, 200, 401, 401]
    text = log.read_text()
    assert '"POST /v1/inspect?station=cam1 HTTP/1.1" 200' in text and "401" in text  # requests are logged...
    assert key not in text and wrong not in text and key[4:20] not in text  # ...keys are not
