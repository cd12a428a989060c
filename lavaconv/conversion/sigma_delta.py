"""Float IF network -> sigma-delta network (docs/sigma-delta.md).

Every IF population becomes a :class:`~lavaconv.ir.network.SigmaDelta` unit with the same
normalised weights and bias and the delta threshold ``theta`` (in units of the layer's scale
lambda), the input a Lava ``Delta`` encoder, the readout a ``Sigma``. A 2x2 max-pool becomes two
sigma-delta layers from grouped convolutions, exact for non-negative inputs::

    max(a, b) = b + relu(a - b)
    layer 1 (C -> 4C, 2x2 stride 2, one group per channel): relu(a - b), b, relu(c - d), d
    layer 2 (4C -> 2C, 1x1, one group per channel): relu(max(a,b) - max(c,d)),  max(c, d)

and every synapse that read the pooled map reads both channels of layer 2 with the pool's
weight, so it receives their sum, max(a, b, c, d). Each population's bias arrives as a pulse
with its first input (``t_start``): no layer sends before its input has arrived.
"""

from __future__ import annotations

import numpy as np

from lavaconv.errors import LavaconvError
from lavaconv.ir.network import (
    IF,
    Conv,
    Dense,
    Input,
    MaxPool,
    Network,
    Readout,
    Sigma,
    SigmaDelta,
    Synapse,
)

#: layer 1 of the exact max-pool: kernels over the window (a b / c d) per channel
POOL_DIFF = np.array([[[1, -1], [0, 0]], [[0, 1], [0, 0]], [[0, 0], [1, -1]], [[0, 0], [0, 1]]],
                     dtype=np.float64)
#: layer 2: per channel, from (a-b)+, b, (c-d)+, d
POOL_MAX = np.array([[1, 1, -1, -1], [0, 0, 1, 1]], dtype=np.float64)


def arrivals(net: Network) -> tuple[dict[str, int], dict[str, int]]:
    """First and last step at which each node's input can arrive (shortest and longest path in
    synapses from the input)."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for name in net.nodes:
        ins = net.inputs_of(name)
        first[name] = min((first[s.source] + 1 + s.delay for s in ins), default=0)
        last[name] = max((last[s.source] + 1 + s.delay for s in ins), default=0)
    return first, last


def _pool_layers(name: str, node: MaxPool, src_shape: tuple[int, ...]
                 ) -> tuple[dict[str, SigmaDelta], list[Conv]]:
    channels, height, width = src_shape
    if (tuple(node.kernel), tuple(node.stride), tuple(node.padding)) != ((2, 2), (2, 2), (0, 0)):
        raise LavaconvError(f"max-pool {name}: --neuron sigma-delta builds 2x2 max-pools with "
                            f"stride 2 and no padding exactly, not kernel {tuple(node.kernel)}, "
                            f"stride {tuple(node.stride)}, padding {tuple(node.padding)}")
    w1 = np.tile(POOL_DIFF[:, None], (channels, 1, 1, 1))
    w2 = np.tile(POOL_MAX[:, :, None, None], (channels, 1, 1, 1))
    h, w = height // 2, width // 2
    diff, top = f"{name}.diff", f"{name}.max"
    nodes = {diff: SigmaDelta((4 * channels, h, w), np.zeros(()), 1.0, 0, node.scale),
             top: SigmaDelta((2 * channels, h, w), np.zeros(()), 1.0, 0, node.scale)}
    return nodes, [Conv(node.source, diff, w1, (2, 2), (0, 0), channels),
                   Conv(diff, top, w2, (1, 1), (0, 0), channels)]


def _read_pair(syn: Synapse, pooled: tuple[int, ...], source: str) -> Synapse:
    """``syn`` read a pooled map (C, h, w); the same synapse reading layer 2's (2C, h, w)."""
    if isinstance(syn, Conv):
        return Conv(source, syn.target, np.repeat(syn.weight, 2, axis=1), syn.stride,
                    syn.padding, syn.groups, syn.delay)
    channels = pooled[0]
    w = syn.weight.reshape(len(syn.weight), channels, -1)
    return Dense(source, syn.target, np.repeat(w, 2, axis=1).reshape(len(syn.weight), -1),
                 syn.delay)


def sigma_delta_network(net: Network, theta: float) -> Network:
    """The sigma-delta network of float IF network ``net`` with delta threshold ``theta``."""
    if net.numeric != "float":
        raise LavaconvError("sigma-delta conversion starts from the float network")
    nodes: dict = {}
    synapses: list[Synapse] = []
    pooled: dict[str, str] = {}  # max-pool node -> layer 2 of its construction
    for name, node in net.nodes.items():
        if isinstance(node, MaxPool):
            extra, syns = _pool_layers(name, node, net.nodes[node.source].shape)
            syns[0].source = pooled.get(node.source, node.source)
            for n in extra.values():
                n.v_threshold = theta
            nodes.update(extra)
            synapses += syns
            pooled[name] = f"{name}.max"
            continue
        for syn in net.inputs_of(name):
            if syn.source in pooled:
                syn = _read_pair(syn, net.nodes[syn.source].shape, pooled[syn.source])
            else:
                syn = type(syn)(**{k: getattr(syn, k) for k in syn.__dataclass_fields__})
            synapses.append(syn)
        if isinstance(node, Input):
            nodes[name] = Input(node.shape, "delta", node.scale, x_max=node.x_max)
        elif isinstance(node, IF):
            nodes[name] = SigmaDelta(node.shape, node.bias, theta, 0, node.scale)
        elif isinstance(node, Readout):
            nodes[name] = Sigma(node.shape, node.bias, 0, node.scale)
        else:
            raise LavaconvError(f"{name}: {type(node).__name__} has no sigma-delta form")
    out = Network(nodes, synapses, "float", {**net.meta, "neuron": "sigma-delta",
                                             "sd_threshold": theta})
    first, last = arrivals(out)
    for name, node in out.nodes.items():
        if not isinstance(node, Input):
            node.t_start = first[name]
    out.meta["depth"] = last[out.output_name]
    return out
