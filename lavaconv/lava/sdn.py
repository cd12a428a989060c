"""A sigma-delta :class:`~lavaconv.ir.network.Network` as a graph of Lava's stock processes
only (docs/sigma-delta.md): ``Delta`` for the input, ``SigmaDelta`` per population, ``Sigma``
for the readout, ``Dense``/``Conv`` per synapse, ``io.source.RingBuffer`` for the input items
and the bias pulses (into ``a_in``, no synapse), ``io.sink.RingBuffer`` to record messages and
the readout. Run with Lava's own fixed-point models (``Loihi2SimCfg``, ``fixed_pt``), which the
integer engine (:mod:`lavaconv.sim.sigma_delta`) matches bit for bit.

Items run back to back, ``T`` steps each; between two items the run pauses and every state
(sigma, act, residue, error; the synapses' buffers) is set back to zero, so each item starts
from rest like the engine's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.conv.models import PyConvModelFixed
from lava.proc.conv.process import Conv as LavaConv
from lava.proc.dense.models import PyDenseModelBitAcc
from lava.proc.dense.process import Dense as LavaDense
from lava.proc.io.sink import PyReceiveModelFixed
from lava.proc.io.sink import RingBuffer as Sink
from lava.proc.io.source import PySendModelFixed
from lava.proc.io.source import RingBuffer as Source
from lava.proc.sdn.models import PyDeltaModelFixed, PySigmaDeltaModelFixed, PySigmaModelFixed
from lava.proc.sdn.process import ActivationMode, Delta, Sigma, SigmaDelta

from lavaconv.errors import LavaconvError
from lavaconv.ir.network import Conv, Dense, Input, Network, Readout
from lavaconv.ir.network import SigmaDelta as SigmaDeltaNode
from lavaconv.lava import lifecycle
from lavaconv.lava.graph import _connect, lava_shape, lava_synapse, to_lava

MODELS = {Delta: PyDeltaModelFixed, SigmaDelta: PySigmaDeltaModelFixed, Sigma: PySigmaModelFixed,
          Source: PySendModelFixed, Sink: PyReceiveModelFixed, LavaDense: PyDenseModelBitAcc,
          LavaConv: PyConvModelFixed}
STATE_VARS = {Delta: ("act", "residue", "error"),
              SigmaDelta: ("sigma", "act", "residue", "error"), Sigma: ("sigma",),
              LavaDense: ("a_buff",), LavaConv: ("a_buf",)}


@dataclass
class SdnGraph:
    """Stock processes of one sigma-delta network."""

    net: Network
    nodes: dict[str, AbstractProcess]  # node name -> Delta / SigmaDelta / Sigma
    synapses: dict[str, AbstractProcess]  # "i:source->target" -> Dense / Conv
    sources: dict[str, Source]  # "input" and node name -> its bias pulse
    sinks: dict[str, Sink]  # node name -> record of what it sends (T steps)
    steps: int
    items: int

    @property
    def processes(self) -> list[AbstractProcess]:
        return [*self.nodes.values(), *self.synapses.values(), *self.sources.values(),
                *self.sinks.values()]


def _message_bits(net: Network, name: str) -> int:
    node = net.nodes[name]
    if isinstance(node, Input):
        return node.payload_bits + 1  # a change of the payload
    return node.message_bits


def _mantissa(value: float, shift: int, what: str) -> int:
    full = int(value)
    if full != value or full % (1 << shift):
        raise LavaconvError(f"{what}: {value} is not an integer multiple of 2**{shift}")
    return full >> shift


def _node(name: str, node, steps: int) -> tuple[AbstractProcess, Source | None]:
    shape = lava_shape(node.shape)
    if isinstance(node, Input):
        shift = node.state_exp
        return Delta(shape=shape, vth=_mantissa(node.delta_threshold, shift, name), spike_exp=0,
                     state_exp=shift), None
    if isinstance(node, SigmaDeltaNode):
        shift = node.state_exp + node.spike_exp
        proc = SigmaDelta(shape=shape, vth=_mantissa(node.v_threshold, shift, name), bias=0,
                          act_mode=ActivationMode.RELU, spike_exp=node.spike_exp,
                          state_exp=node.state_exp, name=name)
    else:
        proc = Sigma(shape=shape)
    bias = np.broadcast_to(np.asarray(node.bias), node.shape)
    pulse = None
    if np.any(bias != 0) and node.t_start < steps:  # the bias arrives once, with the input
        data = np.zeros((*shape, steps), dtype=np.int32)
        data[..., node.t_start] = to_lava(bias.astype(np.int32), node.shape)
        pulse = Source(data=data)
    return proc, pulse


def _synapse(key: str, syn: Conv | Dense, net: Network) -> AbstractProcess:
    w = np.asarray(syn.weight)
    if not np.array_equal(w, np.round(w)):
        raise LavaconvError(f"synapse {key}: quantize the network first (non-integer weights)")
    return lava_synapse(key, syn, net, w.astype(np.int32),
                        int(syn.weight_exp) if isinstance(syn, Dense) else 0)


def build(net: Network, payload: np.ndarray) -> SdnGraph:
    """Stock processes for integer sigma-delta network ``net`` playing ``payload``
    ``(T, K, *input_shape)`` (what :func:`lavaconv.sim.engine.encode_input` gives)."""
    if net.numeric != "int" or not net.is_sigma_delta:
        raise LavaconvError("the stock sigma-delta graph needs an integer sigma-delta network")
    if any(s.delay for s in net.synapses):
        raise LavaconvError("the stock sigma-delta graph has no synaptic delays")
    payload = np.asarray(payload)
    steps, items = payload.shape[:2]
    inp = net.nodes[net.input_name]
    if tuple(payload.shape[2:]) != tuple(inp.shape):
        raise LavaconvError(f"payload shape {payload.shape[2:]} does not match the input "
                            f"{tuple(inp.shape)}")
    nodes: dict[str, AbstractProcess] = {}
    sources: dict[str, Source] = {}
    sinks: dict[str, Sink] = {}
    flat = np.swapaxes(payload, 0, 1).reshape(items * steps, *inp.shape)
    sources["input"] = Source(data=np.ascontiguousarray(
        np.moveaxis(to_lava(flat, inp.shape), 0, -1)).astype(np.int32))
    for name, node in net.nodes.items():
        proc, pulse = _node(name, node, steps)
        nodes[name] = proc
        if pulse is not None:
            sources[name] = pulse
            pulse.s_out.connect(proc.a_in)
        if not isinstance(node, Input):
            sinks[name] = Sink(shape=lava_shape(node.shape), buffer=steps)
            proc.s_out.connect(sinks[name].a_in)
    sources["input"].s_out.connect(nodes[net.input_name].a_in)
    synapses: dict[str, AbstractProcess] = {}
    for i, syn in enumerate(net.synapses):
        key = f"{i}:{syn.source}->{syn.target}"
        proc = synapses[key] = _synapse(key, syn, net)
        _connect(nodes[syn.source].s_out, proc.s_in)
        _connect(proc.a_out, nodes[syn.target].a_in)
    return SdnGraph(net, nodes, synapses, sources, sinks, steps, items)


def run_config(graph: SdnGraph) -> Loihi2SimCfg:
    """Lava's stock fixed-point models, chosen per process instance (no model discovery)."""
    return Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map={
        p: MODELS[type(p)] for p in graph.processes})


