"""Max-pool from ReLU populations (``--maxpool relu``, and every sigma-delta network), a pass
over a float network: each 2x2 max-pool with stride 2 becomes two populations of grouped
convolutions, built from::

    max(a, b) = b + relu(a - b)
    layer 1 (C -> 4C, 2x2 stride 2, one group per channel): relu(a - b), b, relu(c - d), d
    layer 2 (4C -> 2C, 1x1, one group per channel): relu(max(a,b) - max(c,d)),  max(c, d)

and every synapse that read the pooled map reads both channels of layer 2 with the pool's
weight, so it receives their sum, max(a, b, c, d). Exact for activations (a sigma-delta unit
sends its ReLU); for spike trains an IF unit with reset by subtraction passes its input's rate,
so its count approximates relu of the running difference (it lags where the sign of ``a - b``
changes, and a window's output keeps at most one spike per step): a rate approximation that
needs no process of lavaconv's own (the stock LIF graph builds it). Each pool adds two synaptic
steps to every path through it; ``t_start`` is recomputed from the arrivals.
"""

from __future__ import annotations

import copy

import numpy as np

from lavaconv.errors import LavaconvError
from lavaconv.ir.network import IF, Conv, Dense, MaxPool, Network, Readout, Synapse

#: layer 1 kernels over the window (a b / c d), per channel
POOL_DIFF = np.array([[[1, -1], [0, 0]], [[0, 1], [0, 0]], [[0, 0], [1, -1]], [[0, 0], [0, 1]]],
                     dtype=np.float64)
#: layer 2, per channel, from (a-b)+, b, (c-d)+, d
POOL_MAX = np.array([[1, 1, -1, -1], [0, 0, 1, 1]], dtype=np.float64)


def _per_channel(scale: np.ndarray, k: int) -> np.ndarray:
    """A (C, 1, 1) per-channel array for k channels per source channel (a scalar stays)."""
    return np.repeat(scale, k, axis=0) if scale.ndim else scale


def _pool_layers(name: str, node: MaxPool, src_shape: tuple[int, ...], v_init: float
                 ) -> tuple[dict[str, IF], list[Conv]]:
    channels, height, width = src_shape
    if (tuple(node.kernel), tuple(node.stride), tuple(node.padding)) != ((2, 2), (2, 2), (0, 0)):
        raise LavaconvError(f"max-pool {name}: ReLU units build 2x2 max-pools with stride 2 "
                            f"and no padding, not kernel {tuple(node.kernel)}, stride "
                            f"{tuple(node.stride)}, padding {tuple(node.padding)}; use "
                            "--maxpool gate (lavaconv's process, --target sim)")
    w1 = np.tile(POOL_DIFF[:, None], (channels, 1, 1, 1))
    w2 = np.tile(POOL_MAX[:, :, None, None], (channels, 1, 1, 1))
    h, w = height // 2, width // 2
    diff, top = f"{name}.diff", f"{name}.max"
    nodes = {unit: IF((k * channels, h, w), np.zeros(()), scale=_per_channel(node.scale, k),
                      v_init=np.asarray(v_init))
             for unit, k in ((diff, 4), (top, 2))}
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


def relu_pools(net: Network, v_init: float = 0.0) -> Network:
    """``net`` (float) with every max-pool built from two IF populations (reset by
    subtraction, threshold 1 in the pool's scale, initial potential ``v_init``); the same
    network where it has no max-pool."""
    if not any(isinstance(node, MaxPool) for node in net.nodes.values()):
        return net
    if net.numeric != "float":
        raise LavaconvError("max-pools are rebuilt from ReLU units on the float network")
    net = copy.deepcopy(net)
    nodes: dict = {}
    synapses: list[Synapse] = []
    pooled: dict[str, str] = {}  # max-pool node -> layer 2 of its construction
    for name, node in net.nodes.items():
        if isinstance(node, MaxPool):
            extra, syns = _pool_layers(name, node, net.nodes[node.source].shape, v_init)
            syns[0].source = pooled.get(node.source, node.source)
            nodes.update(extra)
            synapses += syns
            pooled[name] = f"{name}.max"
            continue
        for syn in net.inputs_of(name):
            if syn.source in pooled:
                syn = _read_pair(syn, net.nodes[syn.source].shape, pooled[syn.source])
            synapses.append(syn)
        nodes[name] = node
    out = Network(nodes, synapses, "float", dict(net.meta))
    first, _ = out.arrivals()
    for name, node in out.nodes.items():
        if isinstance(node, (IF, Readout)):
            node.t_start = first[name]
    return out
