"""The records database on SQLite and on a real PostgreSQL server: rows, queries, stats, export, schema."""
import csv
import hashlib
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import sqlalchemy as sa

from vqc.errors import VqcError
from vqc.records import COLUMNS, Base, Filters, Records, parse_time

T0 = datetime(2026, 11, 29, 5, 30, tzinfo=timezone.utc)


def _row(minutes: float, score: float, verdict: str | None, station: str | None = "cam1", **extra) -> dict:
    sha = hashlib.sha256(str(minutes).encode()).hexdigest()
    return {"inspected_at": T0 + timedelta(minutes=minutes), "station": station, "part_id": extra.get("part_id"),
            "filename": "part.png", "sha256": sha, "width": 640, "height": 480, "size_bytes": 1234, "score": score,
            "normalised_score": score / 2, "verdict": verdict, "threshold": 2.0, "policy": "f1",
            "model_name": "bottle", "model_version": "abc123def456", "model_sha256": "f" * 64,
            "vqc_version": "0.1.0", "engine": "onnx", "latency_ms": 12.5}


# 05:30 ok, 05:50 defective, 06:10 ok (cam2), 06:40 defective, 07:20 ok, 22:10 defective (night shift)
ROWS = [_row(0, 1.0, "ok"), _row(20, 3.0, "defective"), _row(40, 1.5, "ok", station="cam2"),
        _row(70, 2.5, "defective", part_id="P-17"), _row(110, 0.5, "ok"), _row(16 * 60 + 40, 4.0, "defective")]


@pytest.fixture
def records(db_url):
    records = Records(db_url)
    yield records
    records.close()


def test_rows_are_kept_whole_and_found_by_every_filter(records):
    ids = records.add(ROWS)
    assert len(ids) == len(ROWS) and ids == sorted(ids) and records.count() == len(ROWS)
    stored = records.get(ids[3])
    assert {k: stored[k] for k in ROWS[3]} == ROWS[3]  # every value back, the time in UTC with its zone
    assert stored["inspected_at"].tzinfo is not None and stored["image_path"] is None

    def found(**kw):
        return [r["id"] for r in records.find(Filters(**kw))]
    assert found() == ids[::-1]  # newest first
    assert found(verdict="defective") == [ids[5], ids[3], ids[1]]
    assert found(station="cam2") == [ids[2]]
    assert found(min_score=1.5, max_score=3.0) == [ids[3], ids[2], ids[1]]
    assert found(since=T0 + timedelta(minutes=40), until=T0 + timedelta(minutes=110)) == [ids[3], ids[2]]
    berlin = timezone(timedelta(hours=1))  # the same instant named in another zone finds the same rows
    assert found(since=(T0 + timedelta(minutes=40)).astimezone(berlin)) == [ids[5], ids[4], ids[3], ids[2]]
    with pytest.raises(VqcError, match="verdict must be one of"):
        found(verdict="bad")

    first = records.find(limit=4)
    rest = records.find(limit=4, before=first[-1]["id"])
    assert [r["id"] for r in first + rest] == ids[::-1]
    assert records.get(10**9) is None


def test_stats_per_hour_and_per_shift(records):
    records.add(ROWS)
    hours = records.stats()
    assert [(b["start"], b["inspections"], b["defective"]) for b in hours] == [
        ("2026-11-29T05:00:00+00:00", 2, 1), ("2026-11-29T06:00:00+00:00", 2, 1),
        ("2026-11-29T07:00:00+00:00", 1, 0), ("2026-11-29T22:00:00+00:00", 1, 1)]
    assert hours[0]["reject_rate"] == 0.5 and hours[2]["reject_rate"] == 0.0
    shifts = records.stats(by="shift", shifts=(6, 14, 22))
    assert [(b["start"], b["inspections"], b["defective"]) for b in shifts] == [
        ("2026-11-28T22:00:00+00:00", 2, 1), ("2026-11-29T06:00:00+00:00", 3, 1), ("2026-11-29T22:00:00+00:00", 1, 1)]
    # in Berlin (UTC+1 in November) 05:30 UTC is 06:30, inside the morning shift
    berlin = records.stats(by="shift", shifts=(6, 14, 22), tz="Europe/Berlin")
    assert [(b["start"], b["inspections"]) for b in berlin] == [
        ("2026-11-29T06:00:00+01:00", 5), ("2026-11-29T22:00:00+01:00", 1)]
    assert records.stats(Filters(station="cam2"))[0]["inspections"] == 1
    with pytest.raises(VqcError, match="unknown time zone"):
        records.stats(tz="Mars/Olympus")
    with pytest.raises(VqcError, match="within 0-23"):
        records.stats(by="shift", shifts=(6, 25))


