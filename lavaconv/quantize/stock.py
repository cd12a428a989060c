"""Sizing the stock LIF graph's thresholds from the float SNN (:mod:`lavaconv.ir.stock`)."""

from __future__ import annotations

import numpy as np
import torch

from lavaconv.ir.network import IF, Network
from lavaconv.sim.engine import encode_input, simulate


def peaks(net: Network, x: np.ndarray, timesteps: int, batch: int = 16) -> dict[str, float]:
    """Largest potential (in thresholds) of every IF population of the float ``net`` on the
    items ``x`` over ``timesteps`` steps: the stock LIF's u wraps instead of saturating (from
    below the floor neuron holds it), so the quantizer keeps ``peak * vth`` inside the state."""
    top = {n: 0.0 for n, node in net.nodes.items() if isinstance(node, IF)}

    def probe(name: str, current: torch.Tensor, train: torch.Tensor) -> None:
        v0 = torch.as_tensor(np.asarray(net.nodes[name].v_init, dtype=np.float32))
        v = torch.cumsum(current, 0).sub_(torch.cumsum(train, 0)).add_(v0)
        top[name] = max(top[name], float(v.max()))

    for i in range(0, len(x), batch):
        simulate(net, encode_input(net, x[i:i + batch], timesteps), probe=probe)
    return top
