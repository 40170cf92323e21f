"""The PLC handshake over OPC UA (asyncua), with vqc as the server or as the PLC's client.

Per station, these variables (as server: Objects/Stations/STATION/NAME, node id
ns=N;s=STATION.NAME in namespace `urn:vqc:stations`; as client: the PLC's nodes named in
`plc_nodes`):

  in   Trigger (Boolean)   the PLC sets it to take a part, resets it once it has read Done
  in   PartId (String)     the part's id, written before Trigger
  out  Busy (Boolean)      true from the trigger until the result is written
  out  Done (Boolean)      true with the result, false again after the PLC resets Trigger
  out  Result (String)     OK, NG, or ERROR (no image, not recorded, queue full: see Error)
  out  Score (Double), Sequence (UInt32, one more each result), ResultPartId (String)
  out  ModelVersion (String), Error (String, empty when none), Heartbeat (UInt32, each heartbeat_s)

Result, Score, Sequence and ResultPartId are written before Done, so a PLC that sees Done reads
the result of its part. The handshake (docs/tutorials/station.md): Trigger up -> Busy up -> results ->
Busy down, Done up -> Trigger down -> Done down.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime, timezone
from typing import Callable

from ..errors import VqcError, first_line

log = logging.getLogger(__name__)

VARIABLES = {  # name: (variant type, initial value, written by the PLC)
    "Trigger": ("Boolean", False, True), "PartId": ("String", "", True),
    "Busy": ("Boolean", False, False), "Done": ("Boolean", False, False), "Result": ("String", "", False),
    "Score": ("Double", 0.0, False), "Sequence": ("UInt32", 0, False), "ResultPartId": ("String", "", False),
    "ModelVersion": ("String", "", False), "Error": ("String", "", False), "Heartbeat": ("UInt32", 0, False),
}
RESULT_ORDER = ("Result", "Score", "Sequence", "ResultPartId", "ModelVersion", "Busy", "Done")  # Done last
PLC_NODE_NAMES = {"trigger": "Trigger", "part_id": "PartId", "busy": "Busy", "done": "Done", "result": "Result",
                  "score": "Score", "sequence": "Sequence", "model_version": "ModelVersion", "error": "Error",
                  "heartbeat": "Heartbeat"}


def _ua():
    try:
        from asyncua import ua
    except ModuleNotFoundError:
        raise VqcError('OPC UA needs asyncua: pip install "vqc-inspect[line]"') from None
    return ua


def result_values(result: dict) -> dict:
    return {"Result": result["result"], "Score": float(result["score"] or 0.0), "Sequence": result["sequence"],
            "ResultPartId": result["part_id"] or "", "ModelVersion": result["model_version"], "Busy": False,
            "Done": True}


class EventLoop:
    """An asyncio loop in a thread of its own: asyncua runs there, stations call in with `run`."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="opcua", daemon=True)
        self.thread.start()

    def run(self, coroutine, timeout: float | None = 10.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        """Cancel what still runs there (asyncua's publish loops), then stop the loop."""
        async def cancel_the_rest():
            rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
        try:
            self.run(cancel_the_rest(), timeout=5)
        except Exception:  # the loop is stuck or gone: stop it all the same
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Edges:
    """Trigger edges: rising takes a part, falling acknowledges its result."""

    def __init__(self, on_trigger: Callable[[str, str | None], None]):
        self.on_trigger = on_trigger
        self.level: dict[str, bool] = {}

    def changed(self, station: str, value: bool) -> str | None:
        before, self.level[station] = self.level.get(station, False), bool(value)
        if value and not before:
            return "rising"
        if before and not value:
            return "falling"
        return None


class OpcUaServer:
    """vqc serves the stations' nodes; the PLC (a client) writes Trigger and PartId."""

    def __init__(self, endpoint: str, namespace: str, stations: dict[str, str], heartbeat_s: float,
                 on_trigger: Callable[[str, str | None], None]):
        _ua()
        self.endpoint, self.namespace, self.heartbeat_s = endpoint, namespace, heartbeat_s
        self.edges = Edges(on_trigger)
        self.nodes: dict[tuple[str, str], object] = {}
        self.by_id: dict = {}
        self.loop = EventLoop()
        try:
            self.loop.run(self._start(stations), timeout=30)
        except OSError as exc:
            self.loop.close()
            raise VqcError(f"OPC UA server {endpoint}: cannot listen: {exc.strerror or exc}") from None

    async def _start(self, stations: dict[str, str]) -> None:
        from asyncua import Server, ua
        from asyncua.common.callback import CallbackType
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("vqc stations")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        index = await server.register_namespace(self.namespace)
        folder = await server.nodes.objects.add_folder(ua.NodeId("Stations", index), "Stations")
        for station, model_version in stations.items():
            obj = await folder.add_object(ua.NodeId(station, index), station)
            for name, (kind, initial, writable) in VARIABLES.items():
                value = model_version if name == "ModelVersion" else initial
                node = await obj.add_variable(ua.NodeId(f"{station}.{name}", index), name,
                                              ua.Variant(value, getattr(ua.VariantType, kind)))
                if writable:
                    await node.set_writable()
                self.nodes[station, name] = node
                self.by_id[node.nodeid] = (station, name)
        server.subscribe_server_callback(CallbackType.PostWrite, self._written)
        await server.start()
        self.server = server
        self.heartbeat = asyncio.ensure_future(self._beat(list(stations)))

    async def _written(self, event, dispatcher) -> None:
        if not event.is_external:
            return
        for write, status in zip(event.request_params.NodesToWrite, event.response_params):
            station, name = self.by_id.get(write.NodeId, (None, None))
            if name != "Trigger" or not status.is_good():
                continue
            edge = self.edges.changed(station, write.Value.Value.Value)
            if edge == "rising":
                part = await self.nodes[station, "PartId"].read_value()
                await self._write(station, {"Busy": True, "Done": False})
                self.edges.on_trigger(station, part or None)
            elif edge == "falling":
                await self._write(station, {"Done": False})

    async def _write(self, station: str, values: dict) -> None:
        from asyncua import ua
        now = datetime.now(timezone.utc)  # SourceTimestamp: when vqc set the value, for the PLC's log
        for name, value in values.items():
            node = self.nodes[station, name]
            kind = getattr(ua.VariantType, VARIABLES[name][0])
            await self.server.write_attribute_value(node.nodeid, ua.DataValue(ua.Variant(value, kind),
                                                                              SourceTimestamp=now))

    async def _beat(self, stations: list[str]) -> None:
        beat = 0
        while True:
            await asyncio.sleep(self.heartbeat_s)
            beat = (beat + 1) % 2**32
            for station in stations:
                await self._write(station, {"Heartbeat": beat})

    def signal_result(self, station: str, result: dict) -> None:
        self.loop.run(self._write(station, {name: result_values(result)[name] for name in RESULT_ORDER}))

    def signal_error(self, station: str, text: str | None) -> None:
        self.loop.run(self._write(station, {"Error": text or ""}))

    def close(self) -> None:
        async def stop():
            self.heartbeat.cancel()
            await self.server.stop()
        try:
            self.loop.run(stop())
        finally:
            self.loop.close()


class OpcUaClient:
    """vqc is a client of the PLC's server: it watches the PLC's Trigger nodes and writes the
    result nodes named in each station's plc_nodes, reconnecting every second while it is away."""

    def __init__(self, endpoint: str, stations: dict[str, dict[str, str]], on_trigger, reconnect_s: float = 1.0):
        _ua()
        self.endpoint, self.reconnect_s = endpoint, reconnect_s
        self.stations = {s: {PLC_NODE_NAMES[k]: v for k, v in nodes.items()} for s, nodes in stations.items()}
        self.edges = Edges(on_trigger)
        self.client = None
        self.error: str | None = f"PLC {endpoint}: not connected yet"
        self.loop = EventLoop()
        self.task = self.loop.run(self._spawn())

    async def _spawn(self):
        return asyncio.ensure_future(self._maintain())

    async def _maintain(self) -> None:
        from asyncua import Client
        while True:
            try:
                async with Client(self.endpoint, timeout=2) as client:
                    handler = _TriggerHandler(self)
                    subscription = await client.create_subscription(5, handler)
                    for station, nodes in self.stations.items():
                        if "Trigger" in nodes:
                            node = client.get_node(nodes["Trigger"])
                            handler.station_of[node.nodeid] = station
                            await subscription.subscribe_data_change(node)
                    self.client, self.error = client, None
                    log.info("OPC UA: connected to the PLC at %s", self.endpoint)
                    while True:  # the PLC's server state, read each period: raises once the PLC is gone
                        await asyncio.sleep(self.reconnect_s)
                        await asyncio.wait_for(client.nodes.server_state.read_value(), self.reconnect_s * 2)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the PLC is away: say so, try again
                self.client = None
                message = f"PLC {self.endpoint} unreachable: {first_line(exc)}"
                if message != self.error:
                    self.error = message
                    log.warning("OPC UA: %s", message)
                await asyncio.sleep(self.reconnect_s)

    async def _write(self, station: str, values: dict) -> None:
        from asyncua import ua
        client = self.client
        if client is None:
            raise ConnectionError(self.error or "PLC unreachable")
        nodes = self.stations[station]
        for name, value in values.items():
            if name in nodes:
                kind = getattr(ua.VariantType, VARIABLES[name][0])
                await client.get_node(nodes[name]).write_value(ua.DataValue(ua.Variant(value, kind)))

    async def _triggered(self, station: str, value: bool) -> None:
        edge = self.edges.changed(station, value)
        try:
            if edge == "rising":
                part = None
                if "PartId" in self.stations[station]:
                    part = await self.client.get_node(self.stations[station]["PartId"]).read_value()
                await self._write(station, {"Busy": True, "Done": False})
                self.edges.on_trigger(station, part or None)
            elif edge == "falling":
                await self._write(station, {"Done": False})
        except Exception as exc:  # the PLC went away mid-handshake; it triggers again once back
            log.warning("OPC UA: trigger of %s not taken: %s", station, exc)

    def deliver(self, station: str, result: dict) -> None:
        """Through the station's outbox: in order, retried while the PLC is away."""
        self.loop.run(self._write(station, {name: result_values(result)[name] for name in RESULT_ORDER}), timeout=5)

    def signal_error(self, station: str, text: str | None) -> None:
        try:
            self.loop.run(self._write(station, {"Error": text or ""}), timeout=2)
        except Exception:  # the PLC is away; the next change writes it again
            pass

    def close(self) -> None:
        self.loop.loop.call_soon_threadsafe(self.task.cancel)
        self.loop.close()


class _TriggerHandler:
    def __init__(self, link: OpcUaClient):
        self.link, self.station_of = link, {}

    def datachange_notification(self, node, value, data) -> None:
        station = self.station_of.get(node.nodeid)
        if station is not None:
            asyncio.ensure_future(self.link._triggered(station, value))
