"""Thresholds and weights set from the spiking network's own behaviour on calibration items.

- :func:`balance_thresholds`: RMP-SNN threshold balancing (Han et al. 2020, sec. 4.1, after
  Sengupta et al. 2019): layer by layer, the threshold becomes alpha times the largest input a
  neuron of the layer receives in one step, measured in the SNN with the earlier layers fixed.
- :func:`search_zeta`: S-ResNet propagation-error compensation (Hu et al., eq. 12-14): every
  weight times zeta, zeta searched around the fitted growth q.
- :func:`correct`: per-channel bias or potential correction (Li et al., "A free lunch from
  ANN: towards efficient, accurate spiking neural networks calibration", ICML 2021): layer by
  layer, the mean gap between ANN activation and SNN rate goes into the bias or into the
  initial membrane potential.

All work on float networks, in place.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx

from lavaconv.ann.probe import activations
from lavaconv.conversion.diagnostics import (
    PropagationError,
    normalised_activation,
    propagation_error,
)
from lavaconv.ir.network import IF, MaxPool, Network
from lavaconv.sim.engine import encode_input, simulate


def _batches(x: np.ndarray, size: int):
    for start in range(0, len(x), size):
        yield start, x[start:start + size]


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


def _populations(net: Network) -> list[str]:
    return [n for n, node in net.nodes.items() if isinstance(node, IF)]


def balance_thresholds(net: Network, x: np.ndarray, alpha: float, steps: int, *,
                       batch_size: int = 64, seed: int = 0) -> dict[str, float]:
    """RMP sec. 4.1: for each IF population in order, run the SNN up to it on ``x`` for
    ``steps`` steps, take V_in^max, the largest one-step input (synaptic input plus bias) over
    neurons, steps and items, and rescale the population so that its largest threshold is
    alpha * V_in^max. Returns the factor applied to each population."""
    factors = {}
    for name in _populations(net):
        peak = 0.0
        for start, xb in _batches(x, batch_size):
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


def compensate(net: Network, zeta: float) -> None:
    """S-ResNet eq. 14: W' = W * zeta for every synapse."""
    for syn in net.synapses:
        syn.weight = syn.weight * zeta


@dataclass
class ZetaSearch:
    zeta: float
    objective: dict[float, float]  # candidate -> sum of |E_i| (eq. 13) on the calibration items
    error: PropagationError  # at zeta = 1: the fit p, q (eq. 12) and tau_max


def search_zeta(net: Network, gm: torch.fx.GraphModule, x: np.ndarray, steps: int,
                candidates: int = 9) -> ZetaSearch:
    """S-ResNet sec. 3.3: fit E = p * q**l (eq. 12), then try ``candidates`` values of zeta
    stepping from 1 to 2q - 1 (centred on q), below tau_max = 1 / (largest spike rate of the
    last IF layer); keep the one with the least sum of |E_i| (eq. 13)."""
    base = propagation_error(net, gm, x, steps)
    tau_max = 1.0 / base.max_rate_last if base.max_rate_last > 0 else np.inf
    grid = [1.0]
    if np.isfinite(base.q) and base.q > 1:
        grid = [z for z in np.linspace(1.0, 2 * base.q - 1, candidates) if z < tau_max] or grid
    objective = {1.0: base.total_abs}
    for zeta in grid[1:]:
        trial = copy.deepcopy(net)
        compensate(trial, zeta)
        objective[float(zeta)] = propagation_error(trial, gm, x, steps).total_abs
    best = min(objective, key=objective.get)
    return ZetaSearch(best, objective, base)


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
    pops = _populations(net)
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
        for start, xb in _batches(x, batch_size):
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
