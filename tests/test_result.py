"""One judged part, four outputs: the score file's row, the records' row, the service's answer
and the PLC's payload are all made from one InspectionResult and agree."""
import csv
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from vqc.cli import main
from vqc.data import read_split
from vqc.engines import EngineSettings
from vqc.live import JudgeOptions, LiveModels, open_judge
from vqc.records import ModelIdentity, Records
from vqc.result import InspectionResult, Part
from vqc.serve import create_app
from vqc.station.config import SourceConfig, StationConfig
from vqc.station.sources import FolderSource
from vqc.station.station import Station
from vqc.threshold import Threshold, Verdict

PLC = {"ok": "OK", "defective": "NG"}


class _Prediction:
    def __init__(self, score, verdict):
        self.score, self.normalised_score, self.verdict, self.warning = score, score / 2, verdict, None


class _Model:
    threshold = Threshold(1.5, "manual", {"note": "set by hand"})

    def normalise(self, score):
        return score / 2


@pytest.mark.parametrize("score", [1.0, 1.5, 2.0])
def test_each_output_of_one_result_says_the_same_verdict_score_and_threshold(score):
    verdict = _Model.threshold.judge(score)
    assert verdict == (Verdict.DEFECTIVE if score >= 1.5 else Verdict.OK)
    identity = ModelIdentity("tiles", "abc", "abc" * 20, "onnx")
    part = Part("p.png", b"png bytes", (20, 30, 3), "cam1", "A-1", datetime(2026, 12, 6, tzinfo=timezone.utc))
    result = InspectionResult.of(_Prediction(score, verdict), _Model(), identity, part, 4.0).recorded(7)
    csv_row, row, answer, payload = result.csv_row(), result.record_row(), result.http_answer(), result.plc_payload()
    assert csv_row["verdict"] == row["verdict"] == answer["verdict"] == verdict.value
    assert payload["result"] == PLC[verdict.value]
    assert csv_row["score"] == row["score"] == answer["score"] == payload["score"] == score
    assert row["threshold"] == answer["threshold"] == payload["threshold"] == 1.5
    assert row["policy"] == answer["policy"] == payload["policy"] == "manual"
    assert answer["normalised_threshold"] == 0.75 and answer["id"] == payload["inspection_id"] == 7
    assert (row["width"], row["height"]) == (answer["width"], answer["height"]) == (30, 20)


def test_a_part_that_got_no_verdict_is_an_error_for_the_plc():
    identity = ModelIdentity("tiles", "abc", "abc" * 20, "onnx")
    payload = InspectionResult.failed("camera lost", identity, _Model.threshold, "cam1", "A-2").plc_payload()
    assert (payload["result"], payload["score"], payload["error"], payload["threshold"]) == \
        ("ERROR", None, "camera lost", 1.5)


class _Plc:
    """What a PLC link hears of a station: its result payloads."""

    def __init__(self):
        self.results = []

    def signal_result(self, station, payload):
        self.results.append(payload)

    def signal_error(self, station, text):
        pass


def _station_payload(model: Path, image: Path, folder: Path, db: str) -> dict:
    folder.mkdir()
    (folder / image.name).write_bytes(image.read_bytes())
    time.sleep(0.3)  # a folder camera takes a file once it has stopped changing
    records = Records(db, folder.parent / "station-images", 1.0)
    judge = open_judge(model, JudgeOptions(EngineSettings("torch")), records)
    config = StationConfig("cam1", model, SourceConfig(kind="folder", folder=folder))
    plc = _Plc()
    station = Station(config, LiveModels(judge), FolderSource(config.source), [plc], [])
    station.source.open()
    station.take("A-1", time.perf_counter())
    records.close()
    return plc.results[0]


def test_the_service_a_station_predict_and_the_records_agree_on_one_part(demo_model_file, demo_root, tmp_path):
    image = next(s.path for s in read_split(demo_root, "test") if s.label == 1)
    db = f"sqlite:///{tmp_path / 'records.sqlite'}"
    with TestClient(create_app(demo_model_file, engine=EngineSettings("torch"), db=db,
                               image_store=str(tmp_path / "images"))) as client:
        answer = client.post("/v1/inspect", files={"file": (image.name, image.read_bytes())}).json()
    payload = _station_payload(Path(demo_model_file), image, tmp_path / "camera", db)
    out = tmp_path / "predicted"
    assert main(["predict", str(demo_model_file), str(image), "--out", str(out), "--engine", "torch",
                 "--db", db, "--no-overlays"]) == 0
    (csv_row,) = list(csv.DictReader(open(out / "scores.csv")))
    records = Records(db, create=False)
    rows = {row["id"]: row for row in records.find()}
    records.close()
    assert len(rows) == 3  # the service's, the station's and predict's
    assert {row["verdict"] for row in rows.values()} == {answer["verdict"], csv_row["verdict"]}
    assert payload["result"] == PLC[answer["verdict"]]
    for row in rows.values():
        assert row["score"] == pytest.approx(answer["score"], rel=1e-6)
        assert row["threshold"] == answer["threshold"] == payload["threshold"]
    assert payload["score"] == pytest.approx(answer["score"], rel=1e-6)
    assert float(csv_row["score"]) == pytest.approx(answer["score"], rel=1e-5)  # the CSV keeps 6 digits
    assert rows[answer["id"]]["filename"] == image.name and rows[payload["inspection_id"]]["station"] == "cam1"
