"""Run a :class:`~lavaconv.network.Network` on Lava, items back to back (docs/design.md §4)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import resource_tracker

import numpy as np
import torch
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2HwCfg, Loihi2SimCfg, RunConfig
from lava.proc.conv.models import PyConvModelFixed, PyConvModelFloat
from lava.proc.conv.process import Conv as LavaConv
from lava.proc.dense.models import PyDenseModelBitAcc, PyDenseModelFloat
from lava.proc.dense.process import Dense as LavaDense
from tqdm import tqdm

from lavaconv.errors import LavaconvError
from lavaconv.lava import fused
from lavaconv.lava.graph import LavaGraph, build, to_lava
from lavaconv.lava.hardware import loihi2_available, missing_hw_models
from lavaconv.lava.procs import models
from lavaconv.lava.procs.process import (
    COUNTED,
    IFNeuron,
    MaxPoolGate,
    Readout,
    SpikeSource,
    SpikingNetwork,
)
from lavaconv.network import Network

MODELS = {
    "fixed_pt": {IFNeuron: models.PyIFModelFixed, Readout: models.PyReadoutModelFixed,
                 SpikeSource: models.PySpikeSourceModelFixed,
                 MaxPoolGate: models.PyMaxPoolGateModel,
                 LavaDense: PyDenseModelBitAcc, LavaConv: PyConvModelFixed},
    "floating_pt": {IFNeuron: models.PyIFModelFloat, Readout: models.PyReadoutModelFloat,
                    SpikeSource: models.PySpikeSourceModelFloat,
                    MaxPoolGate: models.PyMaxPoolGateModel,
                    LavaDense: PyDenseModelFloat, LavaConv: PyConvModelFloat},
}
TARGETS = ("sim", "loihi2")


@dataclass
class LavaResult:
    """What Lava computed for K items (torch layouts)."""

    spike_counts: dict[str, np.ndarray]  # IF / MaxPool node → spikes per neuron, (K, *shape)
    readout: np.ndarray  # (K, n_out): readout v at each item's last step
    seconds_per_step: float  # wall time per executed Lava timestep (reset steps included)
    startup_seconds: float  # compile and process start-up


def run_config(graph: LavaGraph, tag: str, target: str, fast: bool) -> RunConfig:
    """Every model chosen up front, keyed by process instance (which skips Lava's model
    discovery). Simulation: ``graph.top`` fused into one CPU process (``fast``), or its
    sub-process model with Lava's stock models; Loihi 2: the sub-process model with Lava's own
    selection for the sub-processes, after checking every one of them can map."""
    if tag not in MODELS:
        raise LavaconvError(f"Lava tag {tag!r} unknown: use one of {sorted(MODELS)}")
    if target not in TARGETS:
        raise LavaconvError(f"--target {target!r} unknown: use one of {TARGETS}")
    if fast and (target, tag) != ("sim", "fixed_pt"):
        raise LavaconvError(f"fast Lava models exist for --target sim with fixed_pt only, not "
                            f"{target} with {tag}; run with fast=False")
    if fast:
        for proc in graph.synapses.values():
            fused.kernel(proc)  # refuses, here rather than in Lava's process, what it cannot run
        return Loihi2SimCfg(select_tag=tag, exception_proc_model_map={
            graph.top: models.PySpikingNetworkModelFused})
    sub = {graph.top: models.SubSpikingNetworkModel}
    if target == "sim":
        chosen = {p: MODELS[tag][type(p)] for p in graph.processes}
        return Loihi2SimCfg(select_tag=tag, exception_proc_model_map={**sub, **chosen})
    if not loihi2_available():
        raise LavaconvError("--target loihi2 needs Intel's Lava extension for Loihi "
                            "(lava-loihi), which is not installed; use --target sim")
    missing = missing_hw_models(graph)
    if missing:
        raise LavaconvError("--target loihi2: no Loihi 2 process model for "
                            f"{', '.join(missing)}; use --target sim")
    return Loihi2HwCfg(select_tag=tag, exception_proc_model_map=sub)


@contextmanager
def _torch_single_thread() -> Iterator[None]:
    """Lava forks its processes; torch in a forked child hangs unless the parent ran 1 thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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


