"""Holding back the signals that end a run (Ctrl-C, SIGTERM, SIGHUP, the ``--max-seconds``
alarm) while a step that must not be cut in half runs."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

STOPPING = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM}


@contextmanager
def held() -> Iterator[None]:
    """Block :data:`STOPPING` in this thread until the block ends; one that arrives meanwhile
    is delivered then (processes forked meanwhile inherit the mask)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
