"""Aligned residual joins (``--align``), a pass over a network, in place: every input of a
population arrives at the same step, the latest one's, and its bias flows from then on.

With r(n) the first step at which node n sends (0 for the input, t_start for a population, a
max-pool's source's for a max-pool) and one step per synapse:

    t_start(p) = 1 + max_e r(src_e)          (instead of 1 + min_e r(src_e))
    d_e        = t_start(p) - 1 - r(src_e)   (the synapse's extra delay)

Taken in topological order, so a population's later start carries on to its targets.
"""

from __future__ import annotations

from lavaconv.ir.network import Input, MaxPool, Network


def align(net: Network) -> Network:
    ready: dict[str, int] = {}
    for name, node in net.nodes.items():
        if isinstance(node, Input):
            ready[name] = 0
        elif isinstance(node, MaxPool):
            ready[name] = ready[node.source]
        else:
            syns = net.inputs_of(name)
            node.t_start = 1 + max(ready[s.source] for s in syns)
            for syn in syns:
                syn.delay = node.t_start - 1 - ready[syn.source]
            ready[name] = node.t_start
    return net
