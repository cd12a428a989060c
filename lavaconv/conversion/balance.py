"""RMP-SNN threshold balancing (Han et al. 2020, sec. 4.1, after Sengupta et al. 2019), a pass
over a float network, in place: layer by layer, the threshold becomes alpha times the largest
input a neuron of the layer receives in one step, measured in the SNN with the earlier layers
fixed (V_th = alpha * V_in^max)."""

from __future__ import annotations

import numpy as np
import torch

from lavaconv.ir.network import MaxPool, Network
from lavaconv.sim.engine import encode_input, simulate
from lavaconv.sim.evaluation import chunks


def rescale(net: Network, name: str, factor: float) -> None:
    """Make population ``name``'s threshold and spike value ``factor`` times larger, in the
    units of its inputs: incoming weights and bias / factor, outgoing weights * factor (through
    max-pool gates too), its scale lambda * factor. In the rate limit (no clipping) the network
    computes the same function; the time resolution of the population changes."""
    node = net.nodes[name]
    node.scale = node.scale * factor
    node.bias = node.bias / factor
    senders = {name} | {n for n, v in net.nodes.items()
                        if isinstance(v, MaxPool) and v.source == name}
    for n in senders - {name}:
        net.nodes[n].scale = net.nodes[n].scale * factor
    for syn in net.synapses:
        if syn.target == name:
            syn.weight = syn.weight / factor
        if syn.source in senders:
            syn.weight = syn.weight * factor


def balance_thresholds(net: Network, x: np.ndarray, alpha: float, steps: int, *,
                       batch_size: int = 64, seed: int = 0) -> dict[str, float]:
    """RMP sec. 4.1: for each IF population in order, run the SNN up to it on ``x`` for
    ``steps`` steps, take V_in^max, the largest one-step input (synaptic input plus bias) over
    neurons, steps and items, and rescale the population so that its largest threshold is
    alpha * V_in^max. Returns the factor applied to each population."""
    factors = {}
    for name in net.populations():
        peak = 0.0
        for start, xb in chunks(x, batch_size):
            def probe(n: str, current: torch.Tensor, _train: torch.Tensor, name=name) -> None:
                nonlocal peak
                if n == name:
                    peak = max(peak, float(current.max()))
            simulate(net, encode_input(net, xb, steps, seed=seed + start), [steps],
                     probe=probe, stop_after=name)
        node = net.nodes[name]
        if peak > 0:
            factor = alpha * peak / float(np.max(node.v_threshold))  # RMP: V_th = a*V_in
            clip = net.meta.get("clips", {}).get(name)
            if clip is not None:  # a clipped ReLU's scale never exceeds its clip
                factor = min(factor, clip / float(np.max(node.scale * node.v_threshold)
                                              * node.burst))
            factors[name] = factor
            rescale(net, name, factors[name])
    return factors
