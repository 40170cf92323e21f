"""One line of any exception, and the two places where an exception without a message broke a
running service: the 503 of an unrecorded inspection and the thread that follows deployments."""
import threading
from pathlib import Path

import pytest

from vqc.errors import first_line
from vqc.inspection import NotRecorded, Recorder
from vqc.live import Judge, LiveModels
from vqc.records import ModelIdentity


@pytest.mark.parametrize("exc, plain, typed", [
    (TimeoutError(), "TimeoutError", "TimeoutError"),
    (OSError("disk full"), "disk full", "OSError: disk full"),
    (ValueError("\n  first\nsecond"), "first", "ValueError: first"),
    (RuntimeError("   "), "RuntimeError", "RuntimeError"),
])
def test_first_line_of_any_exception_even_one_without_a_message(exc, plain, typed):
    assert first_line(exc) == plain and first_line(exc, with_type=True) == typed


class _Refusing:
    """Records whose database times out without a word, as a dropped connection can."""
    url = "postgresql://db/line"

    def add(self, rows, images, later=None):
        raise TimeoutError()


class _Model:
    threshold = None

    def normal_range(self):
        return 0.0, 1.0


def test_an_unrecorded_inspection_whose_error_has_no_message_is_not_recorded_not_a_crash():
    """The service answers NotRecorded with 503; an IndexError here was a 500."""
    recorder = Recorder(_Refusing(), _Model())
    with pytest.raises(NotRecorded, match="scored but not recorded in postgresql://db/line: TimeoutError$"):
        recorder.record([], [])


class _FlakyStore:
    """A store whose database times out (no message) on the second and third looks, then answers."""

    def __init__(self):
        self.looks = 0
        self.answered_after_failing = threading.Event()

    def deployment(self, target):
        self.looks += 1
        if self.looks in (2, 3):
            raise TimeoutError()
        if self.looks > 3:
            self.answered_after_failing.set()
        return {"live": "abc", "shadow": None}


def test_the_thread_following_deployments_outlives_a_timeout_without_a_message(caplog):
    store = _FlakyStore()
    judge = Judge(None, ModelIdentity("m", "abc", "abc" * 20, "onnx"), Path("m"), None, None)
    models = LiveModels(judge, store=store, target="line", poll_s=0.01)
    try:
        assert store.answered_after_failing.wait(10), "the deployment thread stopped at the timeout"
        assert models.poller.is_alive()
    finally:
        models.close()
    assert "deployment of line not read: TimeoutError" in caplog.text
