"""The line's other parts, real and on loopback, for the station tests and bench/station_latency.py:
Aravis's fake GigE Vision camera in a process of its own, Debian's mosquitto broker, and a PLC
played by an asyncua client. Each helper skips (or, in the bench, fails) with one line naming
the part that is missing."""
from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .served import free_port

PUBLISH_MS = 10  # the PLC's subscription: how often the server sends it changes


def missing_parts(*parts: str) -> str | None:
    """A line naming the first part this machine lacks, or None."""
    for part in parts:
        if part == "aravis":
            try:
                from vqc.station.aravis import aravis
                aravis()
            except Exception as exc:
                return f"Aravis: {exc}"
        elif part == "mosquitto" and not shutil.which("mosquitto") and not Path("/usr/sbin/mosquitto").exists():
            return "mosquitto is not installed (apt install mosquitto)"
        elif part in ("asyncua", "paho"):
            try:
                __import__("asyncua" if part == "asyncua" else "paho.mqtt.client")
            except ModuleNotFoundError:
                return f"{part} is not installed (pip install \"vqc-inspect[line]\")"
    return None


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class Peer:
    """A part of the line in a child process, which a test may kill and start again."""
    process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *_):
        self.kill()


class FakeCamera(Peer):
    """vqc.station.fake_camera, showing `images` in turn."""

    def __init__(self, images: list, address: str = "127.0.0.1", serial: str = "VQC01", trigger_check_hz: float = 200):
        self.args = [sys.executable, "-m", "vqc.station.fake_camera", *map(str, images), "--address", address,
                     "--serial", serial, "--trigger-check-hz", str(trigger_check_hz)]

    def start(self) -> "FakeCamera":
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("ready"):
            self.process.kill()
            raise RuntimeError(f"fake camera did not start: {line.strip()} {self.process.stdout.read()[-300:]}")
        return self


class Mosquitto(Peer):
    """Debian's broker on a free loopback port, persistent sessions on disk, killable and restartable."""

    def __init__(self, folder: Path):
        self.port, self.folder = free_port(), folder
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {folder}/\nautosave_interval 1\nautosave_on_changes true\n")

    def start(self) -> "Mosquitto":
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen([binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self


class Plc:
    """An OPC UA client doing a PLC's side of the handshake with one or more stations."""

    def __init__(self, endpoint: str, namespace: str = "urn:vqc:stations"):
        self.endpoint, self.namespace = endpoint, namespace
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.done: dict[str, asyncio.Event] = {}
        self.client = None

    def run(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def connect(self, stations: list[str]) -> "Plc":
        self.run(self._connect(stations))
        return self

    async def _connect(self, stations: list[str]) -> None:
        from asyncua import Client
        self.client = Client(self.endpoint, timeout=4)
        await self.client.connect()
        index = await self.client.get_namespace_index(self.namespace)
        self.index = index
        self.state: dict[str, bool] = {}
        self.changed: dict[str, asyncio.Event] = {s: asyncio.Event() for s in stations}
        plc = self

        class Handler:
            def datachange_notification(self, node, value, data):
                station = node.nodeid.Identifier.rsplit(".", 1)[0]
                plc.state[station] = bool(value)
                plc.changed[station].set()
        self.subscription = await self.client.create_subscription(PUBLISH_MS, Handler())
        for station in stations:
            await self.subscription.subscribe_data_change(self.node(station, "Done"))

    def node(self, station: str, name: str):
        from asyncua import ua
        return self.client.get_node(ua.NodeId(f"{station}.{name}", self.index))

    async def _wait_done(self, station: str, value: bool, timeout: float) -> None:
        deadline = self.loop.time() + timeout
        while self.state.get(station) != value:
            self.changed[station].clear()
            if self.state.get(station) == value:
                break
            await asyncio.wait_for(self.changed[station].wait(), max(0.001, deadline - self.loop.time()))

    async def cycle_async(self, station: str, part_id: str, timeout: float) -> dict:
        """One handshake, as a PLC sends it: PartId and Trigger in one write request (in that order)."""
        from asyncua import ua
        start, wall = time.perf_counter(), time.time()
        await self.client.write_values([self.node(station, "PartId"), self.node(station, "Trigger")],
                                       [ua.DataValue(ua.Variant(part_id, ua.VariantType.String)),
                                        ua.DataValue(ua.Variant(True, ua.VariantType.Boolean))])
        await self._wait_done(station, True, timeout)
        seen = (time.perf_counter() - start) * 1000
        names = ("Done", "Result", "Score", "Sequence", "ResultPartId", "Error")
        read = await self.client.read_attributes([self.node(station, name) for name in names])
        values = {name: dv.Value.Value for name, dv in zip(names, read)}
        await self.node(station, "Trigger").write_value(ua.DataValue(ua.Variant(False, ua.VariantType.Boolean)))
        await self._wait_done(station, False, timeout)
        # on the node: when vqc set Done (its SourceTimestamp, this machine's clock); seen: when the
        # subscription brought it here, up to one publishing interval later
        stamp = read[0].SourceTimestamp
        node_ms = (stamp.timestamp() - wall) * 1000 if stamp else seen
        return {**values, "latency_ms": node_ms, "seen_ms": seen}

    def cycle(self, station: str, part_id: str, timeout: float = 5.0) -> dict:
        """Trigger one part and wait for its Done: the result nodes and the trigger -> Done latency."""
        return self.run(self.cycle_async(station, part_id, timeout), timeout * 2 + 1)

    def read(self, station: str, name: str):
        return self.run(self.node(station, name).read_value())

    def close(self) -> None:
        if self.client is not None:
            try:
                self.run(self.client.disconnect(), 5)
            except Exception:  # the server went first
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
