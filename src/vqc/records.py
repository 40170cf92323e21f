"""Inspection records: one row per inspected image in a SQL database, images kept in a folder.

SQLite by default (a file beside the model, no setup) or any SQLAlchemy URL, PostgreSQL through
psycopg 3. The schema is versioned with Alembic (src/vqc/migrations): opening a database creates
it, upgrades one written by an older vqc, and refuses one written by a newer vqc or by something
else, with a message naming the database. A row is committed before `add` returns, so whoever
answers after `add` never answers for an inspection that is not on record.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .version import __version__
from .bundle import MANIFEST
from .data import IMAGE_SUFFIXES
from .errors import VqcError, first_line
from .files import atomic_path
from .threshold import Verdict

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
VERDICTS = (Verdict.OK.value, Verdict.DEFECTIVE.value)  # what a recorded verdict can be
EXPORT_FORMATS = ("csv", "parquet")


class UTCDateTime(sa.TypeDecorator):
    """Aware UTC datetimes in and out, whatever the database keeps (SQLite keeps no zone)."""
    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("inspection times must carry a time zone")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# BIGINT on servers (a line runs for years); SQLite's INTEGER PRIMARY KEY is already 64-bit rowid
RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Inspection(Base):
    """One inspected image. Changing this needs a new migration in src/vqc/migrations/versions."""
    __tablename__ = "inspections"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    inspected_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    station: Mapped[str | None] = mapped_column(sa.String(100), index=True)
    part_id: Mapped[str | None] = mapped_column(sa.String(100))
    filename: Mapped[str | None] = mapped_column(sa.String(255))
    sha256: Mapped[str] = mapped_column(sa.String(64))
    width: Mapped[int] = mapped_column(sa.Integer)
    height: Mapped[int] = mapped_column(sa.Integer)
    size_bytes: Mapped[int] = mapped_column(sa.Integer)
    score: Mapped[float] = mapped_column(sa.Double)
    normalised_score: Mapped[float] = mapped_column(sa.Double)
    verdict: Mapped[str | None] = mapped_column(sa.String(16))  # None: the model had no threshold
    threshold: Mapped[float | None] = mapped_column(sa.Double)
    policy: Mapped[str | None] = mapped_column(sa.String(100))
    model_name: Mapped[str] = mapped_column(sa.String(255))
    model_version: Mapped[str] = mapped_column(sa.String(64))
    model_sha256: Mapped[str] = mapped_column(sa.String(64))  # the whole model file (the bundle)
    vqc_version: Mapped[str] = mapped_column(sa.String(32))
    engine: Mapped[str] = mapped_column(sa.String(16))
    latency_ms: Mapped[float] = mapped_column(sa.Double)
    image_path: Mapped[str | None] = mapped_column(sa.String(255))  # relative to the image store
    overlay_path: Mapped[str | None] = mapped_column(sa.String(255))


COLUMNS = [c.name for c in Inspection.__table__.columns]


@dataclass(frozen=True)
class ModelIdentity:
    """What a record says about the model that judged: file stem, short and full file hash, engine."""
    name: str
    version: str
    sha256: str
    engine: str

    @classmethod
    def of(cls, path: str | Path, engine: str) -> "ModelIdentity":
        """A model file's hash, or a line bundle's (its manifest's, which holds the graph's hash)."""
        path = Path(path)
        digest = hashlib.sha256((path / MANIFEST if path.is_dir() else path).read_bytes()).hexdigest()
        return cls(path.name if path.is_dir() else path.stem, digest[:12], digest, engine)


@dataclass(frozen=True)
class Filters:
    since: datetime | None = None
    until: datetime | None = None
    station: str | None = None
    verdict: str | None = None
    min_score: float | None = None
    max_score: float | None = None

    def where(self) -> list:
        c = Inspection
        clauses = []
        if self.since is not None:
            clauses.append(c.inspected_at >= as_utc(self.since))
        if self.until is not None:
            clauses.append(c.inspected_at < as_utc(self.until))
        if self.station is not None:
            clauses.append(c.station == self.station)
        if self.verdict is not None:
            if self.verdict not in VERDICTS:
                raise VqcError(f"verdict must be one of {', '.join(VERDICTS)} (got {self.verdict!r})")
            clauses.append(c.verdict == self.verdict)
        if self.min_score is not None:
            clauses.append(c.score >= self.min_score)
        if self.max_score is not None:
            clauses.append(c.score <= self.max_score)
        return clauses


def as_utc(moment: datetime) -> datetime:
    """Times without a zone are taken as UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or date and time (UTC unless it names a zone)."""
    try:
        return as_utc(datetime.fromisoformat(text))
    except ValueError:
        raise VqcError(f"time {text!r} is not ISO 8601, e.g. 2026-11-29 or 2026-11-29T06:00:00+01:00") from None


def default_locations(path: str | Path) -> tuple[str, Path]:
    """The records of a model file (or of a station's line file) when none are named: the SQLite
    file NAME.records.sqlite and the image store NAME-images/ beside it."""
    path = Path(path).resolve()
    return f"sqlite:///{path.with_name(path.stem + '.records.sqlite')}", path.with_name(path.stem + "-images")


def database_for(url: str | Path) -> sa.Engine:
    """The database at a URL (a bare path is a SQLite file), as a SQLAlchemy engine; PostgreSQL
    goes through psycopg 3."""
    url = str(url)
    if "://" not in url:
        url = f"sqlite:///{Path(url).resolve()}"
    try:
        parsed = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        hidden = re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)  # no password in a message
        raise VqcError(f"database {hidden!r} is not a URL such as sqlite:///records.sqlite or "
                       "postgresql://user@host/dbname") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    shown = parsed.render_as_string(hide_password=True)
    try:
        if parsed.get_backend_name() == "sqlite":
            database = sa.create_engine(parsed, connect_args={"timeout": 30})
            sa.event.listen(database, "connect", _sqlite_pragmas)
        else:
            # pre-ping: a restarted database server costs a reconnect, not a failed inspection
            timeout = {"connect_timeout": 10} if parsed.get_backend_name() == "postgresql" else {}
            database = sa.create_engine(parsed, pool_pre_ping=True, pool_size=8, max_overflow=8,
                                        connect_args=timeout)
    except (sa.exc.NoSuchModuleError, ModuleNotFoundError) as exc:
        raise VqcError(f"database {shown}: no driver ({exc}); for PostgreSQL: pip install 'psycopg[binary]'") from None
    return database


def _sqlite_pragmas(connection, _record) -> None:
    # WAL: readers (queries, exports, another process) never block the writer; synchronous=FULL:
    # a committed row survives a power cut, not only a killed process
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _alembic_config(connection):
    from alembic.config import Config
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def migrate(database: sa.Engine) -> None:
    """Bring the database's schema to this vqc's revision, or refuse with the reason."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    shown = database.url.render_as_string(hide_password=True)
    try:
        with database.begin() as connection:
            config = _alembic_config(connection)
            scripts = ScriptDirectory.from_config(config)
            head = scripts.get_current_head()
            current = MigrationContext.configure(connection).get_current_revision()
            if current == head:
                return
            if current is None and sa.inspect(connection).has_table(Inspection.__tablename__):
                raise VqcError(f"database {shown} has an inspections table that vqc did not make (no schema "
                               "version); give vqc a database of its own")
            known = {script.revision for script in scripts.walk_revisions()}
            if current is not None and current not in known:
                raise VqcError(f"database {shown} has schema revision {current}, written by a newer vqc; "
                               f"this vqc {__version__} knows revisions up to {head}: upgrade vqc")
            log.log(logging.WARNING if current else logging.INFO, "database %s: schema %s -> %s", shown,
                    current or "(new)", head)
            command.upgrade(config, "head")
    except sa.exc.OperationalError as exc:
        raise VqcError(f"cannot open database {shown}: {first_line(exc.orig)}") from None


class Records:
    """Inspection rows in a database; images of defective parts (and a sample of good ones) with
    their overlays in `image_store`, each file named by the image's SHA-256 and referenced from its row."""

    def __init__(self, url: str | Path, image_store: str | Path | None = None, keep_good: float = 0.0,
                 create: bool = True):
        """create=False: a SQLite file must exist already (a mistyped path is an error, not a new database)."""
        if not 0 <= keep_good <= 1:
            raise VqcError(f"keep-good is the share of good images kept, between 0 and 1 (got {keep_good})")
        self.database = database_for(url)
        self.url = self.database.url.render_as_string(hide_password=True)
        file = self.database.url.database
        if self.database.dialect.name == "sqlite" and file and file != ":memory:" and not Path(file).exists():
            if not create:
                raise VqcError(f"database file {file} does not exist")
            Path(file).parent.mkdir(parents=True, exist_ok=True)
        migrate(self.database)
        self.image_store = Path(image_store) if image_store else None
        self.keep_good = keep_good

    def close(self) -> None:
        self.database.dispose()

    # ------------------------------------------------------------ writing

    def keeps_image(self, verdict: str | None, sha256: str) -> bool:
        """Defective images always; good ones when their hash falls in the sample, so the same
        image is kept or not whichever process sees it, with no random state."""
        if self.image_store is None:
            return False
        return verdict == "defective" or int(sha256[:8], 16) < self.keep_good * 2**32

    def add(self, rows: list[dict], images: Sequence[tuple[bytes, Callable[[], np.ndarray]]] | None = None,
            overlays_later: Callable[[Callable[[], None]], object] | None = None) -> list[int]:
        """Insert rows in one transaction and commit; return their ids. `images`: per row, the encoded
        image and a function drawing its overlay, called only for images that are kept. Files are
        written before the commit: a crash may leave an unreferenced file, never a row pointing at
        its image missing. `overlays_later` (an executor's submit, say) takes the drawing of overlays
        off the caller's time: the overlay, a picture drawn from the image, follows the commit."""
        rows = [{**row, "image_path": None, "overlay_path": None} for row in rows]  # executemany: same keys
        for row, (data, draw_overlay) in zip(rows, images or []):
            if self.keeps_image(row["verdict"], row["sha256"]):
                row["image_path"], row["overlay_path"] = self._store(row, data, draw_overlay, overlays_later)
        with self.database.begin() as connection:
            result = connection.execute(sa.insert(Inspection).returning(Inspection.id, sort_by_parameter_order=True),
                                        rows)
            return [row_id for (row_id,) in result]

    def _store(self, row: dict, data: bytes, draw_overlay, overlays_later=None) -> tuple[str, str]:
        from .viz import save_png
        folder = row["inspected_at"].strftime("%Y-%m-%d")
        suffix = Path(row["filename"] or "").suffix.lower()
        image = f"{folder}/{row['sha256']}{suffix if suffix in IMAGE_SUFFIXES else '.img'}"
        overlay = f"{folder}/{row['sha256']}.{row['model_version']}.overlay.png"
        target = self.image_store / image
        if not target.exists():
            with atomic_path(target) as tmp:
                tmp.write_bytes(data)
        if not (self.image_store / overlay).exists():
            def write_overlay():
                save_png(self.image_store / overlay, draw_overlay())
            write_overlay() if overlays_later is None else overlays_later(write_overlay)
        return image, overlay

    # ------------------------------------------------------------ reading

    def find(self, filters: Filters = Filters(), limit: int = 100, before: int | None = None) -> list[dict]:
        """Newest first; `before`: only rows with a smaller id (the cursor of the next page)."""
        query = sa.select(Inspection.__table__).where(*filters.where())
        if before is not None:
            query = query.where(Inspection.id < before)
        query = query.order_by(Inspection.id.desc()).limit(limit)
        with self.database.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def get(self, inspection_id: int) -> dict | None:
        with self.database.connect() as connection:
            row = connection.execute(sa.select(Inspection.__table__).where(Inspection.id == inspection_id)).first()
        return dict(row._mapping) if row else None

    def stored_file(self, relative: str | None) -> Path | None:
        if not relative or self.image_store is None:
            return None
        path = self.image_store / relative
        return path if path.is_file() else None

    def count(self) -> int:
        with self.database.connect() as connection:
            return connection.execute(sa.select(sa.func.count()).select_from(Inspection)).scalar_one()

    def recent_scores(self, model_sha256: str, n: int) -> list[float]:
        """The last n scores given by this model file, oldest first."""
        query = (sa.select(Inspection.score).where(Inspection.model_sha256 == model_sha256)
                 .order_by(Inspection.id.desc()).limit(n))
        with self.database.connect() as connection:
            return [score for (score,) in connection.execute(query)][::-1]

    def ping(self) -> None:
        with self.database.connect() as connection:
            connection.execute(sa.select(1))

    def stats(self, filters: Filters = Filters(), by: str = "hour", shifts: Sequence[int] = (6, 14, 22),
              tz: str = "UTC") -> list[dict]:
        """Counts and reject rate per hour or per shift (shifts start at the given hours of the
        day in time zone `tz`). The database counts per UTC hour; hours are folded into shifts here."""
        if by not in ("hour", "shift"):
            raise VqcError(f"stats are per hour or per shift (got {by!r})")
        if not shifts or any(not 0 <= h <= 23 for h in shifts):
            raise VqcError(f"shift start hours must be within 0-23 (got {list(shifts)})")
        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise VqcError(f"unknown time zone {tz!r}; use a name such as UTC or Europe/Berlin") from None
        hour = self._hour_bucket()
        query = (sa.select(hour.label("hour"), Inspection.verdict, sa.func.count().label("n"))
                 .where(*filters.where()).group_by(hour, Inspection.verdict).order_by(hour))
        buckets: dict[datetime, dict] = {}
        with self.database.connect() as connection:
            for start, verdict, n in connection.execute(query):
                start = _utc_hour(start).astimezone(zone)
                key = start if by == "hour" else _shift_start(start, sorted(set(shifts)))
                bucket = buckets.setdefault(key, {"start": key.isoformat(), "inspections": 0, "ok": 0,
                                                  "defective": 0, "no_verdict": 0})
                bucket["inspections"] += n
                bucket[verdict or "no_verdict"] += n
        for bucket in buckets.values():
            judged = bucket["ok"] + bucket["defective"]
            bucket["reject_rate"] = bucket["defective"] / judged if judged else None
        return [buckets[key] for key in sorted(buckets)]

    def _hour_bucket(self):
        if self.database.dialect.name == "sqlite":
            return sa.func.strftime("%Y-%m-%d %H:00:00", Inspection.inspected_at)
        return sa.func.date_trunc("hour", sa.func.timezone("UTC", Inspection.inspected_at))

    # ------------------------------------------------------------ export

    def export(self, path: str | Path, fmt: str, filters: Filters = Filters()) -> int:
        """Write the matching rows, oldest first, as CSV or Parquet; return how many."""
        if fmt not in EXPORT_FORMATS:
            raise VqcError(f"export format must be csv or parquet (got {fmt!r})")
        with atomic_path(path) as tmp:
            return (_write_csv if fmt == "csv" else _write_parquet)(tmp, self._batches(filters))

    def _batches(self, filters: Filters, size: int = 10_000) -> Iterator[list[tuple]]:
        query = sa.select(*Inspection.__table__.columns).where(*filters.where()).order_by(Inspection.id)
        with self.database.connect() as connection:
            result = connection.execution_options(yield_per=size).execute(query)
            for part in result.partitions(size):
                yield [tuple(row) for row in part]


def _utc_hour(value) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=timezone.utc)


