"""Fault points for the crash and failure tests: the one parser of ``SAMSEARCH_FAULT``.

``SAMSEARCH_FAULT=<point>:<n>`` ends the process (``os._exit(77)``: a real crash, no cleanup, no exception
handlers) the n-th time :func:`fault_point` is reached with that name; ``<point>:<n>:raise`` raises the
exception type the caller names there instead (e.g. a failing vector store), once, at the n-th time;
``<point>:<n>:wait=<file>`` holds the process there, from the n-th time on, until ``file`` exists (a job
caught in the middle, for tests that run commands beside it; at most 10 minutes).
Unset, a fault point costs one environment lookup.
"""

from __future__ import annotations

import os
import threading
import time

CRASH_EXIT_CODE = 77
_counts: dict[str, int] = {}
_lock = threading.Lock()


def fault_point(point: str, raises: type[Exception] | None = None) -> None:
    spec = os.environ.get("SAMSEARCH_FAULT")
    if not spec:
        return
    name, _, rest = spec.partition(":")
    if name != point:
        return
    nth_text, _, mode = rest.partition(":")
    nth = int(nth_text or 1)
    with _lock:
        count = _counts[point] = _counts.get(point, 0) + 1
    if mode.startswith("wait="):
        deadline = time.monotonic() + 600
        while count >= nth and not os.path.exists(mode.partition("=")[2]) and time.monotonic() < deadline:
            time.sleep(0.05)
    elif mode == "raise" and raises is not None:
        if count == nth:
            raise raises(f"injected fault at {point} #{count} (SAMSEARCH_FAULT)")
    elif count >= nth:
        os._exit(CRASH_EXIT_CODE)


def reset() -> None:
    """Forget how often each point was reached (tests that set SAMSEARCH_FAULT in-process)."""
    with _lock:
        _counts.clear()
