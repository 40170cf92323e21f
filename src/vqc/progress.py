"""Progress bars: redrawn in place at a terminal, a few plain lines in a log file or a pipe.

tqdm redraws its bar with carriage returns; written into a log that is not a terminal, that is
kilobytes of half-lines. Off a terminal the bar is printed as whole lines, at most one every
LOG_INTERVAL_S, the first and the last always.
"""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

LOG_INTERVAL_S = 5.0  # often enough to follow a job from its log, rare enough to keep the log short


class _WholeLines:
    """A stream for tqdm that writes each redraw as a line of its own."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable=None, *, shown: bool = True, **options) -> tqdm:
    """tqdm over `iterable` (or with total=...), on stderr; silent unless `shown`."""
    stream = options.pop("file", None) or sys.stderr
    if shown and not _is_terminal(stream):
        options = {**options, "file": _WholeLines(stream), "mininterval": LOG_INTERVAL_S, "ascii": True,
                   "dynamic_ncols": False, "ncols": 100}
    else:
        options["file"] = stream
    return tqdm(iterable, disable=not shown, **options)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a stream without a file behind it, or a closed one
        return False
