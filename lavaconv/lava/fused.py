"""Every process of a process graph stepped in one OS process.

Lava runs each process in its own OS process and synchronises all of them at every timestep;
for a VGG-size network on two cores that costs more than the arithmetic. The fused model
computes, per timestep, exactly what the separate ``fixed_pt`` models compute (see
:mod:`lavaconv.lava.dynamics`), in Lava's order: every synapse first sends the buffer it filled
in the previous step, then nodes update in topological order (a max-pool gate or a delay line
reads its source's output of the same step), then every synapse fills its buffer from what its
source sent.
The wiring is read from the processes' own port connections (virtual ports: reshapes only).

Two graphs run this way: lavaconv's own (:func:`lavaconv.lava.graph.build`: our node
processes, stock Dense/Conv; each item ends with a reset step inside the processes) and the
stock graph (:func:`lavaconv.lava.stock.build_stock`: stock LIF, Sparse, Dense, Conv and a
RingBuffer, as Lava's bit-accurate models compute them; the stock processes have no reset of
their own, so at the start of every item after the first all state goes back to its initial
value, as ``run_stock`` does with ``Var.set`` between items).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from lava.magma.core.process.process import AbstractProcess
from lava.proc.conv.process import Conv as LavaConv
from lava.proc.dense.process import Dense as LavaDense
from lava.proc.io.source import RingBuffer
from lava.proc.lif.process import LIF
from lava.proc.sparse.process import Sparse

from lavaconv.lava import dynamics
from lavaconv.lava.dynamics import ConvKernel, DenseKernel, Kernel, initial
from lavaconv.lava.procs.process import COUNTED, Delay, IFNeuron, MaxPoolGate, Readout, SpikeSource

SYNAPSES = (LavaDense, LavaConv, Sparse)


def source_of(port) -> AbstractProcess:
    """The process whose OutPort feeds ``port`` (exactly one)."""
    (src,) = port.get_src_ports()
    return src.process


def kernel(proc: AbstractProcess) -> Kernel:
    """The synapse's step function; raises :class:`~lavaconv.errors.LavaconvError` where the
    stock model's sums could overflow (so the fused model would differ from it)."""
    return ConvKernel(proc) if isinstance(proc, LavaConv) else DenseKernel(proc)


@dataclass
class Edge:
    """One synapse: what it sends next step (int64, in its target's a_in shape) and its kernel."""

    source: AbstractProcess
    kernel: Kernel
    buffer: np.ndarray


@dataclass
class Node:
    """One node process, its parameters (Var initial values) and its state."""

    proc: AbstractProcess
    params: dict = field(default_factory=dict)
    state: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: list[Edge] = field(default_factory=list)


def _node(proc: AbstractProcess) -> Node:
    if isinstance(proc, RingBuffer):
        return Node(proc, {"data": initial(proc, "data").astype(np.int32)})
    if isinstance(proc, LIF):
        state = {"u": initial(proc, "u").astype(np.int32), "v": initial(proc, "v").astype(np.int32)}
        return Node(proc, {"lif": dynamics.LifBitAcc(proc)}, state)
    if isinstance(proc, SpikeSource):
        return Node(proc, {"payload": np.asarray(proc.payload.init)})
    if isinstance(proc, MaxPoolGate):
        params = {"gate": dynamics.Gate(proc.proc_params), "source": source_of(proc.s_in)}
        return Node(proc, params, {"c": np.zeros(proc.c.shape, np.int64)})
    if isinstance(proc, Delay):
        return Node(proc, {"line": dynamics.DelayLine(proc.proc_params["delay"]),
                           "source": source_of(proc.s_in)})
    params = {"bias": initial(proc, "bias"), "v_init": initial(proc, "v_init"),
              "a_exp": int(np.ravel(proc.a_exp.init)[0]),
              "t_start": proc.proc_params["t_start"], "state_bits": proc.proc_params["state_bits"]}
    params["vth"] = initial(proc, "vth")
    state = {"v": initial(proc, "v").astype(np.int64)}
    if isinstance(proc, IFNeuron):
        reset = proc.proc_params["reset"]
        payload = initial(proc, "payload").astype(np.int64)
        params.update(reset=reset, payload=None if np.all(payload == 1) else payload,
                      burst=proc.proc_params["burst"])
        state["m"] = np.zeros(proc.m.shape, np.int64) if reset == "snm" else None
    else:
        params["mode"] = proc.proc_params["mode"]
        state["count"] = np.zeros(proc.count.shape, np.int32)  # the readout's own
    return Node(proc, params, state)


