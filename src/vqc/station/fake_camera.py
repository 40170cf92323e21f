"""A GigE Vision camera on this machine that shows your images: Aravis's GvFakeCamera, its frames
filled from a folder in turn (sorted by path), resized to the region the client sets.

    python -m vqc.station.fake_camera IMAGES --address 127.0.0.1 [--serial VQC01]

It answers GVCP on ADDRESS:3956, so one camera per address: give a second camera an address
of its own (as root: ip addr add 127.0.0.2/8 dev lo). It prints "ready" once it listens.
For trying a station without a camera, and for vqc's own line tests and benchmark.
"""
from __future__ import annotations

import argparse
import ctypes
import signal
import sys
import threading

import numpy as np
from PIL import Image

from ..data import decode_image, list_images
from ..errors import VqcError
from .aravis import aravis

# The fill callback is set through ctypes: PyGObject frees a callback without a scope annotation
# as soon as set_fill_pattern returns, and the camera's thread would call freed memory.
FILL_PATTERN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32,
                                ctypes.c_uint32)
# In trigger mode the fake camera looks for a trigger this often (Aravis's default, 25 Hz, adds up to
# 40 ms), and spins for the last millisecond of each period: 200 Hz costs about a fifth of a core.
TRIGGER_CHECK_HZ = 200.0
PIXEL_FORMATS = {0x02180014: "RGB8", 0x02180015: "BGR8", 0x01080001: "Mono8"}  # GenICam PFNC codes


def _gobject_pointer(obj) -> int:
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get(obj.__gpointer__, None)


class ImageCamera:
    def __init__(self, images: list, address: str, serial: str, trigger_check_hz: float = TRIGGER_CHECK_HZ):
        Aravis, _ = aravis()
        self.images = [decode_image(path, max_pixels=None) for path in images]
        self.rendered: dict[tuple[int, int, int, str], bytes] = {}
        self.count = 0
        self.lib = ctypes.CDLL("libaravis-0.8.so.0")
        for name in ("arv_buffer_get_image_width", "arv_buffer_get_image_height"):
            getattr(self.lib, name).restype, getattr(self.lib, name).argtypes = ctypes.c_int, [ctypes.c_void_p]
        self.lib.arv_buffer_get_data.restype = ctypes.c_void_p
        self.lib.arv_buffer_get_data.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
        self.lib.arv_fake_camera_set_fill_pattern.argtypes = [ctypes.c_void_p, FILL_PATTERN, ctypes.c_void_p]
        self.camera = Aravis.GvFakeCamera.new(address, serial)
        if not self.camera.is_running():
            raise VqcError(f"fake camera: cannot listen on {address}:3956 (in use, or not an address of this machine)")
        self.camera.get_fake_camera().set_trigger_frequency(trigger_check_hz)
        self.callback = FILL_PATTERN(self.fill)  # kept: the camera's thread calls it
        self.lib.arv_fake_camera_set_fill_pattern(_gobject_pointer(self.camera.get_fake_camera()), self.callback, None)

    def render(self, index: int, width: int, height: int, pixel_format: str) -> bytes:
        key = (index, width, height, pixel_format)
        if key not in self.rendered:
            image = np.asarray(Image.fromarray(self.images[index]).resize((width, height), Image.BILINEAR))
            if pixel_format == "Mono8":
                image = np.asarray(Image.fromarray(image).convert("L"))
            elif pixel_format == "BGR8":
                image = image[..., ::-1]
            self.rendered[key] = np.ascontiguousarray(image).tobytes()
        return self.rendered[key]

    def fill(self, buffer, _data, _exposure_us, _gain, pixel_format) -> None:
        width, height = self.lib.arv_buffer_get_image_width(buffer), self.lib.arv_buffer_get_image_height(buffer)
        pixels = self.render(self.count % len(self.images), width, height, PIXEL_FORMATS.get(pixel_format, "Mono8"))
        self.count += 1
        target = self.lib.arv_buffer_get_data(buffer, ctypes.byref(ctypes.c_size_t()))
        ctypes.memmove(target, pixels, len(pixels))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vqc.station.fake_camera", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files or folders, shown in turn")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--serial", default="VQC01")
    parser.add_argument("--trigger-check-hz", type=float, default=TRIGGER_CHECK_HZ,
                        help="how often it looks for a software trigger (its latency and its CPU)")
    args = parser.parse_args(argv)
    try:
        camera = ImageCamera(list_images(args.images), args.address, args.serial, args.trigger_check_hz)
    except VqcError as exc:
        print(f"vqc: error: {exc}", file=sys.stderr)
        return 2
    print(f"ready: camera Aravis-Fake-{args.serial} at {args.address}, {len(camera.images)} images", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
