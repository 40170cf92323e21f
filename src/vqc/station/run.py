"""`vqc station run` and `vqc station check` without the printing: the CLI calls these."""
from __future__ import annotations

import gc
import signal
import threading
from pathlib import Path

from ..errors import VqcError
from ..loading import check_model_path
from ..store.versions import ModelStore
from .config import LineConfig, read_line
from .line import Line
from .page import PageServer


def check_line(path: str | Path) -> LineConfig:
    """The file checked key by key and each station's model checked as this install would open it
    (no engine, no camera, no link): a VqcError with one line per mistake, all of them at once."""
    config, problems = read_line(path)
    where = config.path.name
    for station in config.stations:
        if station.model is not None:
            try:
                check_model_path(station.model)
            except VqcError as exc:
                problems.append(f"{where}: stations.{station.name}.model: {exc}")
    if config.store is not None:
        try:
            ModelStore.check_folder(config.store)
        except VqcError as exc:
            problems.append(f"{where}: store: {exc}")
    if problems:
        raise VqcError("\n".join(problems))
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
