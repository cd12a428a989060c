"""A :class:`~lavaconv.ir.network.Network` as a graph of Lava processes (docs/design.md section 4).

One process per node (:class:`SpikeSource`, :class:`IFNeuron`, :class:`Readout`,
:class:`MaxPoolGate`) and one stock Lava ``Dense``/``Conv`` per synapse, so Intel's Loihi 2
extension can map the synapses; all of them are the sub-processes of one
:class:`SpikingNetwork`, whose model Lava selects per backend. The Network keeps torch's
``(C, H, W)`` maps; Lava's Conv works on ``(W, H, C)``: :func:`to_lava` is the one place that
converts (its own inverse).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from lava.magma.core.process.process import AbstractProcess
from lava.proc.conv.process import Conv as LavaConv
from lava.proc.dense.process import Dense as LavaDense
from lava.utils.weightutils import SignMode

from lavaconv.errors import LavaconvError
from lavaconv.ir.fixedpoint import GRADED_FLOAT_BITS
from lavaconv.ir.network import IF, Conv, Dense, Input, MaxPool, Network, Node, Shape
from lavaconv.lava.procs.process import (
    Delay,
    IFNeuron,
    MaxPoolGate,
    Readout,
    SpikeSource,
    SpikingNetwork,
)


def lava_shape(shape: Shape) -> Shape:
    """Torch ``(C, H, W)`` → Lava ``(W, H, C)``; vectors unchanged."""
    return tuple(reversed(shape)) if len(shape) == 3 else tuple(shape)


def to_lava(a: np.ndarray, shape: Shape) -> np.ndarray:
    """Reverse the last three axes of ``a`` when the node shape is a map (CHW ↔ WHC)."""
    if len(shape) != 3:
        return a
    n = a.ndim
    return a.transpose(*range(n - 3), n - 1, n - 2, n - 3)


def _flat_order(shape: Shape) -> np.ndarray:
    """For each flat position of the Lava layout, the flat index in torch's layout."""
    return to_lava(np.arange(int(np.prod(shape))).reshape(shape), shape).ravel()


@dataclass
class LavaGraph:
    """Processes of one network: node name → process, one process per synapse, and all of
    them as the sub-processes of one hierarchical process ``top`` (what Lava runs)."""

    net: Network
    nodes: dict[str, AbstractProcess]
    delays: dict[str, AbstractProcess]  # "i:source->target" → Delay, for synapses with a delay
    synapses: dict[str, AbstractProcess]  # "i:source->target" → Dense/Conv
    steps: int
    items: int
    top: SpikingNetwork

    @property
    def processes(self) -> list[AbstractProcess]:
        """The sub-processes: nodes in topological order, delay lines, then synapses."""
        return [*self.nodes.values(), *self.delays.values(), *self.synapses.values()]


def _message_bits(net: Network, name: str) -> int:
    """Graded payload width a synapse reads from node ``name``: 0 for binary spikes, else
    enough signed bits for the largest |payload| (graded analog input, signed Poisson spikes,
    graded, burst or signed IF spikes, passed on by a max-pool gate)."""
    if net.is_binary(name):
        return 0
    src = net.nodes[net.sender(name)]
    if isinstance(src, Input) and src.encoding == "poisson":
        return 2  # signed ±1 spikes: a bool cast would turn -1 into +1
    if net.numeric != "int":
        return GRADED_FLOAT_BITS
    if isinstance(src, Input):
        return src.payload_bits
    return int(net.max_payload(name)).bit_length() + 1


