"""How far a float spiking network is from its ANN, layer by layer.

- :func:`information_loss`: the information a threshold and a window of T steps cannot carry
  (SNM, Wang et al. 2022, eq. 12-13), computed on ANN activations alone.
- :func:`propagation_error`: E_i = a_i - r_i(T), the normalised ANN activation minus the
  firing rate (S-ResNet, Hu et al., eq. 9-11), per layer, with the fit E = p * q**l (eq. 12).
- :func:`clipped_ann_accuracy`: the ANN with every ReLU clipped at the largest value its
  population can send per step, the accuracy the SNN approaches as T grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.fx

from lavaconv.ann.probe import activations, population_nodes
from lavaconv.ir.network import IF, Network
from lavaconv.sim.engine import encode_input, simulate


def information_loss(act: np.ndarray, lam: np.ndarray, alpha: float, steps: int) -> float:
    """SNM eq. 12-13 for activations ``act`` (N, *shape) and thresholds ``lam`` (activation
    units, broadcastable to one item): per item, the sum over neurons of ``a`` where
    0 < a < alpha*lam/T (too small to fire in T steps) and of ``a - alpha*lam`` where
    a > alpha*lam (above the largest rate); the mean over items."""
    act = np.asarray(act, dtype=np.float64)
    top = alpha * np.asarray(lam, dtype=np.float64)
    lost = np.where((act > 0) & (act < top / steps), act, 0.0)  # eq. 13, first case
    lost += np.where(act > top, act - top, 0.0)  # eq. 13, second case
    return float(lost.reshape(len(act), -1).sum(axis=1).mean())  # eq. 12


def neuron_lambda(node: IF) -> np.ndarray:
    """Each neuron's threshold in ANN activation units: its layer or channel scale times its
    relative threshold (float networks)."""
    scale = node.per_channel(np.asarray(node.scale, dtype=np.float64))
    return np.broadcast_to(scale * node.v_threshold, node.shape)


@dataclass
class LayerError:
    """Propagation error of one IF population (units of its threshold)."""

    name: str
    depth: int  # l: 1 for the first IF population, in topological order
    at_max: float  # E of the neuron that fires most, mean over items (S-ResNet Fig. 4)
    mean: float  # mean of E over neurons and items
    mean_abs: float  # mean of |E|


@dataclass
class PropagationError:
    layers: list[LayerError]
    p: float  # E = p * q**l fitted to ``at_max`` over the layers where it is positive (eq. 12)
    q: float
    total_abs: float  # sum of |E_i| over all neurons, mean over items (the objective, eq. 13)
    max_rate_last: float  # largest spike rate (spikes per step) of the last IF population


class _Clipped(torch.fx.Interpreter):
    """Runs the graph with the named nodes' outputs clipped from above."""

    def __init__(self, gm: torch.fx.GraphModule, ceilings: dict[str, torch.Tensor]) -> None:
        super().__init__(gm)
        self.ceilings = ceilings

    def run_node(self, n: torch.fx.Node):
        value = super().run_node(n)
        top = self.ceilings.get(n.name)
        return value if top is None else torch.minimum(value, top.to(value.dtype))


def clipped_ann_accuracy(net: Network, gm: torch.fx.GraphModule, x: np.ndarray, y: np.ndarray,
                         batch_size: int = 500) -> float:
    """Accuracy of ``gm`` with each ReLU clipped at its IF population's rate ceiling, the
    threshold in activation units times the burst (float ``net`` converted from ``gm``)."""
    names = population_nodes(gm)
    ceilings = {names[n]: torch.as_tensor(neuron_lambda(v) * v.burst) for n, v in net.nodes.items()
                if isinstance(v, IF)}
    clipped = _Clipped(gm, ceilings)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            out = clipped.run(torch.as_tensor(np.ascontiguousarray(x[start:start + batch_size])))
            correct += int((out.argmax(1).numpy() == y[start:start + batch_size]).sum())
    return correct / len(x)


def normalised_activation(node: IF, act: torch.Tensor) -> torch.Tensor:
    """ANN activation in units of the population's layer (or channel) scale."""
    return act.to(torch.float64) / torch.as_tensor(node.per_channel(
        np.asarray(node.scale, dtype=np.float64)))


def propagation_error(net: Network, gm: torch.fx.GraphModule, x: np.ndarray, steps: int,
                      *, batch_size: int = 64, seed: int = 0) -> PropagationError:
    """E_i = a_i - r_i(T) for every IF neuron on items ``x`` (S-ResNet eq. 9-11), with a_i the
    ANN activation over the layer scale and r_i(T) = (payload sent up to T) / T."""
    ann = population_nodes(gm)  # a max-pool's ReLU units have no ANN activation
    pops = [n for n in net.populations() if n in ann]
    sums = {n: np.zeros(3) for n in pops}  # at_max, mean, mean_abs (summed over items)
    total_abs, max_rate = 0.0, 0.0
    for start, acts in zip(range(0, len(x), batch_size), activations(gm, x, batch_size),
                           strict=True):
        xb = x[start:start + batch_size]
        sent: dict[str, torch.Tensor] = {}
        res = simulate(net, encode_input(net, xb, steps, seed=seed + start), [steps],
                       probe=lambda n, _u, train, sent=sent: sent.__setitem__(n, train.sum(0)),
                       stop_after=pops[-1])
        for name in pops:
            rate = sent[name].to(torch.float64).flatten(1) / steps
            err = normalised_activation(net.nodes[name], acts[name]).flatten(1) - rate
            top = rate.argmax(dim=1, keepdim=True)
            sums[name] += [float(err.gather(1, top).sum()), float(err.mean(1).sum()),
                           float(err.abs().mean(1).sum())]
            total_abs += float(err.abs().sum())
        last = res.spike_counts[pops[-1]]
        max_rate = max(max_rate, float(last.max()) / steps)
    n = max(len(x), 1)
    layers = [LayerError(name, i + 1, *(sums[name] / n)) for i, name in enumerate(pops)]
    p, q = _fit([ly.depth for ly in layers], [ly.at_max for ly in layers])
    return PropagationError(layers, p, q, total_abs / n, max_rate)


def _fit(depth: list[int], error: list[float]) -> tuple[float, float]:
    """Least squares of log E = log p + l log q over the positive errors (S-ResNet eq. 12)."""
    pts = [(d, e) for d, e in zip(depth, error, strict=True) if e > 0]
    if len(pts) < 2:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit([d for d, _ in pts], np.log([e for _, e in pts]), 1)
    return float(np.exp(intercept)), float(np.exp(slope))
