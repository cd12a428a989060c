"""Start, step and always stop Lava's OS processes, also after an error, Ctrl-C or SIGTERM.

Lava forks one OS process per process model plus a runtime service and a shared-memory manager.
Left alone they outlive their parent in three ways: SIGTERM kills the parent without running its
``finally`` blocks; a Ctrl-C in a terminal reaches the whole process group, so Lava's processes
die mid-protocol and the parent's stop handshake waits forever; and when one process model
raises, Lava's own error path waits for processes that wait for the failed one's messages.
:func:`running` closes all three (using lava-nc 0.10's runtime attributes where Lava has no API).
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

from lavaconv.errors import LavaconvError

HEALTH_SECONDS = 0.02  # how often a running step checks that no Lava process has died


class _Terminated(BaseException):
    """SIGTERM arrived while Lava ran."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


@contextmanager
def _sigterm_stops_lava() -> Iterator[None]:
    """In the main thread, SIGTERM raises (so the ``finally`` that stops Lava's processes runs,
    as for Ctrl-C) and is then delivered again to the caller's own handling."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous == signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, previous)
        signal.raise_signal(signal.SIGTERM)  # by default: the process ends here
        raise LavaconvError("Lava run stopped by SIGTERM") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread: processes forked meanwhile keep them blocked, so
    a Ctrl-C to the terminal's process group reaches only this process, which stops them."""
    resource_tracker.ensure_running()  # it would unblock both after starting itself
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


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


def _kill_remaining(top: AbstractProcess) -> None:
    """SIGKILL every Lava process still running (they block SIGTERM)."""
    for actor in _actors(top):
        if not _exited(actor):
            actor.kill()


def _failure(top: AbstractProcess, error: BaseException | None = None) -> RuntimeError:
    """The tracebacks of the Lava processes that raised (Lava logs them at INFO only)."""
    tracebacks = "".join(a.exception[1] for a in _actors(top) if a.exception)
    return RuntimeError("a Lava process failed:\n" + (tracebacks or repr(error)))


def _advance(top: AbstractProcess, steps: int) -> None:
    """Run ``steps`` timesteps. If a Lava process dies meanwhile (its model raised), kill the
    others, which may be waiting for its messages forever, and raise its error."""
    runtime = top.runtime
    top.run(condition=RunSteps(num_steps=steps, blocking=False))
    delay, checked = 1e-4, time.monotonic()
    while not all(port.probe() for port in runtime.service_to_runtime):
        if time.monotonic() - checked > HEALTH_SECONDS:
            if any(_exited(a) for a in _actors(top)):
                _kill_remaining(top)
                raise _failure(top)
            checked = time.monotonic()
        time.sleep(delay)
        delay = min(2 * delay, 1e-3)
    try:
        top.wait()
    except RuntimeError as error:  # Lava's own report of a failed process
        raise _failure(top, error) from error


def _stop(top: AbstractProcess) -> None:
    """Lava's stop handshake when every process is alive and has run; otherwise (an error,
    never started, or the handshake itself failing) kill what remains and free the memory."""
    runtime = top.runtime
    if runtime is None:
        return
    if runtime._is_started and not any(_exited(a) for a in _actors(top)):
        try:
            top.stop()
            return
        except BaseException:
            _release(top)
            raise
    _release(top)


def _release(top: AbstractProcess) -> None:
    runtime = top.runtime
    _kill_remaining(top)
    runtime._is_started = False  # else Runtime.__del__ would try the handshake again
    for part in (runtime._messaging_infrastructure, runtime._watchdog_manager):
        if part is not None:  # None when start-up failed before building it
            part.stop()  # joins every process and stops the shared memory / the watchdogs


@contextmanager
def running(top: AbstractProcess, cfg: RunConfig) -> Iterator[Callable[[int], None]]:
    """Start Lava's processes for ``top`` and yield ``advance(steps)``; on leaving, for
    whatever reason, none of them is left (SIGTERM is re-delivered once they are gone)."""
    with _sigterm_stops_lava():
        try:
            with _signals_blocked():
                top.create_runtime(run_cfg=cfg)
            yield lambda steps: _advance(top, steps)
        finally:
            _stop(top)
