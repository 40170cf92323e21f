"""Stations with real parts on loopback: vqc.station.fake_camera (Aravis's GvFakeCamera, in a process
of its own, showing the demo images), a PLC played by an asyncua client, Debian's mosquitto broker,
a webhook receiver; and the faults a line has: the broker, the PLC and the camera going away."""
import http.server
import json
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from vqc.data import list_images
from vqc.errors import VqcError
from vqc.station.config import load_line
from vqc.station.delivery import Outbox
from vqc.station.line import Line
from vqc.station.page import PageServer

from .line_peers import FakeCamera, Mosquitto, Plc, missing_parts
from .served import free_port

SIDE = 256  # the camera's region: the fake camera resizes each image to it


def write(path, text):
    path.write_text(text)
    return path


# ------------------------------------------------------------ the file (no parts needed)

@pytest.mark.parametrize("text, message", [
    ("stations: {}", "stations: a line needs at least one station"),
    ("stations:\n  cam1: {camera: {kind: aravis}}", "stations.cam1.model: every station needs its model"),
    ("stations:\n  cam1: {model: m, camera: {kind: usb}}", "stations.cam1.camera.kind: one of aravis, video, folder"),
    ("stations:\n  cam1: {model: m, camera: {gain: high}}", "stations.cam1.camera.gain: a number, got 'high'"),
    ("stations:\n  cam1: {model: m, camera: {expsure_us: 5}}", "stations.cam1.camera.expsure_us: unknown key"),
    ("stations:\n  cam1: {model: m, camera: {}}", "stations.cam1.trigger: opcua is used but the file has no "
                                                   "top-level opcua: section"),
    ("opcua: {server: http://x}\nstations:\n  cam1: {model: m, camera: {}}", "opcua.server: an opc.tcp:// endpoint"),
    ("mqtt: {}\nstations:\n  cam1: {model: m, trigger: mqtt, outputs: [mqtt, webhook], camera: {}}",
     "stations.cam1.webhook: the webhook output and a webhook: URL go together"),
    ("page: localhost\nstations:\n  cam1: {model: m, trigger: camera, camera: {trigger: free}}",
     "page: HOST:PORT, got 'localhost'"),
    ("queue: {size: 0}\nstations:\n  c: {model: m, trigger: camera, camera: {trigger: free}}", "queue.size: at least 1"),
    ("stations:\n  bad name: {model: m, camera: {}}", "stations.bad name: a station name is"),
    ("opcua: {client: 'opc.tcp://plc:4840'}\nstations:\n  c: {model: m, camera: {}, plc_nodes: {result: 'ns=2;s=R'}}",
     "stations.c.plc_nodes: with opcua.client, name the PLC's nodes: plc_nodes.trigger is missing"),
    ("stations: [\n", "line.yaml: not YAML at line 2"),
])
def test_every_mistake_in_the_station_file_is_one_line_naming_its_key(tmp_path, text, message):
    with pytest.raises(VqcError) as caught:
        load_line(write(tmp_path / "line.yaml", text))
    lines = str(caught.value).splitlines()  # the file's every mistake, a line each
    assert any(message in line for line in lines)
    assert all(line.startswith("line.yaml: ") for line in lines)


def test_a_good_file_reads_with_its_defaults(tmp_path):
    line = load_line(write(tmp_path / "line.yaml", "opcua: {server: 'opc.tcp://127.0.0.1:4840/'}\nstations:\n"
                                                   "  cam1: {model: m.bundle, camera: {id: 127.0.0.1}}\n"
                                                   "  cam2: {model: m.bundle, camera: {id: 127.0.0.2, exposure_us: 800}}"))
    first, second = line.stations
    assert (first.trigger, first.outputs, first.source.trigger) == ("opcua", ("opcua",), "software")
    assert first.model == tmp_path / "m.bundle" and second.source.exposure_us == 800.0
    assert (line.queue_size, line.when_full, line.records) == (1000, "stop", None)


