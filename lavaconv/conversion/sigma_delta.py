"""Float IF network -> sigma-delta network (docs/sigma-delta.md).

Every IF population becomes a :class:`~lavaconv.ir.network.SigmaDelta` unit with the same
normalised weights and bias and the delta threshold ``theta`` (in units of the layer's scale
lambda), the input a Lava ``Delta`` encoder, the readout a ``Sigma``. A 2x2 max-pool becomes two
layers of ReLU units (:mod:`lavaconv.conversion.pooling`), exact for sigma-delta units. Each
population's bias arrives as a pulse with its first input (``t_start``): no layer sends before
its input has arrived.
"""

from __future__ import annotations

from lavaconv.conversion.pooling import relu_pools
from lavaconv.errors import LavaconvError
from lavaconv.ir.network import IF, Input, Network, Readout, Sigma, SigmaDelta


def sigma_delta_network(net: Network, theta: float) -> Network:
    """The sigma-delta network of float IF network ``net`` with delta threshold ``theta``."""
    if net.numeric != "float":
        raise LavaconvError("sigma-delta conversion starts from the float network")
    net = relu_pools(net)
    nodes: dict = {}
    for name, node in net.nodes.items():
        if isinstance(node, Input):
            nodes[name] = Input(node.shape, "delta", node.scale, x_max=node.x_max)
        elif isinstance(node, IF):
            nodes[name] = SigmaDelta(node.shape, node.bias, theta, 0, node.scale)
        elif isinstance(node, Readout):
            nodes[name] = Sigma(node.shape, node.bias, 0, node.scale)
        else:
            raise LavaconvError(f"{name}: {type(node).__name__} has no sigma-delta form")
    synapses = [type(s)(**{k: getattr(s, k) for k in s.__dataclass_fields__})
                for s in net.synapses]
    out = Network(nodes, synapses, "float", {**net.meta, "neuron": "sigma-delta",
                                             "sd_threshold": theta})
    first, last = out.arrivals()
    for name, node in out.nodes.items():
        if not isinstance(node, Input):
            node.t_start = first[name]
    out.meta["depth"] = last[out.output_name]
    return out
