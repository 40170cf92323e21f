"""The resumable score store of `vqc predict --ray`: scores as Parquet parts in OUT/scores/.

Owns writing parts whole (temporary name, sync, rename), knowing which paths are stored so a
rerun skips them, one writer per folder, and OUT/scores.csv in the local `predict`'s columns.
Needs pyarrow, not Ray: the store is read and written by the driver only.
"""
from __future__ import annotations

import csv
import fcntl
import os
import time
import uuid
from pathlib import Path

from ..errors import VqcError
from ..files import atomic_path
from ..result import SCORE_COLUMNS
from ..scorefiles import SCORE_FILE_COLUMNS, score_file_row


class ScoreStore:
    """Scores as Parquet parts in one folder (`pandas.read_parquet(folder)` reads them all).

    A part is written to a temporary name, synced and renamed, so it either holds all its rows or
    does not exist; temporary files of a killed run are removed on opening, and their images are
    scored again. Every path is written once: paths in stored parts, and paths already written
    in this run, are skipped. One run at a time per folder (a lock file says so)."""

    PART_GLOB = "part-*.parquet"

    def __init__(self, folder: Path, part_rows: int = 10_000, part_seconds: float = 15.0):
        import pyarrow as pa
        self.folder, self.part_rows, self.part_seconds = Path(folder), part_rows, part_seconds
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.folder / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise VqcError(f"another run is writing scores to {self.folder}") from None
        try:
            for leftover in self.folder.glob(".part-*.tmp"):
                leftover.unlink()
            self.done = self._stored_paths()
        except BaseException:
            self._lock.close()
            raise
        types = {"score": pa.float64(), "normalised_score": pa.float64()}  # the rest are text
        self.schema = pa.schema([(name, types.get(name, pa.string())) for name in SCORE_COLUMNS])  # as scores.csv
        self.rows: list[tuple] = []
        self.run, self.parts, self.last_flush = uuid.uuid4().hex[:8], 0, time.monotonic()

    def _stored_paths(self) -> set[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq
        done: set[str] = set()
        for part in sorted(self.folder.glob(self.PART_GLOB)):
            try:
                done.update(pq.read_table(part, columns=["path"]).column("path").to_pylist())
            except (pa.ArrowException, OSError) as exc:
                raise VqcError(f"score part {part} cannot be read ({exc}); remove it to score its images again") from None
        return done

    def add(self, path: str, score: float, normalised_score: float, verdict: str | None,
            warning: str | None = None) -> bool:
        """Buffer one row; False (and nothing written) if the path is already stored."""
        if path in self.done:
            return False
        self.done.add(path)
        self.rows.append((path, score, normalised_score, verdict, warning))
        if len(self.rows) >= self.part_rows or time.monotonic() - self.last_flush >= self.part_seconds:
            self.flush()
        return True

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        self.last_flush = time.monotonic()
        if not self.rows:
            return
        table = pa.Table.from_pylist([dict(zip(self.schema.names, row)) for row in self.rows], self.schema)
        with atomic_path(self.folder / f"part-{self.run}-{self.parts:06d}.parquet") as tmp:
            pq.write_table(table, tmp)
            with open(tmp, "rb") as written:  # on disk before the rename makes it count as stored
                os.fsync(written.fileno())
        self.parts += 1
        self.rows = []

    def close(self) -> None:
        self.flush()
        self._lock.close()

    def write_csv(self, path: Path) -> int:
        """All stored rows as one CSV, in the local `predict`'s columns and number format; the
        overlay column is empty (the store holds scores only)."""
        import pyarrow.parquet as pq
        count = 0
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, SCORE_FILE_COLUMNS)
            writer.writeheader()
            for part in sorted(self.folder.glob(self.PART_GLOB)):
                for row in pq.read_table(part).to_pylist():
                    writer.writerow(score_file_row(row))
                    count += 1
        return count
