"""Per-channel bias or potential correction (Li et al., "A free lunch from ANN: towards
efficient, accurate spiking neural networks calibration", ICML 2021), a pass over a float
network, in place: layer by layer, the mean gap between the ANN activation (clipped to what
the population can reach) and the SNN's rate goes into the bias, or times the integration
window into the initial membrane potential:

    gap_c = mean_{items, positions in c} (min(a / lambda, payload * burst) - rate)
    bias_c += gap_c                              (kind 'bias')
    v_init_c += gap_c * (T - t_start)            (kind 'potential')
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.fx

from lavaconv.ann.probe import activations, population_nodes
from lavaconv.conversion.diagnostics import normalised_activation
from lavaconv.ir.network import IF, Network
from lavaconv.sim.engine import encode_input, simulate
from lavaconv.sim.evaluation import chunks


def correct(net: Network, gm: torch.fx.GraphModule, x: np.ndarray, steps: int,
            kind: str = "bias", *, batch_size: int = 64, seed: int = 0,
            measure_on: Callable[[Network], Network] | None = None) -> dict[str, float]:
    """Li et al. 2021 light calibration, layer by layer in order: the per-channel mean over
    items and positions of (normalised ANN activation clipped to the reachable rate - SNN
    rate), the rate counted over the steps the population integrates (t_start .. T-1), is
    added to the bias (``kind='bias'``, a rate error that persists at every T) or, times those
    steps, to the initial potential (``kind='potential'``, a deficit of spikes that fades as
    1/T). ``measure_on`` maps ``net`` to the network whose spikes are counted (e.g. its
    quantized copy, so that the correction also absorbs the weight rounding; called again for
    every population, after the shifts of the earlier ones). Returns the mean |gap| per
    population (in rate units)."""
    if kind not in ("bias", "potential"):
        raise ValueError(f"correction must be 'bias' or 'potential', not {kind!r}")
    pops = [n for n in net.populations() if n in population_nodes(gm)]  # not pool units
    target = dict.fromkeys(pops, 0.0)
    for acts in activations(gm, x, batch_size):
        for name in pops:
            target[name] = target[name] + _channel_sum(reachable(net.nodes[name], acts[name]))
    gaps = {}
    for name in pops:
        node = net.nodes[name]
        window = max(steps - node.t_start, 1)
        run = net if measure_on is None else measure_on(net)
        # payload units of the network run → float payload (1 when ``run`` is ``net``)
        value = torch.as_tensor(node.payload / run.nodes[name].payload, dtype=torch.float64)
        got = 0.0
        for start, xb in chunks(x, batch_size):
            sent: dict[str, torch.Tensor] = {}
            simulate(run, encode_input(run, xb, steps, seed=seed + start), [steps],
                     probe=lambda n, _u, train, sent=sent: sent.__setitem__(n, train.sum(0)),
                     stop_after=name)
            got = got + _channel_sum(sent[name].to(torch.float64) * value / window)
        gap = (target[name] - got) / (len(x) * _per_channel(node))
        shift = node.per_channel(gap.numpy())
        if kind == "bias":
            node.bias = node.bias + shift
        else:
            node.v_init = node.v_init + shift * window
        gaps[name] = float(gap.abs().mean())
    return gaps


def reachable(node: IF, act: torch.Tensor) -> torch.Tensor:
    """The normalised ANN activation clipped to the largest rate the population can send
    (``burst`` spikes, each worth its payload, per step): the part of the ANN a rate can
    match."""
    top = torch.as_tensor(np.broadcast_to(node.payload, node.shape) * node.burst,
                          dtype=torch.float64)
    return torch.minimum(normalised_activation(node, act), top)


def _channel_sum(a: torch.Tensor) -> torch.Tensor:
    """Sum over items and positions, per channel: (B, C, ...) → (C,)."""
    return a.transpose(0, 1).reshape(a.shape[1], -1).sum(dim=1)


def _per_channel(node: IF) -> int:
    """Neurons per channel."""
    return int(np.prod(node.shape[1:])) if len(node.shape) > 1 else 1
