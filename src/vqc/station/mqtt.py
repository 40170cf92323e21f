"""MQTT with paho-mqtt: triggers subscribed, results published with QoS 1, one connection per line.

Topics, under `prefix` (default vqc):
- `PREFIX/STATION/trigger` (subscribed, QoS 1): a part to inspect; the payload is its part id, as
  text or as JSON {"part_id": ...}; empty: no id.
- `PREFIX/STATION/result` (QoS 1): one JSON result per part, with the station's `sequence`.
- `PREFIX/STATION/status` (QoS 1, retained): {"error": ..., "waiting": ...} when it changes: the
  station's error or its first output's (null when none), and the results its outputs hold.
- `PREFIX/status` (retained): "online", and "offline" as the broker's will when vqc drops away.

`deliver` publishes a result once and returns when the broker's PUBACK for it has come; paho
sends it again by itself after a reconnect, so a result is never published twice by vqc.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
from typing import Callable

from ..errors import VqcError
from .config import MqttConfig

log = logging.getLogger(__name__)
ACK_WAIT_S = 0.5  # a delivery not acknowledged by then is retried by the outbox (waiting on the same message)


class MqttLink:
    def __init__(self, config: MqttConfig, trigger_stations: list[str], on_trigger: Callable[[str, str | None], None],
                 status_of: Callable[[str], dict | None] = lambda station: None):
        """status_of(station): the station's status payload now (None: not known yet)."""
        try:
            import paho.mqtt.client as mqtt
        except ModuleNotFoundError:
            raise VqcError('MQTT needs paho-mqtt: pip install "vqc-inspect[line]"') from None
        self.mqtt, self.config = mqtt, config
        self.trigger_stations, self.on_trigger, self.status_of = set(trigger_stations), on_trigger, status_of
        self.published: dict[str, dict] = {}
        self.stations_seen: set[str] = set()  # the status last published per station (retained at the broker)
        self.connected = False
        self.error: str | None = f"broker {config.host}:{config.port}: not connected yet"
        self.acked: set[int] = set()
        self.pending: dict[str, tuple[int, int]] = {}  # station -> (sequence, mid) published, not yet acknowledged
        self.cond = threading.Condition()
        client_id = config.client_id or f"vqc-{socket.gethostname()}-{os.getpid()}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        self.client.will_set(self.topic("status"), "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=2)
        self.client.max_inflight_messages_set(100)
        self.client.on_connect, self.client.on_disconnect = self._connected, self._disconnected
        self.client.on_publish, self.client.on_message = self._acknowledged, self._message
        self.client.connect_async(config.host, config.port, keepalive=config.keepalive_s)
        self.client.loop_start()

    def topic(self, *parts: str) -> str:
        return "/".join((self.config.prefix, *parts))

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.error = f"broker {self.config.host}:{self.config.port} refused: {reason_code}"
            return
        for station in self.trigger_stations:
            client.subscribe(self.topic(station, "trigger"), qos=1)
        client.publish(self.topic("status"), "online", qos=1, retain=True)
        self.connected, self.error = True, None
        log.info("MQTT: connected to %s:%d", self.config.host, self.config.port)
        self.published.clear()  # a broker that restarted without persistence has lost the retained ones
        for station in list(self.stations_seen):
            self.publish_status(station)

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = False
        self.error = f"broker {self.config.host}:{self.config.port} unreachable ({reason_code})"
        with self.cond:
            self.cond.notify_all()

    def _acknowledged(self, client, userdata, mid, reason_code, properties) -> None:
        with self.cond:
            self.acked.add(mid)
            self.cond.notify_all()

    def _message(self, client, userdata, message) -> None:
        parts = message.topic.split("/")
        station = parts[-2] if len(parts) >= 2 else None
        if station not in self.trigger_stations:
            return
        text = message.payload.decode("utf-8", "replace").strip()
        part_id = text or None
        if text.startswith("{"):
            try:
                part_id = json.loads(text).get("part_id")
            except (ValueError, AttributeError):
                log.warning("MQTT: trigger for %s is not JSON: %.60s", station, text)
        self.on_trigger(station, None if part_id is None else str(part_id))

    def deliver(self, station: str, result: dict) -> None:
        with self.cond:
            sequence, mid = self.pending.get(station, (None, None))
            if sequence != result["sequence"]:
                if not self.connected:  # published now it would only wait in paho's queue
                    raise ConnectionError(self.error or "broker unreachable")
                info = self.client.publish(self.topic(station, "result"), json.dumps(result), qos=1)
                if info.rc == self.mqtt.MQTT_ERR_QUEUE_SIZE:
                    raise ConnectionError("paho's outgoing queue is full")
                sequence, mid = result["sequence"], info.mid
                self.pending[station] = (sequence, mid)
            if not self.cond.wait_for(lambda: mid in self.acked, ACK_WAIT_S):
                raise ConnectionError(self.error or f"no acknowledgement from {self.config.host}:{self.config.port} yet")
            self.acked.discard(mid)
            del self.pending[station]

    def publish_status(self, station: str) -> None:
        """The station's status on its retained topic, when it differs from the one last published."""
        self.stations_seen.add(station)
        status = self.status_of(station)
        if status is None or not self.connected or self.published.get(station) == status:
            return
        self.client.publish(self.topic(station, "status"), json.dumps(status), qos=1, retain=True)
        self.published[station] = status

    def signal_error(self, station: str, text: str | None) -> None:
        """A station's error set or cleared (the station tells its error signals)."""
        self.publish_status(station)

    def close(self) -> None:
        if self.connected:
            self.client.publish(self.topic("status"), "offline", qos=1, retain=True).wait_for_publish(1)
        self.client.disconnect()
        self.client.loop_stop()
