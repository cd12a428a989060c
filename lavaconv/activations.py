"""ANN activations per population, and per-neuron activation scales (SNM eq. 14).

:class:`~lavaconv.calibrate.ActivationStats` keeps per-channel histograms; neuron-wise
normalisation needs one scale per neuron, which :func:`neuron_scales` streams with a running
max or a running top-k (enough for a high percentile) per neuron.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.fx

from lavaconv.convert import NormSpec, calibration_nodes


class _Recorder(torch.fx.Interpreter):
    """Runs the graph and keeps the outputs of the named nodes."""

    def __init__(self, gm: torch.fx.GraphModule, names: set[str]) -> None:
        super().__init__(gm)
        self.names = names
        self.seen: dict[str, torch.Tensor] = {}

    def run_node(self, n: torch.fx.Node):
        value = super().run_node(n)
        if n.name in self.names:
            self.seen[n.name] = value.detach()
        return value


def activations(gm: torch.fx.GraphModule, x: np.ndarray,
                batch_size: int = 256) -> Iterator[dict[str, torch.Tensor]]:
    """For each batch of ``x``: population name → its ANN activation ``(B, *shape)`` (the
    input and the output included, named as in the converted network)."""
    names = calibration_nodes(gm)
    recorder = _Recorder(gm, set(names.values()))
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            recorder.seen = {}
            recorder.run(torch.as_tensor(np.ascontiguousarray(x[start:start + batch_size])))
            yield {pop: recorder.seen[node] for pop, node in names.items()}


def neuron_scales(gm: torch.fx.GraphModule, x: np.ndarray, spec: NormSpec,
                  batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per-neuron lambda of every hidden population: the max of its activation over ``x``
    (SNM eq. 14), or the ``spec.percentile``-th percentile of its non-zero values (the
    inverted-CDF value of rank ceil(p * n / 100) among the n non-zero ones; 0 when n = 0)."""
    keep = math.floor(len(x) * (1 - spec.percentile / 100)) + 1 if spec.method != "max" else 1
    hidden = [p for p in calibration_nodes(gm) if p not in ("output", _input_name(gm))]
    top: dict[str, torch.Tensor] = {}
    nonzero: dict[str, torch.Tensor] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for acts in activations(gm, x, batch_size):
        for pop in hidden:
            shapes[pop] = tuple(acts[pop].shape[1:])
            a = acts[pop].reshape(len(acts[pop]), -1).to(torch.float64)
            both = a if pop not in top else torch.cat([top[pop], a])
            top[pop] = torch.topk(both, min(keep, len(both)), dim=0).values
            nonzero[pop] = nonzero.get(pop, 0) + (a != 0).sum(dim=0)
    return {pop: _pick(values, nonzero[pop], spec).reshape(shapes[pop])
            for pop, values in top.items()}


def _input_name(gm: torch.fx.GraphModule) -> str:
    return next(n.name for n in gm.graph.nodes if n.op == "placeholder")


def _pick(top: torch.Tensor, nonzero: torch.Tensor, spec: NormSpec) -> np.ndarray:
    """The wanted order statistic per neuron from its largest values ``top`` (k, N)."""
    if spec.method == "max":
        return top[0].clamp(min=0).numpy()
    n = nonzero.to(torch.float64)
    rank = torch.ceil(torch.round(spec.percentile * n / 100, decimals=9)).clamp(min=1)
    index = (n - rank).clamp(min=0, max=len(top) - 1).long()  # 0 = the largest
    value = top.gather(0, index[None]).squeeze(0)
    return torch.where(n > 0, value, torch.zeros_like(value)).numpy()