def _shift_start(moment: datetime, starts: list[int]) -> datetime:
    """The start of the shift that `moment` (local time) falls in; a night shift keeps its first day."""
    earlier = [h for h in starts if h <= moment.hour]
    if earlier:
        return moment.replace(hour=earlier[-1], minute=0, second=0, microsecond=0)
    day_before = moment - timedelta(days=1)
    return day_before.replace(hour=starts[-1], minute=0, second=0, microsecond=0)


def _write_csv(path: Path, batches) -> int:
    count = 0
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for batch in batches:
            writer.writerows([_csv_value(v) for v in row] for row in batch)
            count += len(batch)
    return count


def _csv_value(value):
    if isinstance(value, datetime):
        return value.isoformat()
    return "" if value is None else value


def _write_parquet(path: Path, batches) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    types = {"id": pa.int64(), "inspected_at": pa.timestamp("us", tz="UTC"), "width": pa.int32(),
             "height": pa.int32(), "size_bytes": pa.int64(), "score": pa.float64(),
             "normalised_score": pa.float64(), "threshold": pa.float64(), "latency_ms": pa.float64()}
    schema = pa.schema([(name, types.get(name, pa.string())) for name in COLUMNS])
    count = 0
    with pq.ParquetWriter(str(path), schema) as writer:
        for batch in batches:
            columns = list(zip(*batch)) if batch else [[] for _ in COLUMNS]
            writer.write_table(pa.table([pa.array(col, type=schema.field(i).type) for i, col in enumerate(columns)],
                                        schema=schema))
            count += len(batch)
    return count


def open_records(db: str | None, image_store: str | Path | None, keep_good: float, store=None,
                 beside: str | Path | None = None) -> Records | None:
    """The records a service or a line keeps: `db` ("none": none), else the model store's
    database and images, else a SQLite file and image folder beside `beside` (default_locations)."""
    if db == "none":
        if store is not None:
            raise VqcError("with a model store the records are kept in the store's database: they cannot be turned off")
        return None
    if store is not None:  # reviews, shadow scores and versions sit beside the inspections
        return Records(db or store.records_url, image_store or store.images_folder, keep_good)
    default_db, default_images = default_locations(beside)
    return Records(db or default_db, image_store or default_images, keep_good)
