"""STATION.yaml: what `vqc station run` and `vqc station check` read.

Every mistake is one line naming the file and the key (`line.yaml: stations.cam1.camera.gain:
a number, got 'high'`); the whole file is read before the VqcError is raised, so `vqc station
check` answers every mistake of a file at once, a line each, before a line starts.
Paths in the file are relative to the file's folder. `schema()` lists every key the reader knows,
with its type, default and KEY_HELP's text: the documentation's STATION.yaml reference is made from it.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..choices import ENGINES
from ..engines import EngineSettings
from ..errors import VqcError

SOURCE_KINDS = ("aravis", "video", "folder")
CAMERA_TRIGGERS = ("software", "hardware", "free")
STATION_TRIGGERS = ("opcua", "mqtt", "camera")  # camera: each frame it delivers (hardware, free run, folder) is a part
OUTPUTS = ("opcua", "mqtt", "webhook")
WHEN_FULL = ("stop", "drop-oldest")
PIXEL_FORMATS = ("RGB8", "BGR8", "Mono8")
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # becomes an OPC UA browse name and an MQTT topic level
STATION_KEYS = ("model", "camera", "trigger", "outputs", "webhook", "threads", "engine", "plc_nodes")
PLC_NODES = ("trigger", "part_id", "busy", "done", "result", "score", "sequence", "model_version", "error",
             "heartbeat")  # with opcua.client: the PLC's node ids per station; trigger and result at least


@dataclass
class SourceConfig:
    kind: str = "aravis"
    id: str | None = None  # aravis: device id or IP address (None: the first camera found); video: URL or device
    trigger: str = "software"
    exposure_us: float | None = None  # None: as the camera is set
    gain: float | None = None
    frame_rate: float | None = None  # AcquisitionFrameRate; None: as the camera is set (in trigger mode some
    # cameras, Aravis's fake one among them, only look for a trigger once per frame period)
    pixel_format: str = "RGB8"
    width: int | None = None
    height: int | None = None
    frame_timeout_ms: float = 1000  # a frame later than this after its trigger: the camera is lost
    reconnect_s: float = 1.0
    folder: Path | None = None  # folder: the watched folder


@dataclass
class StationConfig:
    name: str
    model: Path | None  # None: what is live on this station's name in the line's model store
    source: SourceConfig
    trigger: str = "opcua"
    outputs: tuple[str, ...] = ("opcua",)
    webhook: str | None = None
    engine: EngineSettings = EngineSettings()  # threads None: the cores shared out over the stations
    plc_nodes: dict[str, str] = field(default_factory=dict)


@dataclass
class OpcUaConfig:
    server: str | None = None  # vqc serves the stations' nodes at this endpoint
    client: str | None = None  # or vqc is a client of the PLC's server at this endpoint
    namespace: str = "urn:vqc:stations"
    heartbeat_s: float = 1.0


@dataclass
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "vqc"
    client_id: str | None = None
    keepalive_s: int = 10


@dataclass
class LineConfig:
    path: Path
    stations: list[StationConfig]
    records: str | None = None  # URL or SQLite path; "none": no records; None: <file stem>.records.sqlite beside it
    image_store: Path | None = None
    store: Path | None = None  # a model store: stations without a model run what is live on their name
    keep_good: float = 0.01
    page: tuple[str, int] | None = None  # host, port of the operator page; None: no page
    opcua: OpcUaConfig | None = None
    mqtt: MqttConfig | None = None
    queue_size: int = 1000  # results waiting per output while its peer is away
    when_full: str = "stop"

    def engine_for(self, station: StationConfig) -> EngineSettings:
        """The station's engine, its threads as set or the machine's cores shared out evenly over the stations."""
        threads = station.engine.threads or max(1, (os.cpu_count() or 1) // len(self.stations))
        return replace(station.engine, threads=threads)


class _Reader:
    """Reads one mapping of the file, naming the key path in every mistake, refusing unknown keys.

    A mistake is noted in `problems` (shared by the readers of one file) and reading goes on: a
    value that is wrong reads as its default, so the rest of the file is still checked."""

    log: list | None = None  # schema(): every key read, as (where, key, kind, default, choices, minimum)

    def __init__(self, file: Path, where: str, value: Any, problems: list[str]):
        self.file, self.where, self.problems = file, where, problems
        self.value = value if isinstance(value, dict) else {}
        self.seen: set[str] = set()
        if not isinstance(value, dict):
            self.fail(f"a mapping of keys, got {_shown(value)}")

    def fail(self, message: str, key: str | None = None) -> None:
        where = f"{self.where}.{key}" if key and self.where else (key or self.where or "top level")
        self.problems.append(f"{self.file.name}: {where}: {message}")

    def has(self, key: str) -> bool:
        return self.value.get(key) is not None

    def get(self, key: str, kind, default=None, choices: tuple | None = None, minimum: float | None = None):
        self.seen.add(key)
        if _Reader.log is not None:
            _Reader.log.append((self.where, key, kind, default, choices, minimum))
        value = self.value.get(key)
        if value is None:
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # an address or a part of one
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            self.fail(f"{_KIND_NAMES[kind]}, got {_shown(value)}", key)
        elif choices is not None and value not in choices:
            self.fail(f"one of {', '.join(choices)}; got {_shown(value)}", key)
        elif minimum is not None and value < minimum:
            self.fail(f"at least {minimum}, got {value}", key)
        else:
            return value
        return default

    def path(self, key: str, default: Path | None = None) -> Path | None:
        value = self.get(key, str)
        return (self.file.parent / value) if value is not None else default

    def sub(self, key: str) -> "_Reader | None":
        self.seen.add(key)
        if _Reader.log is not None:
            _Reader.log.append((self.where, key, dict, None, None, None))
        if self.value.get(key) is None:
            return None
        return _Reader(self.file, f"{self.where}.{key}" if self.where else key, self.value[key], self.problems)

    def done(self) -> None:
        """Each key not read is a mistake: a typo is named as the unknown key it is."""
        for key in sorted(set(map(str, self.value)) - self.seen):
            close = difflib.get_close_matches(key, sorted(self.seen), n=1)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(self.seen))}"
            self.fail(f"unknown key ({hint})", key)


_KIND_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
               list: "a list", dict: "a mapping"}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _address(reader: _Reader, key: str) -> tuple[str, int] | None:
    value = reader.get(key, str)
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        reader.fail(f"HOST:PORT, got {_shown(value)}", key)
        return None
    return host, int(port)


def _source(reader: _Reader) -> SourceConfig:
    kind = reader.get("kind", str, "aravis", SOURCE_KINDS)
    source = SourceConfig(
        kind=kind, id=reader.get("id", str),
        trigger=reader.get("trigger", str, "software" if kind == "aravis" else "free", CAMERA_TRIGGERS),
        exposure_us=reader.get("exposure_us", float, minimum=1), gain=reader.get("gain", float, minimum=0),
        frame_rate=reader.get("frame_rate", float, minimum=0.1),
        pixel_format=reader.get("pixel_format", str, "RGB8", PIXEL_FORMATS),
        width=reader.get("width", int, minimum=8), height=reader.get("height", int, minimum=8),
        frame_timeout_ms=reader.get("frame_timeout_ms", float, 1000.0, minimum=1),
        reconnect_s=reader.get("reconnect_s", float, 1.0, minimum=0.01), folder=reader.path("folder"))
    if kind == "folder" and source.folder is None:
        reader.fail("a folder source needs its folder", "folder")
    elif kind == "folder" and not source.folder.is_dir():
        reader.fail(f"no folder {source.folder}", "folder")
    if kind == "video" and source.id is None:
        reader.fail("a video source needs its URL or device (rtsp://..., /dev/video0)", "id")
    if kind != "aravis" and source.trigger == "software":
        reader.fail(f"a {kind} source cannot be triggered by software: hardware or free", "trigger")
    reader.done()
    return source


def _station(reader: _Reader, name: str, line: dict) -> StationConfig | None:
    """The station, or None when it has no camera (its other keys are still checked)."""
    if not NAME.match(name):
        reader.fail("a station name is 1 to 64 letters, digits, - or _")
    model = reader.path("model")
    if model is None and line.get("store") is None:
        reader.fail("every station needs its model (a bundle folder or a .safetensors file), or the line a "
                    "store: to take it from", "model")
    source_reader = reader.sub("camera")
    if source_reader is None:
        reader.fail("every station needs its camera (kind: aravis, video or folder)", "camera")
        reader.seen.update(STATION_KEYS)
        reader.done()
        return None
    source = _source(source_reader)
    trigger = reader.get("trigger", str, "opcua" if source.trigger == "software" else "camera", STATION_TRIGGERS)
    if trigger == "camera" and source.trigger == "software":
        reader.fail("trigger: camera needs camera.trigger hardware or free (software waits for a trigger)", "trigger")
    if trigger != "camera" and source.trigger != "software":
        reader.fail(f"a {trigger} trigger needs camera.trigger: software (this camera runs by itself)", "trigger")
    outputs = reader.get("outputs", list, ["opcua"] if line.get("opcua") is not None else [])
    for output in outputs:
        if output not in OUTPUTS:
            reader.fail(f"each one of {', '.join(OUTPUTS)}; got {_shown(output)}", "outputs")
    for section in sorted({trigger, *outputs} & {"opcua", "mqtt"}):
        if line.get(section) is None:
            reader.fail(f"{section} is used but the file has no top-level {section}: section",
                        "trigger" if section == trigger else "outputs")
    webhook = reader.get("webhook", str)
    if ("webhook" in outputs) != (webhook is not None):
        reader.fail("the webhook output and a webhook: URL go together", "webhook")
    if webhook is not None and not webhook.startswith(("http://", "https://")):
        reader.fail(f"an http:// or https:// URL, got {_shown(webhook)}", "webhook")
    nodes_reader = reader.sub("plc_nodes")
    nodes: dict[str, str] = {}
    if nodes_reader is not None:
        nodes = {key: nodes_reader.get(key, str) for key in PLC_NODES if nodes_reader.has(key)}
        nodes_reader.seen.update(PLC_NODES)
        nodes_reader.done()
    client = (line.get("opcua") or {}).get("client") if isinstance(line.get("opcua"), dict) else None
    needed = ({"trigger"} if trigger == "opcua" else set()) | ({"result"} if "opcua" in outputs else set())
    if client and not needed <= set(nodes):
        reader.fail(f"with opcua.client, name the PLC's nodes: plc_nodes.{sorted(needed - set(nodes))[0]} is missing",
                    "plc_nodes")
    if nodes and not client:
        reader.fail("plc_nodes are for opcua.client (vqc as the PLC's client)", "plc_nodes")
    station = StationConfig(name=name, model=model, source=source, trigger=trigger, outputs=tuple(outputs),
                            webhook=webhook, engine=EngineSettings(reader.get("engine", str, "auto", ENGINES),
                                                                   reader.get("threads", int, minimum=1)),
                            plc_nodes=nodes)
    reader.done()
    return station


def load_line(path: str | Path) -> LineConfig:
    """The checked line file; a VqcError with one line per mistake, each naming its key."""
    line, problems = read_line(path)
    if problems:
        raise VqcError("\n".join(problems))
    return line


def read_line(path: str | Path) -> tuple[LineConfig, list[str]]:
    """The line file as far as it reads, and its mistakes (a line each); a file that is not
    YAML is a VqcError at once."""
    import yaml
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise VqcError(f"cannot read station file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise VqcError(f"{path.name}: not YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    problems: list[str] = []
    top = _Reader(path, "", raw if raw is not None else {}, problems)
    opcua = mqtt = None
    if (reader := top.sub("opcua")) is not None:
        opcua = OpcUaConfig(server=reader.get("server", str), client=reader.get("client", str),
                            namespace=reader.get("namespace", str, "urn:vqc:stations"),
                            heartbeat_s=reader.get("heartbeat_s", float, 1.0, minimum=0.05))
        if (opcua.server is None) == (opcua.client is None):
            reader.fail("one of server: (vqc serves the nodes) or client: (vqc writes the PLC's nodes)")
        for key in ("server", "client"):
            value = getattr(opcua, key)
            if value is not None and not value.startswith("opc.tcp://"):
                reader.fail(f"an opc.tcp:// endpoint, got {_shown(value)}", key)
        reader.done()
    if (reader := top.sub("mqtt")) is not None:
        mqtt = MqttConfig(host=reader.get("host", str, "127.0.0.1"), port=reader.get("port", int, 1883, minimum=1),
                          prefix=reader.get("prefix", str, "vqc").strip("/"), client_id=reader.get("client_id", str),
                          keepalive_s=reader.get("keepalive_s", int, 10, minimum=1))
        reader.done()
    queue = top.sub("queue")
    queue_size = queue.get("size", int, 1000, minimum=1) if queue else 1000
    when_full = queue.get("when_full", str, "stop", WHEN_FULL) if queue else "stop"
    if queue:
        queue.done()
    stations_reader = top.sub("stations")
    if stations_reader is None or not stations_reader.value:
        top.fail("a line needs at least one station under stations:", "stations")
    line_raw = {key: top.value.get(key) for key in ("opcua", "mqtt", "store")}
    stations = []
    for name, value in (stations_reader.value if stations_reader is not None else {}).items():
        station = _station(_Reader(path, f"stations.{name}", value, problems), str(name), line_raw)
        if station is not None:
            stations.append(station)
    if stations_reader is not None:
        stations_reader.seen.update(map(str, stations_reader.value))
    cameras = [s.source.id for s in stations if s.source.kind == "aravis" and s.source.id]
    if len(set(cameras)) < len(cameras):
        top.fail("two stations name the same camera", "stations")
    records = top.get("records", str)
    if records is not None and records != "none" and "://" not in records:
        records = str(path.parent / records)
    line = LineConfig(path=path, stations=stations, records=records,
                      image_store=top.path("image_store"), store=top.path("store"), keep_good=top.get("keep_good", float, 0.01, minimum=0),
                      page=_address(top, "page"), opcua=opcua, mqtt=mqtt, queue_size=queue_size, when_full=when_full)
    top.done()
    return line, problems


# What each key means: the STATION.yaml reference. Key paths name a station NAME; tests/test_docs.py
# fails when a key the reader knows has no text here, or a text names a key it does not know.
KEY_HELP = {
    "records": "where every inspected part is recorded: a SQLite path (relative to this file) or a database URL "
               "(postgresql://user@host/db); `none` keeps no records",
    "image_store": "folder for the images of defective parts (and a share of good ones) with their overlays",
    "store": "a model store folder (`vqc models`): a station without `model:` runs what is live on its name there",
    "keep_good": "share of good parts' images kept in the image store too",
    "page": "HOST:PORT of the live stations page for the operators (no page when left out); 0.0.0.0:PORT to "
            "reach it from other PCs",
    "opcua": "the OPC UA side: vqc as a server the PLC reads (`server:`) or as a client of the PLC (`client:`)",
    "opcua.server": "vqc serves each station's nodes at this opc.tcp:// endpoint",
    "opcua.client": "vqc connects to the PLC's own server at this opc.tcp:// endpoint and writes the nodes named "
                    "in each station's `plc_nodes`",
    "opcua.namespace": "namespace URI of vqc's nodes (server mode)",
    "opcua.heartbeat_s": "seconds between Heartbeat increments",
    "mqtt": "the MQTT broker for `mqtt` triggers and outputs",
    "mqtt.host": "broker host name or address",
    "mqtt.port": "broker port",
    "mqtt.prefix": "topic prefix: results on PREFIX/STATION/result, triggers on PREFIX/STATION/trigger, status "
                   "on PREFIX/status",
    "mqtt.client_id": "MQTT client id (default: one made from the host name and process)",
    "mqtt.keepalive_s": "MQTT keep-alive in seconds",
    "queue": "results waiting per output while its peer (broker, PLC, webhook receiver) is away",
    "queue.size": "results that may wait per output",
    "queue.when_full": "stop: answer new parts ERROR until there is room; drop-oldest: drop the oldest waiting "
                       "result and count it",
    "stations": "one entry per station, keyed by its NAME (1 to 64 letters, digits, - or _; it becomes an OPC "
                "UA browse name and an MQTT topic level)",
    "stations.NAME.model": "the station's model: a line bundle folder, or a .safetensors file on the full install "
                           "(relative to this file); leave it out to run what is live on NAME in `store:`",
    "stations.NAME.camera": "the image source (a mapping, keys below)",
    "stations.NAME.camera.kind": "aravis: a GigE Vision / GenICam camera; video: a USB camera or RTSP stream "
                                 "(OpenCV); folder: new image files in a folder",
    "stations.NAME.camera.id": "aravis: device id or IP address (the first camera found when left out); "
                               "video: the URL or device (rtsp://..., /dev/video0)",
    "stations.NAME.camera.trigger": "software: vqc triggers the camera when the station is triggered (aravis "
                                    "only); hardware: the camera's own trigger line; free: free running",
    "stations.NAME.camera.exposure_us": "exposure time in microseconds (as the camera is set when left out)",
    "stations.NAME.camera.gain": "camera gain (as the camera is set when left out)",
    "stations.NAME.camera.frame_rate": "acquisition frame rate (as the camera is set when left out)",
    "stations.NAME.camera.pixel_format": "camera pixel format",
    "stations.NAME.camera.width": "region of interest width in pixels",
    "stations.NAME.camera.height": "region of interest height in pixels",
    "stations.NAME.camera.frame_timeout_ms": "a frame later than this after its trigger: the camera is lost and "
                                             "the part is answered ERROR",
    "stations.NAME.camera.reconnect_s": "seconds between attempts to reopen a lost camera",
    "stations.NAME.camera.folder": "folder source: the folder watched for new images (relative to this file)",
    "stations.NAME.trigger": "what makes a part: opcua (the Trigger node), mqtt (a message on "
                             "PREFIX/STATION/trigger, payload the part id) or camera (each frame the camera sends)",
    "stations.NAME.outputs": "where each result goes: any of opcua, mqtt, webhook",
    "stations.NAME.webhook": "with the webhook output: the http:// or https:// URL each result is POSTed to",
    "stations.NAME.plc_nodes": "with opcua.client: the PLC's node ids (ns=...;s=...) for this station's signals; "
                               "trigger and result at least",
    "stations.NAME.plc_nodes.trigger": "the PLC's Boolean node that triggers a part",
    "stations.NAME.plc_nodes.part_id": "the PLC's String node with the part id",
    "stations.NAME.plc_nodes.busy": "Boolean node vqc sets while it inspects",
    "stations.NAME.plc_nodes.done": "Boolean node vqc sets when the result is written",
    "stations.NAME.plc_nodes.result": "String node for OK, NG or ERROR",
    "stations.NAME.plc_nodes.score": "Double node for the score",
    "stations.NAME.plc_nodes.sequence": "UInt32 node for the station's result sequence number",
    "stations.NAME.plc_nodes.model_version": "String node for the model version that judged the part",
    "stations.NAME.plc_nodes.error": "String node for the error, empty when none",
    "stations.NAME.plc_nodes.heartbeat": "UInt32 node vqc increments every heartbeat",
    "stations.NAME.threads": "engine threads for this station (default: the machine's cores shared out evenly)",
    "stations.NAME.engine": "the station's inference engine",
}

# Defaults that depend on other keys, as the reference states them.
_DEFAULTS_SHOWN = {
    "records": "<file name>.records.sqlite beside this file",
    "stations.NAME.camera.trigger": "software for aravis, free otherwise",
    "stations.NAME.trigger": "opcua; camera when the camera runs by itself",
    "stations.NAME.outputs": "[opcua] when the file has opcua:, else none",
}

_SCHEMA_EXAMPLES = (
    """records: none
