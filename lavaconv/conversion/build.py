"""Conversion with every method of :class:`~lavaconv.conversion.structure.ConvertOptions` applied,
including those that need calibration items (per-neuron norms, RMP threshold balancing,
bias correction, the S-ResNet zeta search)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch.fx

from lavaconv.ann.data import Dataset
from lavaconv.ann.stats import ActivationStats, activation_stats, neuron_scales
from lavaconv.conversion.balance import balance_thresholds
from lavaconv.conversion.correction import correct
from lavaconv.conversion.sigma_delta import sigma_delta_network
from lavaconv.conversion.structure import ConvertOptions, convert
from lavaconv.conversion.zeta import compensate, search_zeta
from lavaconv.ir.network import Network


def build_network(gm: torch.fx.GraphModule, x_calib: np.ndarray,
                  stats: dict[str, ActivationStats], options: ConvertOptions,
                  measure_on: Callable[[Network], Network] | None = None,
                  seed: int = 0) -> Network:
    """Convert ``gm`` (calibrated by ``stats`` on ``x_calib``), then apply, in this order,
    RMP threshold balancing, bias or potential correction and the zeta search on the first
    ``options.calib_items`` calibration items, each SNN run ``options.calib_steps`` long (its
    Poisson input drawn with ``seed``). What each step found is kept in
    ``net.meta['calibration']``. ``measure_on`` (e.g. the quantizer of the target profile) gives
    the network whose spikes the correction counts."""
    scales = neuron_scales(gm, x_calib, options.norm) if options.norm.per_neuron else None
    net = convert(gm, tuple(x_calib.shape[1:]), stats, options, neuron_scales=scales)
    if options.neuron == "sigma-delta":
        return sigma_delta_network(net, options.sd_threshold)
    x = x_calib[:options.calib_items]
    steps = options.calib_steps
    found: dict = {}
    if options.balance is not None:
        found["balance_factors"] = balance_thresholds(net, x, options.balance, steps, seed=seed)
    if options.correction != "none":
        found[f"{options.correction}_correction"] = correct(net, gm, x, steps, options.correction,
                                                           seed=seed, measure_on=measure_on)
    if options.zeta == "auto":
        search = search_zeta(net, gm, x, steps, seed=seed)
        compensate(net, search.zeta)
        found["zeta"] = {"chosen": search.zeta, "p": search.error.p, "q": search.error.q,
                         "objective": {str(k): v for k, v in search.objective.items()},
                         "error_per_layer": {ly.name: ly.at_max for ly in search.error.layers}}
    if found:
        net.meta["calibration"] = found
    return net


def build(gm: torch.fx.GraphModule, dataset: Dataset, options: ConvertOptions,
          progress: bool = True, device: str = "cpu",
          seed: int = 0) -> tuple[Network, dict[str, ActivationStats]]:
    """Activation statistics of the calibration items only, then the conversion with every
    method of ``options`` (those that run the SNN use calibration items too, their Poisson
    input drawn with ``seed``)."""
    stats = activation_stats(gm, dataset.x_calib, progress=progress, device=device)
    net = build_network(gm, dataset.x_calib, stats, options, seed=seed)
    return net, stats
