"""A studio project: one product's images, kept in the model store's folder with their hashes.

`STORE/studio/<name>/` holds project.json (name, target), images.json (every kept image: its
name, where it lies, SHA-256 and what it is) and data/, laid out like an MVTec AD data set, so
fitting and evaluation read it as they read any data set:
data/train/good/ (good images to fit on), data/test/<good|defect>/ (images to check the fit on)
and data/ground_truth/<defect>/<stem>_mask.* (where a defect is, for pixel metrics and pointing).
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from ..data import IMAGE_SUFFIXES, decode_image
from ..errors import VqcError
from ..files import atomic_path, write_text_atomic

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
GOOD_FOLDERS = ("good", "ok")
KINDS = ("good", "test")


@dataclass(frozen=True)
class Placed:
    """Where an uploaded file goes: 'train', 'test' or 'mask', and its folder under data/."""
    role: str
    folder: str
    label: str  # good or defective (masks: defective)
    defect: str  # good, or the defect type


def place(relative_name: str, kind: str) -> Placed:
    """Where a file named `relative_name` (its path inside the dropped folder) belongs. Good images
    go to train/good whatever their folder; test images are labelled by their folder: good or ok
    is good, any other folder names the defect; files under a ground_truth folder are masks."""
    parts = PurePosixPath(relative_name.replace("\\", "/")).parts
    if kind == "good":
        return Placed("train", "train/good", "good", "good")
    folder = parts[-2] if len(parts) > 1 else None
    if folder is None:
        raise VqcError(f"{relative_name}: a test image needs its folder (good, or its defect's name, e.g. "
                       "crack/part.png): drop the folder, not the single file")
    if folder in (".", ".."):
        raise VqcError(f"{relative_name}: a folder named {folder} says no label: name it good or after the defect")
    if "ground_truth" in parts[:-1]:
        return Placed("mask", f"ground_truth/{folder}", "defective", folder)
    if folder.lower() in GOOD_FOLDERS:
        return Placed("test", "test/good", "good", "good")
    return Placed("test", f"test/{folder}", "defective", folder)


class Project:
    def __init__(self, folder: Path):
        self.folder = folder
        self.name = folder.name
        self.lock = threading.Lock()  # uploads of one project are kept one at a time (images.json)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def settings(self) -> dict:
        return json.loads((self.folder / "project.json").read_text())

    def images(self) -> list[dict]:
        path = self.folder / "images.json"
        return json.loads(path.read_text()) if path.is_file() else []

    def counts(self) -> dict:
        rows = self.images()
        return {"train": sum(r["role"] == "train" for r in rows),
                "test_good": sum(r["role"] == "test" and r["label"] == "good" for r in rows),
                "test_defective": sum(r["role"] == "test" and r["label"] == "defective" for r in rows),
                "masks": sum(r["role"] == "mask" for r in rows)}

    def describe(self) -> dict:
        return {**self.settings(), "images": self.counts()}

    def add_files(self, files: list[tuple[str, bytes]], kind: str) -> dict:
        """Keep the images among `files` ((name, bytes) each); say which were duplicates and refuse
        the rest by name, keeping everything else."""
        if kind not in KINDS:
            raise VqcError(f"images are uploaded as good or test (got {kind!r})")
        added, duplicates, refused = [], [], []
        with self.lock:
            rows = self.images()
            known = {(r["role"] == "mask", r["sha256"]): r["name"] for r in rows}
            for name, data in files:
                try:
                    row = self._keep(name, data, kind, known)
                except VqcError as exc:
                    refused.append({"name": name, "reason": str(exc)})
                    continue
                if "duplicate_of" in row:
                    duplicates.append(row)
                    continue
                rows.append(row)
                added.append(row["name"])
            write_text_atomic(self.folder / "images.json", json.dumps(rows, indent=1))
        return {"added": added, "duplicates": duplicates, "refused": refused, "images": self.counts()}

    def _keep(self, name: str, data: bytes, kind: str, known: dict) -> dict:
        placed = place(name, kind)
        if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
            raise VqcError(f"{name} is not an image file (PNG, JPEG, BMP, TIFF or WebP)")
        decode_image(data, name)  # a broken or disguised file is refused by name, never kept
        digest = hashlib.sha256(data).hexdigest()
        key = (placed.role == "mask", digest)
        if key in known:
            return {"name": name, "duplicate_of": known[key]}
        target = self._free_path(placed.folder, PurePosixPath(name).name, digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, data)
        known[key] = name
        return {"name": name, "path": target.relative_to(self.data).as_posix(), "sha256": digest,
                "role": placed.role, "label": placed.label, "defect": placed.defect}

    def _free_path(self, folder: str, filename: str, digest: str) -> Path:
        """data/folder/filename, or with the hash's first digits added where another file has the name."""
        target = self.data / folder / filename
        if target.exists():
            stem, suffix = PurePosixPath(filename).stem, PurePosixPath(filename).suffix
            target = self.data / folder / f"{stem}-{digest[:8]}{suffix}"
        return target

    def add_folder(self, folder: str | Path, kind: str) -> dict:
        """The images of a folder on the server, named by their path inside it (so test folders label)."""
        root = Path(folder)
        if not root.is_dir():
            raise VqcError(f"folder {root} does not exist on the studio's machine")
        paths = sorted(p for p in root.rglob("*") if p.is_file())
        return self.add_files([(p.relative_to(root.parent).as_posix(), p.read_bytes()) for p in paths], kind)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


class Projects:
    """The projects of one store, in its studio folder (vqc.store.versions.ModelStore.studio_folder)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._open: dict[str, Project] = {}

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "project.json").is_file())

    def get(self, name: str) -> Project:
        if name not in self._open:
            folder = self.root / name
            if not NAME.fullmatch(name) or not (folder / "project.json").is_file():
                raise LookupError(f"no project {name!r} in the studio")
            self._open[name] = Project(folder)
        return self._open[name]

    def create(self, name: str, target: str, by: str) -> Project:
        if not NAME.fullmatch(name):
            raise VqcError(f"project name {name!r}: use letters, digits and _ . - (at most 64, starting with a "
                           "letter or digit)")
        folder = self.root / name
        if (folder / "project.json").is_file():
            raise VqcError(f"a project named {name} exists already")
        folder.mkdir(parents=True, exist_ok=True)
        settings = {"name": name, "target": target, "created_by": by,
                    "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_text_atomic(folder / "project.json", json.dumps(settings, indent=1))
        return self.get(name)
