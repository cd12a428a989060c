"""S-ResNet propagation-error compensation (Hu et al., eq. 12-14), a pass over a float network:
every weight times zeta (W' = zeta * W), zeta searched around the fitted growth q of the
propagation error E_l = p * q**l."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch.fx

from lavaconv.conversion.diagnostics import PropagationError, propagation_error
from lavaconv.ir.network import Network


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
                candidates: int = 9, *, seed: int = 0) -> ZetaSearch:
    """S-ResNet sec. 3.3: fit E = p * q**l (eq. 12), then try ``candidates`` values of zeta
    stepping from 1 to 2q - 1 (centred on q), below tau_max = 1 / (largest spike rate of the
    last IF layer); keep the one with the least sum of |E_i| (eq. 13). ``seed`` draws the
    Poisson input of the SNN runs."""
    base = propagation_error(net, gm, x, steps, seed=seed)
    tau_max = 1.0 / base.max_rate_last if base.max_rate_last > 0 else np.inf
    grid = [1.0]
    if np.isfinite(base.q) and base.q > 1:
        grid = [z for z in np.linspace(1.0, 2 * base.q - 1, candidates) if z < tau_max] or grid
    objective = {1.0: base.total_abs}
    for zeta in grid[1:]:
        trial = copy.deepcopy(net)
        compensate(trial, zeta)
        objective[float(zeta)] = propagation_error(trial, gm, x, steps, seed=seed).total_abs
    best = min(objective, key=objective.get)
    return ZetaSearch(best, objective, base)
