"""The webhook output: each result POSTed as JSON, in order, until the receiver answers 2xx.

The header `Idempotency-Key: STATION-RUN-SEQUENCE` lets a receiver drop a result it has already
taken (it answered, and the answer was lost). Anything but 2xx, or no answer in `timeout_s`, is
retried by the station's outbox (vqc.station.delivery).
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request


class Webhook:
    def __init__(self, url: str, run_id: str, timeout_s: float = 5.0):
        self.url, self.run_id, self.timeout_s = url, run_id, timeout_s

    def deliver(self, result: dict) -> None:
        request = urllib.request.Request(
            self.url, data=json.dumps(result).encode(), method="POST",
            headers={"Content-Type": "application/json",
                     "Idempotency-Key": f"{result['station']}-{self.run_id}-{result['sequence']}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            raise ConnectionError(f"webhook {self.url} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConnectionError(f"webhook {self.url} unreachable: {reason}") from None
