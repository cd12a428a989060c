"""Run a :class:`~lavaconv.network.Network` on Lava, items back to back (docs/design.md §4)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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
from lavaconv.lava.graph import LavaGraph, build, to_lava
from lavaconv.lava.hardware import loihi2_available, missing_hw_models
from lavaconv.lava.procs import models
from lavaconv.lava.procs.process import IFNeuron, MaxPoolGate, Readout, SpikeSource
from lavaconv.network import IF, MaxPool, Network

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


def run_config(graph: LavaGraph, tag: str, target: str) -> RunConfig:
    """Simulation: every model chosen up front (keyed by process instance, which skips Lava's
    model discovery); Loihi 2: Lava's own selection, after checking every process can map."""
    if tag not in MODELS:
        raise LavaconvError(f"Lava tag {tag!r} unknown: use one of {sorted(MODELS)}")
    if target == "sim":
        chosen = {p: MODELS[tag][type(p)] for p in graph.processes}
        return Loihi2SimCfg(select_tag=tag, exception_proc_model_map=chosen)
    if target != "loihi2":
        raise LavaconvError(f"--target {target!r} unknown: use one of {TARGETS}")
    if not loihi2_available():
        raise LavaconvError("--target loihi2 needs Intel's Lava extension for Loihi "
                            "(lava-loihi), which is not installed; use --target sim")
    missing = missing_hw_models(graph)
    if missing:
        raise LavaconvError("--target loihi2: no Loihi 2 process model for "
                            f"{', '.join(missing)}; use --target sim")
    return Loihi2HwCfg(select_tag=tag)


@contextmanager
def _torch_single_thread() -> Iterator[None]:
    """Lava forks its processes; torch in a forked child hangs unless the parent ran 1 thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _read(graph: LavaGraph, counted: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Spike counts of ``counted`` nodes and the readout's v, in torch layout."""
    net, int_mode = graph.net, graph.net.numeric == "int"

    def value(name: str, var: str) -> np.ndarray:
        x = to_lava(getattr(graph.nodes[name], var).get(), net.nodes[name].shape)
        return np.rint(x).astype(np.int64) if int_mode or var == "count" else x

    out = net.output_name
    return {n: value(n, "count") for n in counted}, value(out, "v").reshape(-1)


def run_lava(net: Network, payload: np.ndarray, *, tag: str = "fixed_pt", target: str = "sim",
             progress: bool = False) -> LavaResult:
    """Run the items of ``payload`` ``(T, K, *input_shape)`` (as from
    :func:`lavaconv.engine.encode_input`) through Lava: per item T steps, read, one reset step."""
    graph = build(net, payload)
    cfg = run_config(graph, tag, target)
    counted = [n for n, node in net.nodes.items() if isinstance(node, (IF, MaxPool))]
    counts: dict[str, list[np.ndarray]] = {n: [] for n in counted}
    readout = []
    anchor = graph.nodes[net.input_name]

    def advance(steps: int) -> float:
        start = time.perf_counter()
        anchor.run(condition=RunSteps(num_steps=steps))
        return time.perf_counter() - start

    with _torch_single_thread():
        t0 = time.perf_counter()
        try:
            anchor.create_runtime(run_cfg=cfg)
            startup = time.perf_counter() - t0
            running = 0.0
            for k in tqdm(range(graph.items), desc="lava", unit="item", disable=not progress):
                running += advance(graph.steps)
                item_counts, v = _read(graph, counted)
                for n in counted:
                    counts[n].append(item_counts[n])
                readout.append(v)
                if k + 1 < graph.items:
                    running += advance(1)  # the reset step
        finally:
            anchor.stop()
    executed = graph.items * (graph.steps + 1) - 1
    return LavaResult({n: np.stack(c) for n, c in counts.items()}, np.stack(readout),
                      running / executed, startup)
