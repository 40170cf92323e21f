"""Image sources of a station: the contract every camera keeps, and the folder and video sources.

A source gives `Frame`s. `open()` connects (a VqcError naming the camera if it cannot);
`grab()` gives the next frame: for a software-triggered camera it triggers one exposure and
waits for it, otherwise it waits for whatever the camera sends next (its hardware trigger, free
run, a new file). A frame later than `frame_timeout_ms`, or a broken connection, is `CameraLost`:
the station says so on its Error output and calls `open()` again every `reconnect_s` until the
camera is back. `close()` is safe to call at any time. The Aravis (GigE Vision / GenICam)
source is in vqc.station.aravis; vqc.station.line picks one by the file's `kind`.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import IMAGE_SUFFIXES, decode_image, read_bytes
from ..errors import VqcError
from .config import SourceConfig


class CameraLost(VqcError):
    """The camera stopped answering; the station reconnects."""


@dataclass
class Frame:
    image: np.ndarray  # H x W x 3 uint8, RGB
    name: str  # what the records call it
    data: bytes | None = None  # the file as it came, for a source of files
    captured: float = field(default_factory=time.perf_counter)

    def encoded(self) -> bytes:
        """The frame as the records hash and keep it: a file as it came; a camera's frame as BMP,
        lossless and about a millisecond to write (the name ends .bmp)."""
        if self.data is not None:
            return self.data
        buffer = io.BytesIO()
        Image.fromarray(self.image).save(buffer, format="BMP")
        return buffer.getvalue()


class Source:
    software_triggered = False

    def __init__(self, config: SourceConfig):
        self.config = config

    @property
    def label(self) -> str:
        return f"{self.config.kind} camera {self.config.id or self.config.folder or '(first found)'}"

    def open(self) -> None:
        pass

    def grab(self) -> Frame:
        raise NotImplementedError

    def close(self) -> None:
        pass


class FolderSource(Source):
    """New image files in a folder, oldest first, each once (a camera that saves to disk)."""

    def __init__(self, config: SourceConfig, poll_s: float = 0.05, settle_s: float = 0.2):
        super().__init__(config)
        self.poll_s, self.settle_s = poll_s, settle_s
        self.seen: set[Path] = set()

    def open(self) -> None:
        if not self.config.folder.is_dir():
            raise CameraLost(f"{self.label}: the folder does not exist")

    def grab(self) -> Frame:
        deadline = time.monotonic() + self.config.frame_timeout_ms / 1000
        while True:
            now = time.time()
            try:
                entries = sorted((p for p in self.config.folder.iterdir()
                                  if p.suffix.lower() in IMAGE_SUFFIXES and p not in self.seen),
                                 key=lambda p: p.stat().st_mtime)
            except OSError as exc:
                raise CameraLost(f"{self.label}: {exc.strerror or exc}") from None
            for path in entries:
                stat = path.stat()
                if stat.st_size == 0 or now - stat.st_mtime < self.settle_s:  # still being written
                    continue
                self.seen.add(path)
                data = read_bytes(path)
                return Frame(decode_image(data, path.name), path.name, data)
            if time.monotonic() > deadline:
                raise TimeoutError  # no part arrived: not a fault for a folder
            time.sleep(self.poll_s)


class VideoSource(Source):
    """A USB (V4L2) camera or an RTSP/IP stream through OpenCV: pip install opencv-python-headless."""

    def __init__(self, config: SourceConfig):
        super().__init__(config)
        self.capture = None
        self.count = 0

    def open(self) -> None:
        try:
            import cv2
        except ModuleNotFoundError:
            raise VqcError("a video camera needs OpenCV: pip install opencv-python-headless") from None
        target = int(self.config.id) if self.config.id.isdigit() else self.config.id
        capture = cv2.VideoCapture(target)
        if not capture.isOpened():
            raise CameraLost(f"{self.label}: cannot open the stream")
        if self.config.width:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
        if self.config.height:
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
        self.capture = capture

    def grab(self) -> Frame:
        import cv2
        ok, image = self.capture.read() if self.capture is not None else (False, None)
        if not ok:
            raise CameraLost(f"{self.label}: the stream ended or dropped")
        self.count += 1
        return Frame(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), f"frame-{self.count}.bmp")

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None

