"""What `vqc predict` writes: scores.csv and overlays as images are scored, unreadable.csv, and
the watched camera folder. Runtime part (no torch); the command line only parses and prints."""
from __future__ import annotations

import collections
import csv
import io
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from .data import IMAGE_SUFFIXES
from .errors import VqcError
from .files import write_text_atomic
from .inspection import inspect_files
from .result import SCORE_COLUMNS
from .viz import save_png


SCORE_FILE_COLUMNS = (*SCORE_COLUMNS, "overlay")  # scores.csv, local or from `predict --ray`


def score_file_row(row: dict, overlay: str | Path = "") -> dict:
    """A row (InspectionResult.csv_row) as scores.csv holds it: scores to 6 and 4 digits, no verdict or warning as empty."""
    return {**row, "score": f"{row['score']:.6g}", "normalised_score": f"{row['normalised_score']:.4f}",
            "verdict": row["verdict"] or "", "warning": row["warning"] or "", "overlay": overlay}


def common_folder(images: list[Path]) -> Path:
    """The deepest folder that holds every image: overlays keep their paths below it, so two
    inputs of one name in different folders never share an overlay."""
    return Path(os.path.commonpath([str(p.resolve().parent) for p in images]))


def write_unreadable(path: Path, unreadable: list[tuple[Path, str]]) -> Path:
    text = io.StringIO()
    table = csv.writer(text)
    table.writerow(["path", "error"])
    table.writerows(unreadable)
    write_text_atomic(path, text.getvalue())
    return path


class ScoreWriter:
    """Appends one CSV row per inspected image as soon as it is scored (whole lines, flushed), and
    its overlay at the image's path below `base` (its name, .png); the file is only created once
    the first image has been scored. Each image is concluded by `judge` (vqc.live.Judge) first:
    when the judge records, its row is committed before the CSV row is written."""

    def __init__(self, path: Path, judge, base: Path, overlays: bool, station: str | None = None):
        self.path, self.judge, self.base, self.overlays = path, judge, base.resolve(), overlays
        self.model = judge.model
        self.file, self.station = None, station
        self.verdicts: collections.Counter = collections.Counter()  # rows written per verdict (None: no threshold)

    def verdict_counts(self) -> str:
        """The rows written so far by verdict, as the command prints them."""
        counted = [f"{self.verdicts['defective']} defective", f"{self.verdicts['ok']} ok"]
        if self.verdicts[None]:
            counted.append(f"{self.verdicts[None]} without a verdict (the model has no threshold)")
        return ", ".join(counted)

    def overlay_path(self, image: Path) -> Path:
        """overlays/<path below base>, ending .png (a.png -> a.png, a.jpg -> a.jpg.png: never shared)."""
        try:
            relative = image.resolve().relative_to(self.base)
        except ValueError:  # outside the base (a watched folder's link): its name alone
            relative = Path(image.name)
        name = relative.name if relative.suffix.lower() == ".png" else relative.name + ".png"
        return Path("overlays") / relative.parent / name

    def write(self, inspected) -> int:
        count = 0
        for item in inspected:
            pred = item.prediction
            item.part = replace(item.part, station=self.station)
            result = self.judge.conclude([item])[0]
            if self.file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fresh = not self.path.exists()
                self.file = open(self.path, "a", newline="")
                self.csv = csv.DictWriter(self.file, SCORE_FILE_COLUMNS)
                if fresh:
                    self.csv.writeheader()
            overlay = ""
            if self.overlays:
                overlay = self.overlay_path(pred.path)
                save_png(self.path.parent / overlay, item.overlay(*self.model.normal_range()))
            if pred.warning:
                print(f"vqc: warning: {pred.path}: {pred.warning}", file=sys.stderr)
            row = result.csv_row(str(pred.path))
            self.csv.writerow(score_file_row(row, overlay))
            self.file.flush()
            self.verdicts[row["verdict"]] += 1
            count += 1
        return count

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


EMPTY_FILE_GRACE_S = 5.0  # a camera writing in two steps leaves a zero-byte file for a moment, not longer


def watch_folder(folder: Path, writer: ScoreWriter, interval: float, rounds: int | None = None) -> None:
    """Score images that appear in `folder`, once each; a file counts as complete once its size
    has stayed the same for one polling interval (a camera may still be writing it). A file still
    empty after EMPTY_FILE_GRACE_S (or five looks) is reported once, and scored if it fills later."""
    seen: set[Path] = set()
    sizes: dict[Path, int] = {}
    empty_since: dict[Path, tuple[float, int]] = {}  # first seen empty: time, look number
    reported_empty: set[Path] = set()
    look = 0

    def skip(path, exc):
        print(f"vqc: skipped: {exc}", file=sys.stderr)  # one bad file must not stop the line

    while rounds is None or look < rounds:
        ready = []
        now = time.monotonic()
        for path in sorted(folder.iterdir()):
            if path in seen or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            size = path.stat().st_size
            if size == 0:
                since, first_look = empty_since.setdefault(path, (now, look))
                if path not in reported_empty and (now - since >= EMPTY_FILE_GRACE_S or look - first_look >= 5):
                    reported_empty.add(path)
                    print(f"vqc: skipped: {path} is empty (0 bytes) since {now - since:.0f} s; "
                          "it is scored if it gets written", file=sys.stderr)
            elif sizes.get(path) == size:
                ready.append(path)
            sizes[path] = size
        for path in ready:
            seen.add(path)
            try:
                writer.write(inspect_files(writer.model, [path], on_unreadable=skip))
            except VqcError as exc:  # e.g. scored but not recorded: said, and the line goes on
                print(f"vqc: skipped: {exc}", file=sys.stderr)
        look += 1
        time.sleep(interval)