image_store: images
store: models
page: 127.0.0.1:8090
opcua: {server: "opc.tcp://0.0.0.0:4840/vqc/"}
mqtt: {host: broker}
queue: {size: 10}
stations:
  cam1:
    camera: {kind: folder, folder: incoming}
    outputs: [opcua, mqtt, webhook]
    webhook: http://mes/vqc
""",
    """opcua: {client: "opc.tcp://plc:4840"}
stations:
  cam1:
    model: part.bundle
    camera: {kind: aravis}
    plc_nodes: {trigger: "ns=2;s=T", result: "ns=2;s=R"}
""",
)


def schema() -> list[dict]:
    """Every key of STATION.yaml as the reader reads it: key path (stations.NAME...), type, default,
    choices, minimum and its KEY_HELP text (None where it has none)."""
    import tempfile
    found: dict[str, dict] = {}
    _Reader.log = log = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            for text in _SCHEMA_EXAMPLES:
                file = Path(folder) / "STATION.yaml"
                file.write_text(text, encoding="utf-8")
                read_line(file)  # the examples name folders and models that need not exist
    finally:
        _Reader.log = None
    log += [("stations.cam1.plc_nodes", node, str, None, None, None) for node in PLC_NODES]
    for where, key, kind, default, choices, minimum in log:
        parts = where.split(".") if where else []
        if len(parts) >= 2 and parts[0] == "stations":
            parts[1] = "NAME"
        path = ".".join([*parts, key])
        if path in found:
            continue
        found[path] = {"key": path, "type": _KIND_NAMES[kind].split(" ", 1)[1] if kind is not dict else "mapping",
                       "default": _DEFAULTS_SHOWN.get(path, default), "choices": choices, "minimum": minimum,
                       "help": KEY_HELP.get(path)}
    return list(found.values())
