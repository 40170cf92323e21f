"""vqc as the PLC's OPC UA client: the PLC (an asyncua server in the test) owns the nodes, vqc watches
its Trigger and writes its result nodes; the PLC goes away and comes back."""
import asyncio
import time

import pytest

from vqc.data import list_images
from vqc.station.config import load_line
from vqc.station.line import Line
from vqc.station.opcua import EventLoop

from .line_peers import FakeCamera, missing_parts
from .served import free_port

NODES = {"trigger": "Trigger", "part_id": "PartId", "busy": "Busy", "done": "Done", "result": "Result",
         "score": "Score", "sequence": "Sequence", "error": "Error"}
KINDS = {"Trigger": False, "PartId": "", "Busy": False, "Done": False, "Result": "", "Score": 0.0, "Sequence": 0,
         "Error": ""}


class PlcServer:
    """The PLC's own OPC UA server, with its nodes ns=2;s=Cell.Cam1.NAME, and its side of the handshake."""

    def __init__(self, endpoint: str):
        self.endpoint, self.loop = endpoint, EventLoop()
        self.start()

    def start(self):
        self.loop.run(self._start())

    async def _start(self):
        from asyncua import Server, ua
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        index = await server.register_namespace("urn:plc")
        cell = await server.nodes.objects.add_object(ua.NodeId("Cell.Cam1", index), "Cam1")
        self.nodes = {}
        for name, initial in KINDS.items():
            kind = ua.VariantType.UInt32 if name == "Sequence" else None
            variant = ua.Variant(initial, kind) if kind else ua.Variant(initial)
            node = await cell.add_variable(ua.NodeId(f"Cell.Cam1.{name}", index), name, variant)
            await node.set_writable()
            self.nodes[name] = node
        await server.start()
        self.server, self.index = server, index

    def stop(self):
        self.loop.run(self.server.stop())

    async def _cycle(self, part: str, timeout: float):
        await self.nodes["PartId"].write_value(part)
        await self.nodes["Trigger"].write_value(True)
        deadline = time.monotonic() + timeout
        while not await self.nodes["Done"].read_value():
            assert time.monotonic() < deadline, "no Done from vqc"
            await asyncio.sleep(0.005)
        values = {name: await self.nodes[name].read_value() for name in ("Result", "Score", "Sequence", "Error")}
        await self.nodes["Trigger"].write_value(False)
        while await self.nodes["Done"].read_value():
            assert time.monotonic() < deadline, "Done stayed up"
            await asyncio.sleep(0.005)
        return values

    def cycle(self, part: str, timeout: float = 10.0) -> dict:
        return self.loop.run(self._cycle(part, timeout), timeout + 5)


@pytest.fixture(scope="module")
def plc_line(tmp_path_factory, demo_model_file, demo_root):
    if missing_parts("aravis", "asyncua"):
        pytest.skip(missing_parts("aravis", "asyncua"))
    folder = tmp_path_factory.mktemp("client-line")
    camera = FakeCamera(list_images([demo_root / "test"])[:4]).start()
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/plc/"
    plc = PlcServer(endpoint)
    nodes = "".join(f"      {key}: 'ns={plc.index};s=Cell.Cam1.{name}'\n" for key, name in NODES.items())
    (folder / "line.yaml").write_text(f"""
opcua: {{client: '{endpoint}'}}
stations:
  cam1:
    model: {demo_model_file}
    camera: {{kind: aravis, id: 127.0.0.1, width: 224, height: 224, exposure_us: 500}}
    plc_nodes:
{nodes}""")
    line = Line(load_line(folder / "line.yaml"))
    line.start()
    client = line.links[0]
    deadline = time.monotonic() + 20
    while client.client is None:
        assert time.monotonic() < deadline, client.error
        time.sleep(0.1)
    yield plc, line
    line.close()
    camera.kill()
    plc.loop.close()


def test_vqc_writes_the_plcs_own_nodes_in_the_handshake(plc_line, caplog):
    plc, line = plc_line
    results = [plc.cycle(f"p{k}") for k in range(3)]
    assert "not signalled" not in caplog.text
    assert [r["Sequence"] for r in results] == [1, 2, 3]
    assert all(r["Result"] in ("OK", "NG") and r["Error"] == "" for r in results)
    rows = line.records.find(limit=10)[::-1]
    assert [row["part_id"] for row in rows] == ["p0", "p1", "p2"]
    assert [r["Score"] for r in results] == pytest.approx([row["score"] for row in rows], rel=1e-6)


def test_plc_server_restarted_vqc_reconnects_and_carries_on(plc_line):
    plc, line = plc_line
    client = line.links[0]
    before = plc.cycle("before")["Sequence"]
    plc.stop()
    deadline = time.monotonic() + 20
    while client.client is not None:  # vqc notices the PLC gone
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "unreachable" in client.error
    plc.start()  # a new server on the same endpoint: its nodes start from their initial values
    while client.client is None:
        assert time.monotonic() < deadline, client.error
        time.sleep(0.1)
    after = plc.cycle("after")
    assert after["Sequence"] == before + 1 and after["Result"] in ("OK", "NG")
