"""The service's micro-batching: concurrent requests share engine calls, each gets its own answers."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from vqc.batching import Batcher


def _marked(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, np.uint8)


def test_concurrent_requests_share_batches_and_get_their_own_results():
    sizes = []

    def score(images):
        sizes.append(len(images))
        time.sleep(0.02)  # an engine call: requests arriving meanwhile queue for the next batch
        return [int(image[0, 0, 0]) for image in images]

    batcher = Batcher(score, max_images=8, max_wait_ms=20)
    start = threading.Barrier(16)

    def request(i):
        start.wait()
        return batcher.submit([_marked(i), _marked(100 + i)])

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(request, range(16)))
    batcher.close()
    assert answers == [[i, 100 + i] for i in range(16)]  # in order, each request its own
    assert sum(sizes) == 32 and max(sizes) <= 8 and len(sizes) < 16  # shared calls, none over the bound


def test_a_request_that_breaks_its_batch_fails_alone():
    def score(images):
        if any(image[0, 0, 0] == 13 for image in images):
            raise ValueError("image 13 cannot be scored")
        return [int(image[0, 0, 0]) for image in images]

    batcher = Batcher(score, max_images=32, max_wait_ms=50)
    start = threading.Barrier(6)

    def request(i):
        start.wait()
        try:
            return batcher.submit([_marked(i)])
        except ValueError as exc:
            return str(exc)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(request, [10, 11, 12, 13, 14, 15]))
    batcher.close()
    assert answers == [[10], [11], [12], "image 13 cannot be scored", [14], [15]]


def test_the_batching_service_answers_eight_clients_as_the_model_scores_alone(demo_model, demo_root, tmp_path):
    from fastapi.testclient import TestClient

    from vqc.training.export import export_bundle
    from vqc.serve import create_app
    bundle = tmp_path / "tiles"
    export_bundle(demo_model, bundle)
    images = sorted((demo_root / "test").glob("*/*.png"))[:16]
    app = create_app(bundle, db="none", batch_wait_ms=10)
    with TestClient(app) as client:
        def inspect(path):
            response = client.post("/v1/inspect", files={"file": (path.name, path.read_bytes(), "image/png")})
            return response.status_code, response.json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(inspect, images * 2))
        batches = app.state.inspector.live.batcher.batches
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:2]
    want = {p.name: demo_model.predict(p)[0].score for p in images}
    for (_, body), path in zip(answers, images * 2):
        assert body["filename"] == path.name and body["score"] == pytest.approx(want[path.name], rel=1e-5)
    assert batches < len(answers)  # some requests shared an engine call
