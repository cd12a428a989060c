"""Start, step and always stop Lava's OS processes, also after an error, Ctrl-C, SIGTERM or SIGHUP.

Lava forks one OS process per process model plus a runtime service and a shared-memory manager.
Left alone they outlive their parent, or hang it, in four ways: SIGTERM kills the parent without
running its ``finally`` blocks; a Ctrl-C in a terminal reaches the whole process group, so
Lava's processes die mid-protocol; an exception that cuts a get or a run short leaves Lava's
stop handshake waiting forever; and when one process model raises, Lava's own error path waits
for processes that wait for the failed one's messages. :func:`running` handles all four: SIGTERM
(and SIGHUP) raises and is re-delivered afterwards, Lava's processes start with SIGINT, SIGTERM
and SIGHUP blocked,
after any exception they are killed instead of asked to stop, and a run polls for a dead process
instead of waiting on Lava (using lava-nc 0.10's runtime attributes where Lava has no API).
``--max-seconds`` (SIGALRM, :mod:`lavaconv.app.cli`) is one more exception: it cuts a run short
mid-step; neither it nor a signal cuts the start or the cleanup short.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing import resource_tracker

from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import RunConfig
from lava.magma.runtime.mgmt_token_enums import MGMT_RESPONSE, enum_equal

from lavaconv import signals
from lavaconv.errors import LavaconvError

HEALTH_SECONDS = 0.02  # how often a running step checks that no Lava process has died
FAILURE_SECONDS = 5.0  # how long a failed run waits for the failed process's traceback


TERMINATING = (signal.SIGTERM, signal.SIGHUP)  # end a process without its finally blocks


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived while Lava ran."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame) -> None:
    raise _Terminated(signum)


@contextmanager
def _sigterm_stops_lava() -> Iterator[None]:
    """In the main thread, SIGTERM and SIGHUP raise (so the ``finally`` that stops Lava's
    processes runs, as for Ctrl-C) and are then delivered again to the caller's own handling
    (a signal the caller ignores is left alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in TERMINATING}
    for signum, handler in previous.items():
        if handler != signal.SIG_IGN:
            signal.signal(signum, _raise_terminated)
    try:
        yield
    except _Terminated as stop:
        signal.signal(stop.signum, previous[stop.signum])
        signal.raise_signal(stop.signum)  # by default: the process ends here
        raise LavaconvError(f"Lava run stopped by {signal.Signals(stop.signum).name}") from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGALRM in this thread until the block ends: processes forked
    meanwhile keep them blocked, so a Ctrl-C to the terminal's process group reaches only this
    process, which stops them; and none of them interrupts Lava's start or a cleanup."""
    resource_tracker.ensure_running()  # it would unblock them after starting itself
    with signals.held():
        yield


def _exited(actor) -> bool:
    """Has this Lava process ended (without reaping it)?"""
    if actor._is_done:
        return True
    try:
        return os.waitid(os.P_PID, actor.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _actors(top: AbstractProcess) -> list:
    infrastructure = top.runtime._messaging_infrastructure
    return infrastructure.actors if infrastructure is not None else []


def _failure(top: AbstractProcess) -> RuntimeError:
    """The tracebacks of the Lava processes that raised (Lava logs them at INFO only), once
    one of them has ended."""
    deadline = time.monotonic() + FAILURE_SECONDS
    while not any(_exited(a) for a in _actors(top)) and time.monotonic() < deadline:
        time.sleep(0.01)
    tracebacks = "".join(a.exception[1] for a in _actors(top) if a.exception)
    return RuntimeError("a Lava process failed:\n" + (tracebacks or "(no traceback)"))


def _advance(top: AbstractProcess, steps: int) -> None:
    """Run ``steps`` timesteps; raise as soon as a Lava process has died (its model raised) or
    Lava reports an error: Lava's own error path waits for processes that may never end."""
    runtime = top.runtime
    top.run(condition=RunSteps(num_steps=steps, blocking=False))
    delay, checked = 1e-4, time.monotonic()
    while not all(port.probe() for port in runtime.service_to_runtime):
        if time.monotonic() - checked > HEALTH_SECONDS:
            if any(_exited(a) for a in _actors(top)):
                raise _failure(top)
            checked = time.monotonic()
        time.sleep(delay)
        delay = min(2 * delay, 1e-3)
    if not all(enum_equal(port.peek(), MGMT_RESPONSE.DONE) for port in runtime.service_to_runtime):
        raise _failure(top)
    top.wait()  # takes the DONE


def _release(top: AbstractProcess) -> None:
    """Without a word to Lava's processes (an exception may have cut their protocol short):
    SIGKILL those still running (they block SIGTERM), join them, free the shared memory."""
    runtime = top.runtime
    if runtime is None:
        return
    with _signals_blocked():
        for actor in _actors(top):
            if not _exited(actor):
                actor.kill()
        runtime._is_started = False  # else Runtime.__del__ would try Lava's stop handshake
        runtime.join()  # this process's ends of the channels
        for part in (runtime._messaging_infrastructure, runtime._watchdog_manager):
            if part is not None:  # None when start-up failed before building it
                part.stop()  # joins every process and stops the shared memory / the watchdogs


@contextmanager
def running(top: AbstractProcess, cfg: RunConfig) -> Iterator[Callable[[int], None]]:
    """Start Lava's processes for ``top`` and yield ``advance(steps)``. On success they stop by
    Lava's handshake; after any exception (an error, Ctrl-C, SIGTERM) they are killed, since
    the handshake could wait forever. None is left either way; SIGTERM is re-delivered after."""
    with _sigterm_stops_lava():
        try:
            with _signals_blocked():
                top.create_runtime(run_cfg=cfg)
            yield lambda steps: _advance(top, steps)
        except BaseException:
            _release(top)
            raise
        try:
            top.stop()
        except BaseException:
            _release(top)
            raise