def test_export_csv_and_parquet(records, tmp_path):
    import pyarrow.parquet as pq
    ids = records.add(ROWS)
    since = Filters(since=parse_time("2026-11-29T06:00:00"))
    assert records.export(tmp_path / "x.csv", "csv", since) == 4
    rows = list(csv.DictReader(open(tmp_path / "x.csv")))
    assert list(rows[0]) == COLUMNS and [int(r["id"]) for r in rows] == ids[2:]
    assert float(rows[1]["score"]) == 2.5 and rows[1]["part_id"] == "P-17" and rows[0]["part_id"] == ""
    assert datetime.fromisoformat(rows[0]["inspected_at"]) == T0 + timedelta(minutes=40)
    assert records.export(tmp_path / "x.parquet", "parquet", since) == 4
    table = pq.read_table(tmp_path / "x.parquet").to_pylist()
    assert [r["id"] for r in table] == ids[2:] and table[1]["score"] == 2.5
    assert table[0]["inspected_at"] == T0 + timedelta(minutes=40)
    assert records.export(tmp_path / "none.parquet", "parquet", Filters(station="nowhere")) == 0
    assert pq.read_table(tmp_path / "none.parquet").num_rows == 0
    with pytest.raises(VqcError, match="csv or parquet"):
        records.export(tmp_path / "x.xlsx", "xlsx")
    assert not (tmp_path / "x.xlsx").exists()


def test_schema_is_versioned_and_foreign_or_newer_databases_are_refused(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    import vqc.store.tables  # noqa: F401  the model store's tables, on the same metadata
    records = Records(db_url)
    with records.database.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == "0002"
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []  # migration = model
    records.add(ROWS[:1])
    Records(db_url).close()  # opening again changes nothing
    assert records.count() == 1
    with records.database.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(VqcError, match="schema revision 0099, written by a newer vqc"):
        Records(db_url)
    with records.database.begin() as connection:
        connection.execute(sa.text("DROP TABLE alembic_version"))
    with pytest.raises(VqcError, match="inspections table that vqc did not make"):
        Records(db_url)
    records.close()


def test_a_database_from_before_the_model_store_is_upgraded_with_its_rows(db_url):
    """Revision 0001 (inspections only), rows in it, then this vqc opens it: 0002, every row kept."""
    from alembic import command
    from alembic.config import Config

    from vqc.records import MIGRATIONS, Inspection, database_for
    database = database_for(db_url)
    with database.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(sa.insert(Inspection), [{**row, "image_path": None, "overlay_path": None} for row in ROWS])
    assert not sa.inspect(database).has_table("reviews")
    database.dispose()
    records = Records(db_url)
    assert records.count() == len(ROWS) and records.find(limit=1)[0]["score"] == ROWS[-1]["score"]
    assert {"model_versions", "deployments", "audit", "reviews", "shadow_scores"} <= set(
        sa.inspect(records.database).get_table_names())
    records.close()


def test_bad_database_urls_are_one_line_errors_without_the_password():
    with pytest.raises(VqcError, match="not a URL") as error:
        Records("postgresql://u:s3cret@host:notaport/db")
    assert "s3cret" not in str(error.value) and "u:***@host" in str(error.value)
    with pytest.raises(VqcError, match="no driver"):
        Records("oracle+nothing://u@host/db")
    with pytest.raises(VqcError, match="cannot open database") as error:
        Records("postgresql://vqc:s3cret@127.0.0.1:1/records")
    assert "s3cret" not in str(error.value) and "\n" not in str(error.value)


def test_images_of_defects_and_a_sample_of_good_parts_are_kept(tmp_path):
    drawn = []

    def draw():
        drawn.append(1)
        return np.zeros((4, 4, 3), np.uint8)
    rows = [_row(i, 1.0, "ok") for i in range(200)] + [_row(300, 9.0, "defective")]
    none = Records(tmp_path / "a.sqlite", tmp_path / "store-a", keep_good=0.0)
    none.add(rows, [(b"png bytes", draw)] * len(rows))
    kept = [r for r in none.find(limit=1000) if r["image_path"]]
    assert [r["verdict"] for r in kept] == ["defective"] and len(drawn) == 1
    assert (tmp_path / "store-a" / kept[0]["image_path"]).read_bytes() == b"png bytes"
    assert none.stored_file(kept[0]["overlay_path"]).suffix == ".png"
    sample = Records(tmp_path / "b.sqlite", tmp_path / "store-b", keep_good=0.1)
    sample.add(rows, [(b"png bytes", draw)] * len(rows))
    good_kept = sum(bool(r["image_path"]) for r in sample.find(Filters(verdict="ok"), limit=1000))
    assert 5 <= good_kept <= 40  # about 10 % of 200, decided by each image's hash
    with pytest.raises(VqcError, match="between 0 and 1"):
        Records(tmp_path / "c.sqlite", keep_good=2)
