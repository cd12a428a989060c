"""Run a :class:`~lavaconv.ir.network.Network` on Lava, items back to back (docs/design.md §4)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from lava.magma.core.run_configs import Loihi2HwCfg, Loihi2SimCfg, RunConfig
from lava.proc.conv.models import PyConvModelFixed, PyConvModelFloat
from lava.proc.conv.process import Conv as LavaConv
from lava.proc.dense.models import PyDenseModelBitAcc, PyDenseModelFloat
from lava.proc.dense.process import Dense as LavaDense
from tqdm import tqdm

from lavaconv.errors import LavaconvError
from lavaconv.ir.network import Network
from lavaconv.lava import fused, lifecycle
from lavaconv.lava.dynamics import unpack_shaped
from lavaconv.lava.graph import LavaGraph, build, to_lava
from lavaconv.lava.hardware import loihi2_available, missing_hw_models
from lavaconv.lava.procs import models
from lavaconv.lava.procs.process import COUNTED, Delay, IFNeuron, MaxPoolGate, Readout, SpikeSource

MODELS = {
    "fixed_pt": {IFNeuron: models.PyIFModelFixed, Readout: models.PyReadoutModelFixed,
                 SpikeSource: models.PySpikeSourceModelFixed,
                 MaxPoolGate: models.PyMaxPoolGateModelFixed, Delay: models.PyDelayModelFixed,
                 LavaDense: PyDenseModelBitAcc, LavaConv: PyConvModelFixed},
    "floating_pt": {IFNeuron: models.PyIFModelFloat, Readout: models.PyReadoutModelFloat,
                    SpikeSource: models.PySpikeSourceModelFloat,
                    MaxPoolGate: models.PyMaxPoolGateModelFloat, Delay: models.PyDelayModelFloat,
                    LavaDense: PyDenseModelFloat, LavaConv: PyConvModelFloat},
}
TARGETS = ("sim", "loihi2")


@dataclass
class LavaResult:
    """What Lava computed for K items (torch layouts)."""

    spike_counts: dict[str, np.ndarray]  # IF / MaxPool node → spikes per neuron, (K, *shape)
    readout: np.ndarray  # (K, n_out): readout score (v or count) at each item's last step
    seconds_per_step: float  # wall time per executed Lava timestep (reset steps included)
    startup_seconds: float  # compile and process start-up
    process_classes: dict[str, int] = field(default_factory=dict)  # class name → processes
    hardware: dict = field(default_factory=dict)  # {ready, missing} for Loihi 2
    spike_trains: dict[str, np.ndarray] = field(default_factory=dict)  # where recorded: node →
    # (K, T, *shape) bool, torch layout (the stock graph's Monitor probes)


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


def _read(graph: LavaGraph, fast: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Spike counts of the counted nodes and the readout's score (v, or its spike count in
    ``count`` mode) of the current item, in torch layout: from the fused model's Vars
    (``fast``) or from the sub-processes'."""
    net, int_mode = graph.net, graph.net.numeric == "int"
    counted = [n for n, p in graph.nodes.items() if isinstance(p, COUNTED)]
    if fast:
        shapes = [graph.nodes[n].count.shape for n in counted]
        counts = dict(zip(counted, unpack_shaped(graph.top.count.get(), shapes, graph.steps),
                          strict=True))
        score = graph.top.score.get()
    else:
        counts = {n: graph.nodes[n].count.get() for n in counted}
        out = graph.nodes[net.output_name]
        score = (out.count if net.nodes[net.output_name].mode == "count" else out.v).get()

    def torch_layout(name: str, x: np.ndarray, integer: bool) -> np.ndarray:
        x = to_lava(x, net.nodes[name].shape)
        return np.rint(x).astype(np.int64) if integer else x

    return ({n: torch_layout(n, x, True) for n, x in counts.items()},
            torch_layout(net.output_name, score, int_mode).reshape(-1))


def _timed(advance: Callable[[int], None], steps: int) -> float:
    start = time.perf_counter()
    advance(steps)
    return time.perf_counter() - start


def run_lava(net: Network, payload: np.ndarray, *, tag: str = "fixed_pt", target: str = "sim",
             fast: bool | None = None, progress: bool = False) -> LavaResult:
    """Run the items of ``payload`` ``(T, K, *input_shape)`` (as from
    :func:`lavaconv.sim.engine.encode_input`) through Lava: per item T steps, read, one reset step.

    ``fast`` (default: for ``target='sim'`` with ``fixed_pt``) runs the same process graph with
    the fused CPU model, bit-exact with Lava's stock models; ``fast=False`` uses those.
    A network for the stock LIF graph (reset 'lif') runs with
    :func:`lavaconv.lava.stock.run_stock`."""
    if any(getattr(n, "reset", None) == "lif" for n in net.nodes.values()):
        raise LavaconvError("a network with reset 'lif' is the stock LIF graph: run it with "
                            "lavaconv.lava.stock.run_stock")
    if net.is_sigma_delta:  # Lava's stock processes only (lavaconv.lava.sdn)
        if (target, tag) != ("sim", "fixed_pt") or fast:
            raise LavaconvError("sigma-delta networks run on Lava's stock fixed_pt models "
                                "(--target sim); the fused model covers IF networks only")
        from lavaconv.lava import sdn
        return LavaResult(*sdn.run(net, payload, progress=progress))
    fast = (target, tag) == ("sim", "fixed_pt") if fast is None else fast
    graph = build(net, payload)
    cfg = run_config(graph, tag, target, fast)
    counts: dict[str, list[np.ndarray]] = {}
    readout = []
    running = 0.0
    with _torch_single_thread():
        t0 = time.perf_counter()
        with lifecycle.running(graph.top, cfg) as advance:
            startup = time.perf_counter() - t0
            for k in tqdm(range(graph.items), desc="lava", unit="item", disable=not progress):
                running += _timed(advance, graph.steps)
                item_counts, v = _read(graph, fast)
                for n, c in item_counts.items():
                    counts.setdefault(n, []).append(c)
                readout.append(v)
                if k + 1 < graph.items:
                    running += _timed(advance, 1)  # the reset step
    executed = graph.items * (graph.steps + 1) - 1
    classes = Counter(f"{type(p).__module__}.{type(p).__qualname__}"
                      for p in [graph.top, *graph.processes])
    return LavaResult({n: np.stack(c) for n, c in counts.items()}, np.stack(readout),
                      running / executed, startup, dict(sorted(classes.items())),
                      ours_hardware(graph))


def ours_hardware(graph: LavaGraph) -> dict:
    """``{ready, missing}`` for Loihi 2 of a graph with lavaconv's own processes: they have
    CPU models only."""
    missing = [] if loihi2_available() else ["lava-loihi (Intel's Loihi 2 extension, INRC)"]
    ours = sorted({type(p).__name__ for p in [graph.top, *graph.processes]
                   if type(p).__module__.startswith("lavaconv.")})
    missing += [f"a Loihi 2 model for lavaconv's {name} (CPU only)" for name in ours]
    return {"ready": not missing, "missing": missing}