def _release(runtime) -> None:
    """Kill whatever Lava process still runs (they block SIGTERM) and free the shared memory,
    without Lava's stop handshake (relies on lava-nc 0.10's runtime attributes)."""
    infrastructure = runtime._messaging_infrastructure
    for actor in infrastructure.actors:
        if not actor._is_done:
            actor.kill()
    runtime._is_started = False  # else Runtime.__del__ would try the handshake again
    infrastructure.stop()  # joins every process, shuts the shared-memory manager down
    runtime._watchdog_manager.stop()


def _stop(top: SpikingNetwork) -> None:
    """Stop Lava's processes. After an error inside a process model Lava has joined some of
    them already and its stop handshake would wait forever: release them instead, as when the
    handshake itself fails or is interrupted."""
    runtime = top.runtime
    if runtime is None:
        return
    if any(actor._is_done for actor in runtime._messaging_infrastructure.actors):
        _release(runtime)
        return
    try:
        top.stop()
    except BaseException:
        _release(runtime)
        raise


def _read(graph: LavaGraph, fast: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Spike counts of the counted nodes and the readout's v of the current item, in torch
    layout: from the fused model's Vars (``fast``) or from the sub-processes'."""
    net, int_mode = graph.net, graph.net.numeric == "int"
    counted = [n for n, p in graph.nodes.items() if isinstance(p, COUNTED)]
    if fast:
        shapes = [graph.nodes[n].count.shape for n in counted]
        flat = np.split(graph.top.count.get(), np.cumsum([np.prod(s) for s in shapes])[:-1])
        counts = {n: x.reshape(s) for n, x, s in zip(counted, flat, shapes, strict=True)}
        v = graph.top.v.get()
    else:
        counts = {n: graph.nodes[n].count.get() for n in counted}
        v = graph.nodes[net.output_name].v.get()

    def torch_layout(name: str, x: np.ndarray, integer: bool) -> np.ndarray:
        x = to_lava(x, net.nodes[name].shape)
        return np.rint(x).astype(np.int64) if integer else x

    return ({n: torch_layout(n, x, True) for n, x in counts.items()},
            torch_layout(net.output_name, v, int_mode).reshape(-1))


def run_lava(net: Network, payload: np.ndarray, *, tag: str = "fixed_pt", target: str = "sim",
             fast: bool | None = None, progress: bool = False) -> LavaResult:
    """Run the items of ``payload`` ``(T, K, *input_shape)`` (as from
    :func:`lavaconv.engine.encode_input`) through Lava: per item T steps, read, one reset step.

    ``fast`` (default: for ``target='sim'`` with ``fixed_pt``) runs the same process graph with
    the fused CPU model, bit-exact with Lava's stock models; ``fast=False`` uses those."""
    fast = (target, tag) == ("sim", "fixed_pt") if fast is None else fast
    graph = build(net, payload)
    cfg = run_config(graph, tag, target, fast)
    counts: dict[str, list[np.ndarray]] = {}
    readout = []
    top = graph.top

    def advance(steps: int) -> float:
        start = time.perf_counter()
        try:
            top.run(condition=RunSteps(num_steps=steps))
        except RuntimeError as error:  # Lava logs the failed model's traceback at INFO only
            failures = [a.exception[1] for a in top.runtime._messaging_infrastructure.actors
                        if a._is_done and a.exception]
            raise RuntimeError("a Lava process failed:\n" + "".join(failures)) from error
        return time.perf_counter() - start

    with _torch_single_thread(), _sigterm_stops_lava():
        t0 = time.perf_counter()
        try:
            with _signals_blocked():
                top.create_runtime(run_cfg=cfg)
            startup = time.perf_counter() - t0
            running = 0.0
            for k in tqdm(range(graph.items), desc="lava", unit="item", disable=not progress):
                running += advance(graph.steps)
                item_counts, v = _read(graph, fast)
                for n, c in item_counts.items():
                    counts.setdefault(n, []).append(c)
                readout.append(v)
                if k + 1 < graph.items:
                    running += advance(1)  # the reset step
        finally:
            _stop(top)
    executed = graph.items * (graph.steps + 1) - 1
    return LavaResult({n: np.stack(c) for n, c in counts.items()}, np.stack(readout),
                      running / executed, startup)