def _node_process(name: str, node: Node, payload: np.ndarray, net: Network) -> AbstractProcess:
    steps = payload.shape[0]
    shape = lava_shape(node.shape)
    if isinstance(node, Input):
        data = to_lava(np.moveaxis(payload, 0, 1), node.shape)  # (K, T, *lava shape)
        return SpikeSource(payload=np.ascontiguousarray(data), name=name)
    if isinstance(node, MaxPool):
        return MaxPoolGate(in_shape=lava_shape(net.nodes[node.source].shape),
                           out_shape=shape, kernel=tuple(node.kernel)[::-1],
                           stride=tuple(node.stride)[::-1], padding=tuple(node.padding)[::-1],
                           steps=steps, mode=node.mode, name=name)

    def full(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(to_lava(np.broadcast_to(x, node.shape), node.shape))

    common = dict(shape=shape, bias=full(node.bias), a_exp=node.a_exp, t_start=node.t_start,
                  steps=steps, state_bits=node.state_bits, name=name)
    if isinstance(node, IF):
        return IFNeuron(vth=full(node.v_threshold), v_init=full(node.v_init), reset=node.reset,
                        payload=full(node.payload), burst=node.burst, **common)
    return Readout(vth=full(node.v_threshold), mode=node.mode, **common)


def _check_int_weights(key: str, syn: Dense | Conv) -> None:
    w = syn.weight
    if not np.array_equal(w, np.round(w)):
        raise LavaconvError(f"synapse {key}: integer network with non-integer weights; "
                            "quantize the network first")
    if isinstance(syn, Dense) and (np.any(w % 2) or w.min() < -256 or w.max() > 254):
        raise LavaconvError(f"synapse {key}: Dense weights must be even and in [-256, 254] "
                            f"(Lava's 8-bit mixed-sign grid), got [{w.min()}, {w.max()}]")


def _synapse_process(key: str, syn: Dense | Conv, net: Network) -> AbstractProcess:
    weight = np.asarray(syn.weight)
    if net.numeric == "int":
        _check_int_weights(key, syn)
        weight = weight.astype(np.int32)
    return lava_synapse(key, syn, net, weight)


def lava_synapse(key: str, syn: Dense | Conv, net: Network, weight: np.ndarray,
                 weight_exp: int = 0) -> AbstractProcess:
    """The stock Lava ``Dense``/``Conv`` of ``syn`` carrying ``weight`` (torch's layout; a
    Dense gets ``weight_exp``, a Conv none: Lava's CPU Conv ignores it, so a caller shifts its
    weights)."""
    src, dst = net.nodes[syn.source], net.nodes[syn.target]
    bits = _message_bits(net, syn.source)
    if isinstance(syn, Dense):
        # columns in torch's flat CHW order → Lava's flat WHC order (rows likewise)
        w = weight[_flat_order(dst.shape)][:, _flat_order(src.shape)]
        return LavaDense(weights=w, num_message_bits=bits, sign_mode=SignMode.MIXED,
                         num_weight_bits=8, weight_exp=weight_exp, name=key)
    # torch correlates (O, I/g, kH, kW); Lava convolves (O, kW, kH, I/g): flip and transpose
    w = np.ascontiguousarray(weight.transpose(0, 3, 2, 1)[:, ::-1, ::-1, :])
    proc = LavaConv(weight=w, input_shape=lava_shape(src.shape), padding=tuple(syn.padding)[::-1],
                    stride=tuple(syn.stride)[::-1], groups=syn.groups, num_message_bits=bits,
                    name=key)
    if tuple(proc.output_shape) != lava_shape(dst.shape):
        raise LavaconvError(f"synapse {key}: conv output {tuple(dst.shape)} expected, "
                            f"Lava computes {tuple(proc.output_shape)[::-1]} (C, H, W)")
    return proc


def _connect(out, target) -> None:
    """Port to port; a map feeding a Dense is flattened (in Lava's order), and back."""
    (out.reshape(target.shape) if out.shape != target.shape else out).connect(target)


def build(net: Network, payload: np.ndarray) -> LavaGraph:
    """Processes and connections for ``net`` playing back ``payload`` ``(T, K, *input_shape)``
    (the layout of :func:`lavaconv.sim.engine.encode_input`)."""
    payload = np.asarray(payload)
    steps, items = payload.shape[:2]
    if steps < 1 or items < 1:
        raise LavaconvError(f"payload of shape {payload.shape}: need at least one step and item")
    inp = net.nodes[net.input_name]
    if tuple(payload.shape[2:]) != tuple(inp.shape):
        raise LavaconvError(f"payload shape {payload.shape[2:]} does not match the input node "
                            f"{net.input_name!r} of shape {tuple(inp.shape)}")
    if net.numeric == "int":
        payload = payload.astype(np.int32)
    nodes: dict[str, AbstractProcess] = {}
    for name, node in net.nodes.items():
        nodes[name] = _node_process(name, node, payload, net)
        if isinstance(node, MaxPool):
            nodes[node.source].s_out.connect(nodes[name].s_in)
    delays: dict[str, AbstractProcess] = {}
    synapses: dict[str, AbstractProcess] = {}
    for i, syn in enumerate(net.synapses):
        key = f"{i}:{syn.source}->{syn.target}"
        proc = _synapse_process(key, syn, net)
        sender = nodes[syn.source]
        if syn.delay:
            sender = delays[key] = Delay(shape=lava_shape(net.nodes[syn.source].shape),
                                         delay=syn.delay, steps=steps, name=f"{key}.delay")
            nodes[syn.source].s_out.connect(sender.s_in)
        _connect(sender.s_out, proc.s_in)
        _connect(proc.a_out, nodes[syn.target].a_in)
        synapses[key] = proc
    procs = [*nodes.values(), *delays.values(), *synapses.values()]
    return LavaGraph(net, nodes, delays, synapses, steps, items,
                     SpikingNetwork(procs=procs, name="net"))
