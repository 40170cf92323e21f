"""`vqc station run` and `vqc station check` without the printing: the CLI calls these."""
from __future__ import annotations

import gc
import signal
import threading
from pathlib import Path

from ..bundle import MANIFEST
from ..errors import VqcError
from .config import LineConfig, load_line
from .line import Line
from .page import PageServer


def check_line(path: str | Path) -> LineConfig:
    """The file checked key by key, and each station's model found (not opened: no camera, no link)."""
    config = load_line(path)
    for station in config.stations:
        model = station.model
        if model is None:  # from the store: what is live is looked up when the line opens it
            if not (config.store / "records.sqlite").is_file():
                raise VqcError(f"{config.path.name}: store: {config.store} is not a model store (no records.sqlite; "
                               f"vqc models add MODEL --store {config.store})")
            continue
        if not model.exists():
            raise VqcError(f"{config.path.name}: stations.{station.name}.model: {model} does not exist")
        if model.is_dir() and not (model / MANIFEST).is_file():
            raise VqcError(f"{config.path.name}: stations.{station.name}.model: {model} is a folder without "
                           f"{MANIFEST} (not a line bundle: vqc export MODEL --out DIR)")
    return config


def run_line(config: LineConfig, stop: threading.Event | None = None, on_ready=None) -> dict[str, int]:
    """Run until SIGINT or SIGTERM (or `stop`); the results each output had left undelivered."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, lambda *_: stop.set())
    line = Line(config)
    page = None
    try:
        if config.page is not None:
            page = PageServer(line, *config.page)
        # What is loaded by now (models, the OPC UA address space) lives as long as the line: out of
        # the collector's sight, a full collection no longer walks it (one took 334 ms mid-run here)
        gc.collect()
        gc.freeze()
        line.start()
        if on_ready is not None:
            on_ready(line)
        stop.wait()
    finally:
        if page is not None:
            page.close()
        left = line.close()
    return left