class FusedNetwork:
    """State of all processes; :meth:`step` advances one Lava timestep.

    ``procs``: the graph's node processes in topological order, then its synapses. ``count``
    holds the spike counts of the ``counted`` processes (default: the ``COUNTED`` ones) in the
    current item (int32, flat, concatenated, Lava layout) and ``score`` what the ``readout``
    (default: the :class:`Readout`) reads: its spike count in its ``count`` mode, else its
    potential; these are the fused process model's Vars. All other state is private.
    ``restart``: the item length of processes without a reset step of their own (the stock
    graph); every item after the first then starts from the initial state.
    """

    def __init__(self, procs: list[AbstractProcess], counted: list | None = None,
                 readout: AbstractProcess | None = None, restart: int | None = None) -> None:
        self.nodes = {p: _node(p) for p in procs if not isinstance(p, SYNAPSES)}
        self.restart = restart
        self.steps = restart or int(next(iter(self.nodes)).proc_params["steps"])
        if counted is None:
            counted = [p for p in procs if isinstance(p, COUNTED)]
        self.count = np.zeros(sum(int(np.prod(p.s_out.shape)) for p in counted), np.int32)
        offset = 0
        for proc in counted:
            size = int(np.prod(proc.s_out.shape))
            state = self.nodes[proc].state
            state["count"] = self.count[offset:offset + size].reshape(proc.s_out.shape)
            offset += size
        if readout is None:
            (readout,) = [p for p in procs if isinstance(p, Readout)]
        out = self.nodes[readout]
        self.score = out.state["count" if out.params.get("mode") == "count" else "v"]
        self.edges = []
        for proc in procs:
            if isinstance(proc, SYNAPSES):
                (dst,) = proc.a_out.get_dst_ports()
                edge = Edge(source_of(proc.s_in), kernel(proc), np.zeros(dst.shape, np.int64))
                self.nodes[dst.process].inputs.append(edge)
                self.edges.append(edge)
        self.initial = [(x, x.copy()) for n in self.nodes.values() for x in n.state.values()
                        if x is not None] if restart else []

    def _update(self, node: Node, time_step: int, item: int, t: int,
                sent: dict[AbstractProcess, np.ndarray]) -> np.ndarray:
        params, state = node.params, node.state
        live = t < self.steps
        if isinstance(node.proc, RingBuffer):
            return dynamics.ring_buffer_at(params["data"], time_step)
        if isinstance(node.proc, LIF):
            a = (sum(e.buffer for e in node.inputs) if node.inputs
                 else np.zeros(node.proc.a_in.shape, np.int32))
            s = params["lif"](state["u"], state["v"], a)
            if "count" in state:
                state["count"] += s
            return s
        if isinstance(node.proc, SpikeSource):
            return dynamics.payload_at(params["payload"], item, t)
        if isinstance(node.proc, MaxPoolGate):
            return params["gate"](state["c"], state["count"], sent[params["source"]], live)
        if isinstance(node.proc, Delay):
            return params["line"](sent[params["source"]], t, live)
        u = dynamics.fixed_gain(sum(e.buffer for e in node.inputs), params["a_exp"])
        dynamics.integrate(state["v"], u, params["bias"], t >= params["t_start"], live,
                           params["state_bits"], params["v_init"])
        if isinstance(node.proc, IFNeuron):
            s = dynamics.fire(state["v"], params["vth"], state["count"], live,
                              params["reset"], state["m"], params["burst"])
            return s if params["payload"] is None else s * params["payload"]
        if params["mode"] == "count":
            dynamics.fire(state["v"], params["vth"], state["count"], live, "subtract")
        return state["v"]

    def step(self, time_step: int) -> dict[AbstractProcess, np.ndarray]:
        """Lava timestep ``time_step`` (from 1) of every process; returns what every node
        sent (its ``s_out``)."""
        if self.restart:
            item, t = divmod(time_step - 1, self.steps)
            if t == 0 and item > 0:  # what Var.set does between items with the stock models
                for x, value in self.initial:
                    x[...] = value
                for e in self.edges:
                    e.buffer = np.zeros_like(e.buffer)  # (may be a kernel's cached output)
        else:
            item, t = dynamics.local_step(time_step, self.steps)
        sent: dict[AbstractProcess, np.ndarray] = {}
        for proc, node in self.nodes.items():
            sent[proc] = self._update(node, time_step, item, t, sent)
        for e in self.edges:
            e.buffer = e.kernel(sent[e.source]).reshape(e.buffer.shape)
        return sent
