"""GigE Vision / GenICam cameras through Aravis (vqc.station.sources has the contract).

Aravis comes with the system: `apt install gir1.2-aravis-0.8 python3-gi` on Debian and Ubuntu.
PyGObject from the venv is used when it is there; otherwise Debian's python3-gi is loaded (only
the `gi` package, not its folder of other packages) when it was built for this Python's version.
"""
from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import sys
import threading
from pathlib import Path

import numpy as np

from ..errors import VqcError
from .sources import CameraLost, Frame, Source

SYSTEM_PACKAGES = (Path("/usr/lib/python3/dist-packages"),)
NEEDS = ("the Aravis camera source needs Aravis and PyGObject: apt install gir1.2-aravis-0.8 python3-gi "
         "(or pip install PyGObject beside the system's Aravis)")
SOCKET_BUFFER = 4 << 20  # bytes; the kernel caps it at net.core.rmem_max
INCOMPLETE_RETRIES = 2  # a software-triggered frame with lost packets is taken again
BUFFERS = 4  # frames the stream may hold while one is scored
CHANNELS = {"RGB8": 3, "BGR8": 3, "Mono8": 1}


def _system_gi():
    """Debian's `gi` if its compiled part fits this interpreter, else None."""
    tag = f"cpython-{sys.version_info.major}{sys.version_info.minor}-"
    for folder in SYSTEM_PACKAGES:
        if any(tag in p.name for p in (folder / "gi").glob("_gi.*.so")):
            spec = importlib.machinery.PathFinder.find_spec("gi", [str(folder)])
            module = importlib.util.module_from_spec(spec)
            sys.modules["gi"] = module
            spec.loader.exec_module(module)
            return module
    return None


_LOADING = threading.Lock()  # stations open their cameras at once; gi must be loaded once, whole


@functools.cache
def aravis():
    """The Aravis module (gi.repository.Aravis, 0.8) and GLib; a VqcError saying what to install."""
    with _LOADING:
        return _load()


def _load():
    try:
        import gi
    except ModuleNotFoundError:
        gi = _system_gi()
        if gi is None:
            raise VqcError(NEEDS) from None
    try:
        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis, GLib
    except (ValueError, ImportError):
        raise VqcError(NEEDS) from None
    return Aravis, GLib


class AravisSource(Source):
    def __init__(self, config):
        super().__init__(config)
        self.camera = self.stream = None
        self.software_triggered = config.trigger == "software"

    @property
    def label(self) -> str:
        return f"camera {self.config.id or '(first found)'}"

    def open(self) -> None:
        Aravis, GLib = aravis()
        self.close()
        c = self.config
        try:
            camera = Aravis.Camera.new(c.id)
            if camera.is_gv_device() and not camera.get_device().is_controller():
                raise CameraLost(f"{self.label} is controlled by another program (or by this one before "
                                 "a restart, for a few seconds)")
            if c.pixel_format not in camera.dup_available_pixel_formats_as_strings():
                raise VqcError(f"{self.label} has no pixel format {c.pixel_format} (it has "
                               f"{', '.join(camera.dup_available_pixel_formats_as_strings())})")
            camera.set_pixel_format_from_string(c.pixel_format)
            if c.width or c.height:
                region = camera.get_region()
                camera.set_region(0, 0, c.width or region.width, c.height or region.height)
            if c.exposure_us is not None:
                if camera.is_exposure_auto_available():
                    camera.set_exposure_time_auto(Aravis.Auto.OFF)
                camera.set_exposure_time(c.exposure_us)
            if c.gain is not None:
                if camera.is_gain_auto_available():
                    camera.set_gain_auto(Aravis.Auto.OFF)
                camera.set_gain(c.gain)
            if c.trigger == "software":
                camera.set_trigger("Software")
            elif c.trigger == "hardware":
                camera.set_trigger("Line1")
            else:
                camera.clear_triggers()
                camera.set_acquisition_mode(Aravis.AcquisitionMode.CONTINUOUS)
            if c.frame_rate is not None:
                self._frame_rate(camera, c.frame_rate)
            if camera.is_gv_device():  # as root Aravis reads a raw packet socket, which on loopback
                # sees every packet twice and drops frames; the plain UDP socket loses none
                camera.gv_set_stream_options(Aravis.GvStreamOption.PACKET_SOCKET_DISABLED)
            stream = camera.create_stream(None, None)
            if camera.is_gv_device():  # room for a whole frame of packets while the reader is late
                stream.set_property("socket-buffer", Aravis.GvStreamSocketBuffer.FIXED)
                stream.set_property("socket-buffer-size", SOCKET_BUFFER)
            for _ in range(BUFFERS):
                stream.push_buffer(Aravis.Buffer.new_allocate(camera.get_payload()))
            camera.start_acquisition()
        except GLib.Error as exc:
            raise CameraLost(f"{self.label}: {exc.message}") from None
        self.camera, self.stream = camera, stream

    def _frame_rate(self, camera, rate: float) -> None:
        if self.config.trigger == "free":
            camera.set_frame_rate(rate)
            return
        # arv_camera_set_frame_rate switches TriggerMode off (a free-running camera): set the feature itself
        device = camera.get_device()
        if device.is_feature_available("AcquisitionFrameRateEnable"):
            device.set_boolean_feature_value("AcquisitionFrameRateEnable", True)
        device.set_float_feature_value("AcquisitionFrameRate", rate)

    def grab(self) -> Frame:
        Aravis, GLib = aravis()
        if self.camera is None:
            raise CameraLost(f"{self.label}: not connected")
        for attempt in range(INCOMPLETE_RETRIES + 1):
            buffer = self._next_buffer(GLib)
            try:
                if buffer.get_status() == Aravis.BufferStatus.SUCCESS:
                    return Frame(self._rgb(buffer), f"{buffer.get_frame_id()}.bmp")
                status = buffer.get_status().value_nick
            finally:
                self.stream.push_buffer(buffer)
            if not self.software_triggered:
                break  # a free-running or hardware-triggered part cannot be taken again
        raise CameraLost(f"{self.label}: frame incomplete ({status}) {attempt + 1} times")

    def _next_buffer(self, GLib):
        try:
            if self.software_triggered:
                while (stale := self.stream.try_pop_buffer()) is not None:  # a frame nobody asked for
                    self.stream.push_buffer(stale)
                self.camera.software_trigger()
            buffer = self.stream.timeout_pop_buffer(int(self.config.frame_timeout_ms * 1000))
        except GLib.Error as exc:
            raise CameraLost(f"{self.label}: {exc.message}") from None
        if buffer is None:
            raise CameraLost(f"{self.label}: no frame within {self.config.frame_timeout_ms:g} ms")
        return buffer

    def _rgb(self, buffer) -> np.ndarray:
        height, width = buffer.get_image_height(), buffer.get_image_width()
        channels = CHANNELS[self.config.pixel_format]
        pixels = np.frombuffer(buffer.get_data(), np.uint8)[:height * width * channels].reshape(height, width, channels)
        if self.config.pixel_format == "Mono8":
            return np.repeat(pixels, 3, axis=2)
        return pixels[..., ::-1].copy() if self.config.pixel_format == "BGR8" else pixels.copy()

    def close(self) -> None:
        if self.camera is not None:
            try:
                self.camera.stop_acquisition()
            except Exception:  # the camera is gone already: nothing to stop
                pass
        self.camera = self.stream = None
