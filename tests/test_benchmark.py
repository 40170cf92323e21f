import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vqc.training.benchmark import Cell, Matrix, categories, load_matrix, markdown_tables, paper_matrix
from vqc.errors import VqcError


@pytest.fixture
def matrix_file(tmp_path, demo_root):
    path = tmp_path / "matrix.yaml"
    path.write_text(f"""
backbones: [efficientnet_lite0]
heads: [knn, gmm]
data: [{demo_root}]
head_options:
  knn: {{coreset: 0.02}}
  gmm: {{grid: [1], max_iter: 5, max_samples: 2000}}
""")
    return path


def test_matrix_expands_categories_and_keys_are_stable(matrix_file, demo_root, tmp_path):
    matrix = load_matrix(matrix_file)
    cells = matrix.cells()
    assert [(c.head, c.category) for c in cells] == [("knn", "magnetic_tile"), ("gmm", "magnetic_tile")]
    assert cells[0].key == Matrix(["efficientnet_lite0"], ["knn"], [str(demo_root)],
                                  head_options={"knn": {"coreset": 0.02}}).cells()[0].key
    assert categories([str(demo_root.parent)]) == [demo_root]
    (tmp_path / "bad.yaml").write_text("heads: [knn]\n")
    with pytest.raises(VqcError, match="bad.yaml"):
        load_matrix(tmp_path / "bad.yaml")


def test_a_pair_can_name_its_own_layers(demo_root, tmp_path):
    path = tmp_path / "pairs.yaml"
    path.write_text(f"data: [{demo_root}]\npairs: [[efficientnet_lite0, knn], [efficientnet_lite0, nf, [2, 3, 4]]]\n")
    cells = load_matrix(path).cells()
    assert [(c.head, c.layers) for c in cells] == [("knn", ()), ("nf", (2, 3, 4))]
    assert cells[1].model_name == "efficientnet_lite0 [2,3,4] + nf"


def test_paper_preset_says_what_is_missing(demo_root):
    matrix, missing = paper_matrix([])
    assert "MVTec AD" in missing[0] and "BTAD" in missing[0]
    assert matrix.layers["deit_base_distilled_patch16_224"] == [(7,), (11,)]
    assert {"nf", "gmm", "mdn"} == set(matrix.heads)
    _, missing = paper_matrix([str(demo_root)])
    assert "bottle" in missing[0] and "not found" in missing[0]


def _benchmark(matrix_file, out):
    return [sys.executable, "-m", "vqc.cli", "benchmark", "--config", str(matrix_file), "--out", str(out)]


def test_benchmark_resumes_after_being_killed(matrix_file, tmp_path):
    out = tmp_path / "bench"
    first = subprocess.Popen(_benchmark(matrix_file, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "cells").glob("*.json")):
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # the run and its cell process, mid-way
    first.wait()
    done = list((out / "cells").glob("*.json"))
    assert len(done) == 1, "the kill should land after the first cell"
    before = done[0].read_text()
    assert not (out / "results.csv").exists()

    rerun = subprocess.run(_benchmark(matrix_file, out), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert done[0].read_text() == before  # the finished cell was kept, not recomputed
    records = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in records] == ["ok", "ok"]
    for r in records:
        assert 0.5 < r["image_auroc"] <= 1 and 0 < r["aupro"] <= 1
        assert r["flops_per_image"] > 1e8 and r["latency_ms"] > 0 and r["throughput_ips"] > 0
        assert r["params_backbone"] > 1e6 and r["peak_memory_mb"] > 100
        assert {"cost", "f1", "false_reject_rate"} <= set(r["thresholds"])
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("key,model")
    table = (out / "results.md").read_text()
    assert "| efficientnet_lite0 + knn |" in table and "magnetic_tile" in table
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64") >= 6 and "Accuracy against cost" in page


def test_a_failing_cell_is_recorded_and_the_run_goes_on(tmp_path, demo_root):
    cells = [Cell("efficientnet_lite0", "knn", str(demo_root), head_options=json.dumps({"coreset": 7})),
             Cell("resnet50", "knn", str(demo_root), weights=str(tmp_path / "missing.pth"))]
    from vqc.training.benchmark import run_matrix
    records = run_matrix(cells, tmp_path / "out", {"fp_cost": 1, "fn_cost": 10}, progress=False, say=lambda _: None)
    assert [r["status"] for r in records] == ["error", "missing"]
    assert "coreset" in records[0]["error"] and "missing.pth" in records[1]["error"]
    assert "cells not run" in markdown_tables(records)


def test_summary_table_gives_image_pixel_auroc_and_fit_seconds_per_cell():
    def record(category, image, pixel, fit):
        return {"status": "ok", "model": "b + h", "category": category, "image_auroc": image, "pixel_auroc": pixel,
                "fit_seconds": fit}
    table = markdown_tables([record("bottle", 0.99049, 0.9512, 12.4), record("tile", 1.0, None, 300.6),
                             {"status": "error", "model": "b + x", "category": "bottle", "error": "boom"}])
    assert "| model | bottle | tile |" in table
    assert "| b + h | 0.990 / 0.951 / 12 | 1.000 / - / 301 |" in table
    assert "| b + x | - | - |" in table
    assert "### pointing (map maximum on the defect)" in table  # records without it: "-" cells