def test_station_check_command_answers_in_one_line(tmp_path, capsys):
    from vqc.cli import main
    (tmp_path / "in").mkdir()
    path = write(tmp_path / "line.yaml", "stations:\n  cam1: {model: missing.bundle, trigger: camera, "
                                         "camera: {kind: folder, folder: in, trigger: free}}")
    assert main(["station", "check", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (f"vqc: error: line.yaml: stations.cam1.model: model {tmp_path}/missing.bundle "
                                               "does not exist")


def test_station_check_names_every_mistake_at_once_a_line_each(tmp_path, capsys, demo_model_file, monkeypatch):
    """A typo is an unknown key, not a missing camera; a watched folder that is not there and a
    training model file on the runtime install (no torch) are refused by check, as run would."""
    from vqc.cli import main
    monkeypatch.setitem(sys.modules, "torch", None)  # the runtime install: torch cannot be found
    path = write(tmp_path / "line.yaml", f"""
stations:
  cam1: {{model: {demo_model_file}, trigger: camera, camera: {{kind: folder, folder: nodir, trigger: free, gain: high}}}}
  cam2: {{model: {demo_model_file}, trigger: camera, camra: {{kind: folder, folder: ., trigger: free}}}}
""")
    assert main(["station", "check", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["vqc: error: line.yaml: stations.cam1.camera.gain: a number, got 'high'",
                     f"vqc: error: line.yaml: stations.cam1.camera.folder: no folder {tmp_path}/nodir",
                     "vqc: error: line.yaml: stations.cam2.camera: every station needs its camera (kind: aravis, "
                     "video or folder)",
                     "vqc: error: line.yaml: stations.cam2.camra: unknown key (did you mean camera?)",
                     f"vqc: error: line.yaml: stations.cam1.model: {demo_model_file} is a training model file, which "
                     f"needs the full install (no torch here): export it to a line bundle with `vqc export "
                     f"{demo_model_file.name} --out DIR` where vqc-inspect[train] is installed, and give DIR"]


# ------------------------------------------------------------ the outbox (no parts needed)

def test_outbox_delivers_in_order_once_each_across_failures():
    got, failures = [], iter([True, True, False, True, False, False, False, False, False, False, False])

    def deliver(result):
        if next(failures, False):
            raise ConnectionError("peer away")
        got.append(result["sequence"])
    box = Outbox("test", deliver, size=10, max_pause_s=0.01)
    for n in range(1, 8):
        box.put({"sequence": n})
    assert box.close(5) == 0
    assert got == list(range(1, 8))


def test_outbox_full_refuses_or_drops_the_oldest_as_set():
    blocked = threading.Event()
    stop = Outbox("stop", lambda r: blocked.wait(), size=2, when_full="stop")
    drop = Outbox("drop", lambda r: blocked.wait(), size=2, when_full="drop-oldest")
    for n in range(1, 4):
        drop.put({"sequence": n})
    stop.put({"sequence": 1}), stop.put({"sequence": 2})
    time.sleep(0.05)  # the head is taken out for delivery, and stays in the queue until delivered
    assert stop.full()
    with pytest.raises(RuntimeError, match="queue full"):
        stop.put({"sequence": 3})
    assert drop.dropped >= 1 and not drop.full()
    blocked.set()
    stop.close(2), drop.close(2)


# ------------------------------------------------------------ a line with real parts

needs_parts = pytest.mark.skipif(bool(missing_parts("aravis", "asyncua", "paho", "mosquitto")),
                                 reason=str(missing_parts("aravis", "asyncua", "paho", "mosquitto")))


class Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook receiver that answers 503 while `down` is set and keeps what it took, by key."""
    taken: list = []
    keys: set = set()
    down = threading.Event()

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.down.is_set():
            self.send_response(503)
            self.end_headers()
            return
        key = self.headers["Idempotency-Key"]
        if key not in self.keys:
            self.keys.add(key)
            self.taken.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def line_parts(tmp_path_factory, demo_model_file, demo_root):
    if missing_parts("aravis", "asyncua", "paho", "mosquitto"):
        pytest.skip(missing_parts("aravis", "asyncua", "paho", "mosquitto"))
    import paho.mqtt.client as mqtt
    folder = tmp_path_factory.mktemp("line")
    images = list_images([demo_root / "test"])[:6]
    camera = FakeCamera(images).start()
    broker = Mosquitto(folder).start()
    webhook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    endpoint, page_port = f"opc.tcp://127.0.0.1:{free_port()}/vqc/", free_port()
    path = write(folder / "line.yaml", f"""
records: line.records.sqlite
page: 127.0.0.1:{page_port}
opcua: {{server: '{endpoint}'}}
mqtt: {{host: 127.0.0.1, port: {broker.port}, prefix: plant}}
queue: {{size: 50}}
stations:
  cam1:
    model: {demo_model_file}
    outputs: [opcua, mqtt, webhook]
    webhook: http://127.0.0.1:{webhook.server_port}/results
    camera: {{kind: aravis, id: 127.0.0.1, width: {SIDE}, height: {SIDE}, exposure_us: 500, frame_timeout_ms: 500,
              reconnect_s: 0.3}}
""")
    received = []
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-consumer", clean_session=False)
    subscriber.on_connect = lambda c, *_: c.subscribe("plant/cam1/result", qos=1)
    subscriber.on_message = lambda c, u, m: received.append(json.loads(m.payload))
    subscriber.reconnect_delay_set(0.1, 0.5)
    subscriber.connect("127.0.0.1", broker.port)
    subscriber.loop_start()
    line = Line(load_line(path))
    line.start()
    page = PageServer(line, "127.0.0.1", page_port)
    plc = Plc(endpoint).connect(["cam1"])
    yield {"line": line, "plc": plc, "camera": camera, "broker": broker, "received": received, "images": images,
           "page": f"http://127.0.0.1:{page_port}", "endpoint": endpoint}
    plc.close()
    page.close()
    line.close()
    subscriber.loop_stop()
    camera.kill()
    broker.kill()
    webhook.shutdown()


def wait_for(condition, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@needs_parts
def test_plc_handshake_scores_the_cameras_frames_and_records_each_before_it_signals(line_parts, demo_model):
    plc, line, images = line_parts["plc"], line_parts["line"], line_parts["images"]
    results = [plc.cycle("cam1", f"part-{k}") for k in range(len(images))]
    assert [r["ResultPartId"] for r in results] == [f"part-{k}" for k in range(len(images))]
    assert [r["Sequence"] for r in results] == list(range(1, len(images) + 1))
    assert plc.read("cam1", "Busy") is False and plc.read("cam1", "Done") is False
    # each frame is the camera's picture of one of the images (in turn, but a frame with lost packets
    # is taken again and its image skipped): each score is the model's on one of those pictures
    frames = [np.asarray(Image.fromarray(np.asarray(Image.open(p).convert("RGB"))).resize((SIDE, SIDE), Image.BILINEAR))
              for p in images]
    expected = {round(p.score, 3): {"ok": "OK", "defective": "NG"}[p.verdict] for p in demo_model.predict(frames)}
    for result in results:
        match = [score for score in expected if score == pytest.approx(result["Score"], rel=1e-4)]
        assert match, f"score {result['Score']} is not the model's on any of the camera's pictures {sorted(expected)}"
        assert result["Result"] == expected[match[0]]
    assert len({round(r["Score"], 3) for r in results}) >= 3  # the camera showed different images
    rows = line.records.find(limit=100)[::-1]
    assert [row["part_id"] for row in rows] == [f"part-{k}" for k in range(len(images))]
    assert all(row["station"] == "cam1" and row["width"] == SIDE for row in rows)
    assert plc.read("cam1", "ModelVersion") == line.stations["cam1"].models.live.identity.version


@needs_parts
def test_the_page_shows_the_last_part_with_its_overlay(line_parts):
    plc = line_parts["plc"]
    plc.cycle("cam1", "page-part")
    status = json.load(urllib.request.urlopen(line_parts["page"] + "/api/stations"))
    assert status[0]["name"] == "cam1" and status[0]["last"]["part_id"] == "page-part"
    png = urllib.request.urlopen(line_parts["page"] + "/api/stations/cam1/last.png").read()
    assert Image.open(__import__("io").BytesIO(png)).size[0] == SIDE
    assert b"vqc stations" in urllib.request.urlopen(line_parts["page"] + "/").read()


@needs_parts
def test_the_page_in_chromium_shows_each_inspected_part_with_its_score_and_threshold(line_parts):
    """The page stays filled after a part: the threshold the station sends is the model's whole record."""
    import shutil
    if not shutil.which("chromium"):
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the test extras)")
    line_parts["plc"].cycle("cam1", "chromium-part")
    threshold = line_parts["line"].stations["cam1"].models.live.model.threshold.value
    errors = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(line_parts["page"])
        page.wait_for_selector("#station-cam1 .verdict:not(:empty)")
        page.wait_for_function("document.getElementById('station-cam1').textContent.includes('chromium-part')")
        text = page.inner_text("#station-cam1")
        browser.close()
    assert not errors
    assert f"(threshold {threshold:.3f})" in text and page_verdict(text) in ("OK", "NG")


def page_verdict(text: str) -> str:
    return text.splitlines()[2].strip()


@needs_parts
def test_broker_killed_and_restarted_every_result_arrives_once_in_order(line_parts):
    plc, broker, received, line = line_parts["plc"], line_parts["broker"], line_parts["received"], line_parts["line"]
    box = next(b for b in line.stations["cam1"].outboxes if b.name.endswith("mqtt"))
    wait_for(lambda: box.waiting() == 0, what="earlier results delivered")
    time.sleep(1.2)  # the consumer's session is on the broker's disk (autosave every second)
    before = [plc.cycle("cam1", f"mqtt-a{k}")["Sequence"] for k in range(3)]
    broker.kill()
    during = [plc.cycle("cam1", f"mqtt-b{k}")["Sequence"] for k in range(4)]  # the PLC is answered all along
    wait_for(lambda: box.error is not None, what="the outbox to see the broker gone")
    assert box.waiting() >= 1
    broker.start()
    wait_for(lambda: box.waiting() == 0, what="the waiting results delivered")
    wait_for(lambda: received and received[-1]["sequence"] == during[-1], what="the consumer to get them")
    sequences = [r["sequence"] for r in received]
    assert sequences == list(range(1, during[-1] + 1))  # from the first part on: none lost, none twice, in order
    assert before + during == list(range(before[0], during[-1] + 1))
    assert line.records.count() == during[-1]


@needs_parts
def test_webhook_receiver_away_then_back_gets_every_result_in_order(line_parts):
    plc, line = line_parts["plc"], line_parts["line"]
    box = next(b for b in line.stations["cam1"].outboxes if b.name.endswith("webhook"))
    Receiver.down.set()
    last = [plc.cycle("cam1", f"hook-{k}")["Sequence"] for k in range(3)][-1]
    wait_for(lambda: box.error is not None and "503" in box.error, what="the outbox to see the 503s")
    Receiver.down.clear()
    wait_for(lambda: box.waiting() == 0, what="the webhook to be delivered")
    assert [r["sequence"] for r in Receiver.taken] == list(range(1, last + 1))


@needs_parts
def test_each_station_keeps_a_retained_status_on_mqtt_that_follows_its_outputs(line_parts):
    import paho.mqtt.client as mqtt
    plc = line_parts["plc"]
    seen = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="status-watcher")
    watcher.on_connect = lambda c, *_: c.subscribe("plant/cam1/status", qos=1)
    watcher.on_message = lambda c, u, m: seen.append((json.loads(m.payload), m.retain))
    watcher.connect("127.0.0.1", line_parts["broker"].port)
    watcher.loop_start()
    try:
        wait_for(lambda: seen, what="the retained status")  # kept by the broker for a client that comes later
        assert seen[0][1] and set(seen[0][0]) == {"error", "waiting"}
        Receiver.down.set()
        plc.cycle("cam1", "status-part")
        wait_for(lambda: any("webhook" in (s["error"] or "") for s, _ in seen), what="the webhook's error")
        Receiver.down.clear()
        wait_for(lambda: seen[-1][0] == {"error": None, "waiting": 0}, what="the error cleared")
    finally:
        Receiver.down.clear()
        watcher.loop_stop()
        watcher.disconnect()


@needs_parts
def test_plc_disconnects_and_comes_back_the_station_carries_on(line_parts):
    plc = line_parts["plc"]
    first = plc.cycle("cam1", "before-drop")["Sequence"]
    plc.run(plc.client.disconnect())
    time.sleep(0.3)
    plc.connect(["cam1"])
    after = plc.cycle("cam1", "after-drop")
    assert after["Sequence"] == first + 1 and after["Result"] in ("OK", "NG") and after["Error"] == ""


@needs_parts
def test_camera_killed_sets_error_and_restarted_clears_it(line_parts):
    plc, camera, line = line_parts["plc"], line_parts["camera"], line_parts["line"]
    rows_before = line.records.count()
    camera.kill()
    lost = plc.cycle("cam1", "no-camera", timeout=15)  # Aravis gives up on the trigger's register write first
    assert lost["Result"] == "ERROR" and "camera 127.0.0.1" in lost["Error"]
    print(f"camera lost: answered ERROR after {lost['seen_ms']:.0f} ms")
    assert plc.read("cam1", "Error").startswith("camera 127.0.0.1")
    camera.start()
    wait_for(lambda: line.stations["cam1"].state.camera_ok, timeout=20, what="the camera to be reopened")
    back = plc.cycle("cam1", "camera-back")
    assert back["Result"] in ("OK", "NG") and plc.read("cam1", "Error") == ""
    assert line.records.count() == rows_before + 1  # the ERROR part has no image to record; the next one is there


@needs_parts
def test_mqtt_triggers_reach_their_station_with_the_part_id(line_parts):
    from vqc.station.config import MqttConfig
    from vqc.station.mqtt import MqttLink
    import paho.mqtt.client as mqtt
    taken = []
    link = MqttLink(MqttConfig(port=line_parts["broker"].port, prefix="plant", client_id="trigger-test"), ["cam9"],
                    lambda station, part: taken.append((station, part)))
    try:
        wait_for(lambda: link.connected, what="the link to connect")
        time.sleep(0.3)  # its subscription is on the broker
        sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plc-sender")
        sender.connect("127.0.0.1", line_parts["broker"].port)
        sender.loop_start()
        for payload in ('{"part_id": "A-1"}', "B-2", "", '{"part_id": 7}'):
            sender.publish("plant/cam9/trigger", payload, qos=1).wait_for_publish(5)
        sender.publish("plant/other/trigger", "not mine", qos=1).wait_for_publish(5)
        wait_for(lambda: len(taken) >= 4, what="the triggers")
        sender.loop_stop()
        assert taken == [("cam9", "A-1"), ("cam9", "B-2"), ("cam9", None), ("cam9", "7")]
    finally:
        link.close()


def test_video_source_reads_a_recorded_stream_frame_by_frame(tmp_path, demo_root):
    cv2 = pytest.importorskip("cv2", reason="the video source needs opencv-python-headless")
    from vqc.station.config import SourceConfig
    from vqc.station.sources import CameraLost, VideoSource
    pictures = [np.asarray(Image.open(p).convert("RGB").resize((128, 96))) for p in list_images([demo_root / "test"])[:3]]
    path = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (128, 96))
    for picture in pictures:
        writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    writer.release()
    source = VideoSource(SourceConfig(kind="video", id=str(path), trigger="free"))
    source.open()
    frames = [source.grab() for _ in pictures]
    assert [f.name for f in frames] == ["frame-1.bmp", "frame-2.bmp", "frame-3.bmp"]
    for frame, picture in zip(frames, pictures):  # MJPG is lossy: close to the picture, RGB order kept
        assert frame.image.shape == (96, 128, 3)
        assert np.abs(frame.image.astype(int) - picture).mean() < 6
    with pytest.raises(CameraLost, match="the stream ended"):
        source.grab()
    source.close()
    with pytest.raises(CameraLost, match="cannot open"):
        VideoSource(SourceConfig(kind="video", id=str(tmp_path / "none.avi"), trigger="free")).open()
