"""Results in order to one output, each until its peer acknowledged it, while the peer comes and goes.

An `Outbox` holds the results of one station for one output (MQTT, a webhook, the PLC's nodes)
in a bounded queue and hands them, oldest first and one at a time, to `deliver(result)`, which
returns once the peer has the result (an MQTT PUBACK, a 2xx answer, a confirmed write) or raises.
A raise keeps the result at the head and tries again after a pause growing to `max_pause_s`, so
nothing is skipped and nothing overtakes. Every result carries its station's `sequence`, so a
consumer that sees one twice (the peer took it, then died before acknowledging) can tell.

When the queue is full: `stop` refuses the station's next parts until there is room (the station
answers them ERROR and says why), `drop-oldest` drops the oldest waiting result and counts it.
Either way the records hold every inspected part. The queue is in memory: results still waiting
when the process stops are named in the log and are in the records.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

from ..errors import first_line

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, name: str, deliver: Callable[[dict], None], size: int, when_full: str = "stop",
                 on_change: Callable[[], None] | None = None, max_pause_s: float = 1.0):
        self.name, self.deliver, self.size, self.when_full = name, deliver, size, when_full
        self.on_change = on_change or (lambda: None)
        self.max_pause_s = max_pause_s
        self.queue: collections.deque[dict] = collections.deque()
        self.cond = threading.Condition()
        self.error: str | None = None  # why the head is not delivered, while it is not
        self.delivered = self.dropped = 0
        self.closing = False
        self.thread = threading.Thread(target=self._run, name=f"outbox-{name}", daemon=True)
        self.thread.start()

    def full(self) -> bool:
        return self.when_full == "stop" and len(self.queue) >= self.size

    def waiting(self) -> int:
        return len(self.queue)

    def put(self, result: dict) -> None:
        with self.cond:
            if len(self.queue) >= self.size:
                if self.when_full == "stop":  # the station checks full() before it takes a part
                    raise RuntimeError(f"{self.name}: queue full")
                self.queue.popleft()
                self.dropped += 1
                log.warning("%s: queue full (%d): dropped the oldest result (it is in the records)", self.name,
                            self.size)
            self.queue.append(result)
            self.cond.notify_all()

    def _run(self) -> None:
        pause = 0.02
        while True:
            with self.cond:
                while not self.queue and not self.closing:
                    self.cond.wait()
                if not self.queue:
                    return
                head = self.queue[0]
            try:
                self.deliver(head)
            except Exception as exc:  # the peer is away: keep the head, say why, try again
                message = f"{self.name}: {first_line(exc)}"
                if message != self.error:
                    self.error = message
                    log.warning("%s; %d results waiting", message, len(self.queue))
                    self.on_change()
                if self.closing and self.close_deadline < time.monotonic():
                    return
                time.sleep(pause)
                pause = min(pause * 2, self.max_pause_s)
                continue
            pause = 0.02
            with self.cond:
                if self.queue and self.queue[0] is head:
                    self.queue.popleft()
                self.delivered += 1
                self.cond.notify_all()
            if self.error is not None:
                self.error = None
                log.info("%s: delivering again", self.name)
                self.on_change()

    def close(self, timeout_s: float = 5.0) -> int:
        """Deliver what waits for up to timeout_s; the number of results left undelivered."""
        self.close_deadline = time.monotonic() + timeout_s
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.thread.join(timeout_s + self.max_pause_s)
        left = len(self.queue)
        if left:
            log.warning("%s: %d results not delivered at shutdown (they are in the records)", self.name, left)
        return left