def _reset(graph: SdnGraph) -> None:
    for proc in [*graph.nodes.values(), *graph.synapses.values()]:
        for var in STATE_VARS[type(proc)]:
            v = getattr(proc, var)
            v.set(np.zeros(v.shape, dtype=np.int32))


def run(net: Network, payload: np.ndarray, *, progress: bool = False
        ) -> tuple[dict[str, np.ndarray], np.ndarray, float, float]:
    """Run the items of ``payload`` through the stock graph: per population the messages per
    neuron and item ``(K, *shape)``, the readout's sigma at each item's last step ``(K,
    n_out)``, seconds per step and start-up seconds."""
    import torch

    graph = build(net, payload)
    counts: dict[str, list[np.ndarray]] = {}
    readout = []
    running = 0.0
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # torch inside Lava's forked processes hangs otherwise
    try:
        t0 = time.perf_counter()
        top = graph.nodes[net.input_name]
        with lifecycle.running(top, run_config(graph)) as advance:
            startup = time.perf_counter() - t0
            for k in range(graph.items):
                start = time.perf_counter()
                advance(graph.steps)
                running += time.perf_counter() - start
                for name, sink in graph.sinks.items():
                    node = net.nodes[name]
                    rec = np.moveaxis(sink.data.get(), -1, 0)  # (T, *lava shape)
                    rec = to_lava(rec, node.shape)
                    if isinstance(node, Readout):
                        readout.append(rec[-1].astype(np.int64))
                    else:
                        counts.setdefault(name, []).append((rec != 0).sum(axis=0))
                if k + 1 < graph.items:
                    _reset(graph)
                if progress:
                    print(f"lava item {k + 1}/{graph.items}", flush=True)
    finally:
        torch.set_num_threads(previous)
    return ({n: np.stack(c) for n, c in counts.items()}, np.stack(readout),
            running / (graph.items * graph.steps), startup)
