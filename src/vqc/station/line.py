"""A line: every station of one STATION.yaml in one process, with their links, records and page.

`Line(load_line(path))` opens the records, each station's model (its engine threads shared out
over the cores), its camera and the links the file names (one OPC UA server or client, one MQTT
connection, webhooks); `start()` starts them, `close()` stops them, delivering what waits.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import VqcError
from ..live import Judge, JudgeOptions, LiveModels, open_judge
from ..records import Records, open_records
from .config import LineConfig, SourceConfig
from .delivery import Outbox
from .sources import FolderSource, Source, VideoSource
from .station import Station

log = logging.getLogger(__name__)
OVERLAY_NICENESS = 10


def open_source(config: SourceConfig) -> Source:
    if config.kind == "aravis":
        from .aravis import AravisSource  # imports PyGObject: only for a line that has GigE cameras
        return AravisSource(config)
    return FolderSource(config) if config.kind == "folder" else VideoSource(config)


def _lower_priority() -> None:
    """The overlay thread yields the cores to the stations (Linux: a thread is a task of its own)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), OVERLAY_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: overlays at the same priority
        pass


class Line:
    def __init__(self, config: LineConfig):
        self.config = config
        self.run_id = uuid.uuid4().hex[:8]
        self.stations: dict[str, Station] = {}
        self.links: list = []
        self.overlays = ThreadPoolExecutor(1, "overlays", _lower_priority)  # kept images' overlays, after the answer
        self.store = None
        if config.store is not None:
            from ..store.versions import ModelStore
            self.store = ModelStore.open(config.store)
        self.records = self._records()
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _records(self) -> Records | None:
        c = self.config
        return open_records(c.records, c.image_store, c.keep_good, self.store, c.path)

    def _model_path(self, station) -> Path:
        if station.model is not None:
            return station.model
        live = self.store.deployment(station.name)["live"]
        if live is None:
            raise VqcError(f"station {station.name}: nothing is live on it in the store {self.store.folder} "
                           f"(vqc models promote VERSION --target {station.name} --store {self.store.folder})")
        return self.store.path_of(live)

    def _open_judge(self, station, path: Path, shadow: bool = False) -> Judge:
        options = JudgeOptions(self.config.engine_for(station), needs_threshold=f"station {station.name}")
        return open_judge(path, options, self.records, self.store, self._draw_later, shadow)

    def _build(self) -> None:
        c = self.config
        judges = {station.name: self._open_judge(station, self._model_path(station)) for station in c.stations}
        server = client = mqtt = None
        if c.opcua is not None and c.opcua.server:
            from .opcua import OpcUaServer
            server = OpcUaServer(c.opcua.server, c.opcua.namespace,
                                 {name: judge.identity.version for name, judge in judges.items()},
                                 c.opcua.heartbeat_s, self._trigger)
            self.links.append(server)
        elif c.opcua is not None:
            from .opcua import OpcUaClient
            client = OpcUaClient(c.opcua.client, {s.name: s.plc_nodes for s in c.stations if s.plc_nodes},
                                 self._trigger)
            self.links.append(client)
        if c.mqtt is not None:
            from .mqtt import MqttLink
            mqtt = MqttLink(c.mqtt, [s.name for s in c.stations if s.trigger == "mqtt"], self._trigger,
                            self._status_of)
            self.links.append(mqtt)
        for station in c.stations:
            uses_opcua = station.trigger == "opcua" or "opcua" in station.outputs
            signals = [server] if server is not None and uses_opcua else []
            error_signals = ([client] if client is not None and uses_opcua else []) + ([mqtt] if mqtt else [])
            changed = functools.partial(mqtt.publish_status, station.name) if mqtt else None
            outboxes = []
            if "opcua" in station.outputs and client is not None:
                outboxes.append(self._outbox(f"{station.name} opcua", functools.partial(client.deliver, station.name),
                                             changed))
            if "mqtt" in station.outputs:
                outboxes.append(self._outbox(f"{station.name} mqtt", functools.partial(mqtt.deliver, station.name),
                                             changed))
            if "webhook" in station.outputs:
                from .webhook import Webhook
                outboxes.append(self._outbox(f"{station.name} webhook", Webhook(station.webhook, self.run_id).deliver,
                                             changed))
            follows = self.store if self.store is not None and station.model is None else None
            models = LiveModels(judges[station.name], functools.partial(self._open_judge, station), follows,
                                station.name if follows else None, on_swap=self._swapped(station.name))
            self.stations[station.name] = Station(station, models, open_source(station.source), signals, outboxes,
                                                  error_signals, record_shadow=self._record_shadow)

    def _swapped(self, name: str):
        def changed(judge: Judge) -> None:
            if name in self.stations:
                self.stations[name].model_changed(judge)
        return changed

    def _record_shadow(self, rows: list[dict]) -> None:
        if self.records is not None:
            from ..store.shadow import add_shadow_scores
            add_shadow_scores(self.records.database, rows)

    def _draw_later(self, draw) -> None:
        def logged():
            try:
                draw()
            except Exception as exc:  # the row and the image are committed; only the picture is missing
                log.warning("overlay not written: %s", exc)
        self.overlays.submit(logged)

    def _outbox(self, name: str, deliver, on_change=None) -> Outbox:
        return Outbox(name, deliver, self.config.queue_size, self.config.when_full, on_change)

    def _status_of(self, name: str) -> dict | None:
        """A station's retained MQTT status: its error or its first output's, and the results waiting."""
        station = self.stations.get(name)
        if station is None:
            return None
        errors = [station.state.error, *(box.error for box in station.outboxes)]
        return {"error": next((e for e in errors if e), None), "waiting": sum(b.waiting() for b in station.outboxes)}

    def _trigger(self, station: str, part_id: str | None) -> None:
        if station in self.stations:
            self.stations[station].trigger(part_id)

    def start(self) -> None:
        for station in self.stations.values():
            station.start()
        for link in self.links:  # each station's first status (later ones as they change)
            if hasattr(link, "publish_status"):
                for name in self.stations:
                    link.publish_status(name)

    def status(self) -> list[dict]:
        """Each station as the page shows it: its state, its outputs' queues and the links' errors."""
        links = [link.error for link in self.links if getattr(link, "error", None)]
        shown = []
        for station in self.stations.values():
            s = station.state
            shown.append({"name": s.name, "model": s.model, "camera": s.camera, "camera_ok": s.camera_ok,
                          "error": s.error, "parts": s.parts, "defective": s.defective, "errors": s.errors,
                          "rate_per_min": round(s.rate_per_min(), 1), "last": s.last, "links": links,
                          "outputs": [{"name": b.name, "waiting": b.waiting(), "delivered": b.delivered,
                                       "dropped": b.dropped, "error": b.error} for b in station.outboxes]})
        return shown

    def close(self) -> dict[str, int]:
        """Stop the stations, deliver what waits (a few seconds each), close the links: what was left."""
        left = {}
        for station in self.stations.values():
            station.stop()
        for station in self.stations.values():
            for box in station.outboxes:
                left[box.name] = box.close()
        for link in self.links:
            try:
                link.close()
            except Exception as exc:  # a link to a peer that is gone closes with an error
                log.warning("closing %s: %s", type(link).__name__, exc)
        self.overlays.shutdown(wait=True)
        if self.records is not None:
            self.records.close()
        return left
