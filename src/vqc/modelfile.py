"""A training model file's header, read and rewritten without torch; and the one way to change
the threshold of a model file or a line bundle (the CLI and the model store both call it).

A safetensors file is an 8-byte little-endian header length, a JSON header (the tensors' dtypes,
shapes and offsets into the data that follows, and `__metadata__`, vqc's config, info and
threshold as JSON strings), then the tensor data. Offsets count from the end of the header, so a
new header in front of the same data is the same tensors with new metadata: a threshold changed
on the line PC's runtime install, where safetensors and torch are absent.
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from .bundle import MANIFEST
from .errors import VqcError
from .files import atomic_path, write_text_atomic
from .threshold import Threshold

FORMAT = "vqc-model"  # the metadata's format marker, written by vqc.training.model
FORMAT_VERSION = 1
MAX_HEADER = 100 * 2**20  # safetensors' own limit


def _header(f, path: Path) -> tuple[dict, int]:
    raw = f.read(8)
    if len(raw) != 8:
        raise VqcError(f"model file {path} is not a vqc model (too short for a safetensors header)")
    (length,) = struct.unpack("<Q", raw)
    if length > MAX_HEADER:
        raise VqcError(f"model file {path} is not a vqc model (header length {length})")
    try:
        return json.loads(f.read(length)), 8 + length
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise VqcError(f"model file {path} is not a vqc model (its header is not JSON)") from None


def check_model_file(path: str | Path) -> dict[str, str]:
    """The metadata of a vqc model file as stored (JSON strings); a VqcError for a file that is
    not one (a text file, a picture), read from its header alone."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header, _ = _header(f, path)
    except OSError as exc:
        raise VqcError(f"cannot read model file {path}: {exc.strerror}") from None
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT:
        raise VqcError(f"model file {path} is not a vqc model (no '{FORMAT}' header)")
    return metadata


def read_metadata(path: str | Path) -> dict:
    """The file's metadata: config, info and threshold decoded from JSON, format as written."""
    metadata = check_model_file(path)
    try:
        return {key: json.loads(metadata[key]) for key in ("config", "info", "threshold")}
    except (KeyError, json.JSONDecodeError):
        raise VqcError(f"model file {path}: its header is damaged (config, info or threshold)") from None


def rewrite_metadata(source: str | Path, target: str | Path, **updates) -> None:
    """Copy `source` to `target` with metadata fields (info=..., threshold=...) replaced."""
    source = Path(source)
    with open(source, "rb") as f:
        header, data_start = _header(f, source)
        for key, value in updates.items():
            header.setdefault("__metadata__", {})[key] = json.dumps(value)
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data stays 8-byte aligned, as safetensors writes it
        f.seek(data_start)
        with atomic_path(target) as tmp, open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(encoded)) + encoded)
            shutil.copyfileobj(f, out, 1 << 20)


def write_threshold(path: str | Path, threshold: Threshold) -> None:
    """Replace the threshold of the model file or line bundle at `path`, in place and torch-free:
    the file's tensors and the bundle's graph are not touched."""
    path = Path(path)
    if path.is_dir():
        manifest = json.loads((path / MANIFEST).read_text())
        write_text_atomic(path / MANIFEST, json.dumps({**manifest, "threshold": threshold.as_dict()}, indent=1))
    else:
        rewrite_metadata(path, path, threshold=threshold.as_dict())
