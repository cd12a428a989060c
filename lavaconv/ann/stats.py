"""Streaming activation statistics for weight normalisation (max-norm and robust percentile).

:class:`ActivationStats` keeps, per channel, the exact max of ``|x|`` and a histogram of the
positive ``|x|`` over ``[0, 2**e)``, where ``2**e`` is the smallest power of two above the
channel's max. When a larger value arrives the range doubles and adjacent bin pairs merge, so
every count sits exactly where binning all data at the final range would put it: the result
does not depend on batch order or on how the stream was split (:meth:`ActivationStats.merge`).
Memory is ``channels * bins`` counts, whatever the number of items.

:func:`collect` runs a torch.fx graph batch by batch and feeds the named nodes' outputs in;
:func:`activation_stats` does it for every population over the distributed ranks' shards.
:class:`NormSpec` says which statistic becomes a population's scale lambda; neuron-wise
normalisation needs one per neuron, which :func:`neuron_scales` streams with a running max or a
running top-k (enough for a high percentile) per neuron (SNM eq. 14).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx
from tqdm import tqdm

from lavaconv import distributed
from lavaconv.ann.probe import Probe, activations, input_name, population_nodes
from lavaconv.errors import LavaconvError


def _coarsen(hist: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Each row ``c`` of ``hist`` with its range doubled ``shifts[c]`` times (bins merged)."""
    out = hist.copy()
    bins = hist.shape[1]
    for k in np.unique(shifts[shifts > 0]):
        rows = shifts == k
        group = 1 << int(min(k, math.log2(bins)))
        merged = hist[rows].reshape(int(rows.sum()), bins // group, group).sum(axis=2)
        out[rows] = 0
        out[rows, : bins // group] = merged
    return out


class ActivationStats:
    """Per-channel max and histogram of ``|x|`` of one activation tensor, streamed.

    Tensors are batch first: ``(B, C, ...)`` (channel = dim 1) or ``(B, N)`` (one channel per
    unit). Zeros are excluded from the histogram, so for ReLU outputs the percentile is of the
    non-zero activations, as SNN Toolbox and Rueckauer et al. 2017 (Fig. 1) compute it.
    A channel that never saw a positive value has max 0 (callers treat it as dead).
    """

    def __init__(self, bins: int = 2048) -> None:
        if bins < 2 or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two >= 2, got {bins}")
        self.bins = bins
        self._max = np.zeros(0)  # per channel, exact
        self._exp = np.zeros(0, dtype=np.int64)  # histogram range is [0, 2**exp)
        self._hist = np.zeros((0, bins), dtype=np.int64)

    @property
    def channels(self) -> int:
        return len(self._max)

    def update(self, t: torch.Tensor) -> None:
        """Add one batch of activations."""
        if t.dim() < 2 or t.shape[1] == 0:
            raise ValueError(f"expected a batch-first (B, C, ...) tensor, got {tuple(t.shape)}")
        if self.channels == 0:
            self._init(t.shape[1])
        elif t.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {t.shape[1]}")
        x = t.detach().reshape(t.shape[0], t.shape[1], -1).abs()  # (B, C, S)
        if x.numel() == 0:
            return
        if x.dtype != torch.float64:
            x = x.float()
        batch_max = x.amax(dim=(0, 2)).double().numpy()  # NaN propagates
        if not np.isfinite(batch_max).all():
            raise ValueError("activations contain NaN or infinity")
        self._raise_range(batch_max)
        self._max = np.maximum(self._max, batch_max)
        # bin of v in [0, 2**e) is floor(v * 2**(log2(bins) - e)): a power-of-two scale, exact
        # while the scale itself is representable (else compute in float64)
        shift = int(math.log2(self.bins)) - self._exp
        if shift.max() > 100:
            x = x.double()
        scale = torch.from_numpy(np.ldexp(1.0, shift)).to(x.dtype)
        offset = torch.arange(self.channels) * self.bins
        idx = (x * scale[:, None]).long() + offset[:, None]
        counts = torch.bincount(idx.flatten(), minlength=self.channels * self.bins)
        counts = counts.numpy().reshape(self.channels, self.bins)
        counts[:, 0] -= (x == 0).sum(dim=(0, 2)).numpy()  # zeros landed in bin 0
        self._hist += counts

    def _init(self, channels: int) -> None:
        self._max = np.zeros(channels)
        self._exp = np.zeros(channels, dtype=np.int64)
        self._hist = np.zeros((channels, self.bins), dtype=np.int64)

    def _raise_range(self, new_max: np.ndarray) -> None:
        """Grow each channel's range to hold ``new_max`` (doubling, bins merged pairwise)."""
        # 2**(e-1) <= m < 2**e; a channel without a positive value keeps its range
        needed = np.where(new_max > 0, np.frexp(new_max)[1], self._exp)
        dead = self._max == 0
        exp = np.where(dead, needed, np.maximum(self._exp, needed)).astype(np.int64)
        self._hist = _coarsen(self._hist, np.where(dead, 0, exp - self._exp))
        self._exp = exp

    def _require_data(self) -> None:
        if self.channels == 0:
            raise ValueError("no activations recorded yet")

    def max(self, per_channel: bool) -> np.ndarray:
        """Exact max of ``|x|``: shape ``(C,)`` or a scalar array."""
        self._require_data()
        return self._max.copy() if per_channel else np.asarray(self._max.max())

    def percentile(self, p: float, per_channel: bool) -> np.ndarray:
        """p-th percentile of the non-zero ``|x|`` (p in (0, 100]; 100 is the exact max).

        The answer is the upper edge of the bin where the cumulative count reaches p % of the
        count, capped at the exact max: never below the inverted-CDF percentile, and above it
        by less than one bin width. Channels without positive values give 0.
        """
        if not 0 < p <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {p}")
        self._require_data()
        if p == 100:
            return self.max(per_channel)
        if per_channel:
            return np.array([_hist_percentile(h, e, m, p)
                             for h, e, m in zip(self._hist, self._exp, self._max, strict=True)])
        live = self._max > 0
        if not live.any():
            return np.zeros(())
        top = int(self._exp[live].max())
        pooled = _coarsen(self._hist[live], top - self._exp[live]).sum(axis=0)
        return np.asarray(_hist_percentile(pooled, top, float(self._max.max()), p))

    def merge(self, other: ActivationStats) -> ActivationStats:
        """Add ``other``'s data into this one (exact); returns ``self``."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge statistics with {other.bins} and {self.bins} bins")
        if other.channels == 0:
            return self
        if self.channels == 0:
            self._init(other.channels)
        if other.channels != self.channels:
            raise ValueError(f"cannot merge {other.channels} channels into {self.channels}")
        self._raise_range(other._max)
        self._hist += _coarsen(other._hist, np.where(other._max > 0, self._exp - other._exp, 0))
        self._max = np.maximum(self._max, other._max)
        return self

    def to_state(self) -> dict[str, np.ndarray]:
        """Plain arrays (e.g. for ``np.savez`` or ``torch.distributed`` gathering)."""
        return {"bins": np.asarray(self.bins), "max": self._max.copy(),
                "exp": self._exp.copy(), "hist": self._hist.copy()}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> ActivationStats:
        """Inverse of :meth:`to_state`."""
        stats = cls(int(state["bins"]))
        stats._max = np.asarray(state["max"], dtype=np.float64).copy()
        stats._exp = np.asarray(state["exp"], dtype=np.int64).copy()
        stats._hist = np.asarray(state["hist"], dtype=np.int64).copy()
        if stats._hist.shape != (stats.channels, stats.bins) or stats._exp.shape != (
                stats.channels,):
            raise ValueError("inconsistent ActivationStats state arrays")
        return stats


def _hist_percentile(hist: np.ndarray, exp: int, vmax: float, p: float) -> float:
    """Upper edge of the bin holding the ceil(p % of n)-th value, capped at ``vmax``."""
    n = int(hist.sum())
    if n == 0:
        return 0.0
    rank = max(1, math.ceil(round(p * n / 100, 9)))  # round: 99.9 * 1000 / 100 is 999, not 999.0..1
    i = int(np.searchsorted(np.cumsum(hist), rank))
    return min(math.ldexp(i + 1, int(exp)) / len(hist), vmax)


def collect(
    graph_module: torch.fx.GraphModule,
    batches: Iterable[torch.Tensor],
    names: Sequence[str],
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, ActivationStats]:
    """Statistics of the named fx nodes' outputs over all ``batches`` (one batch in memory).

    A placeholder's name records the input. ``on_batch`` is called with each batch's size.
    """
    known = {n.name for n in graph_module.graph.nodes}
    unknown = [n for n in names if n not in known]
    if unknown:
        listed = ", ".join(map(repr, unknown))
        raise LavaconvError(f"calibration: no node named {listed} in the graph")
    stats = {name: ActivationStats() for name in names}

    def record(node: torch.fx.Node, value):
        if not isinstance(value, torch.Tensor):
            raise LavaconvError(f"calibration: node {node.name!r} does not produce a tensor")
        try:
            stats[node.name].update(value)
        except ValueError as err:
            where = node.meta.get("lavaconv_where", node.op)
            raise LavaconvError(f"calibration: node {node.name!r} ({where}): {err}; check the "
                                "model's weights and the input data") from None
        return value

    probe = Probe(graph_module, stats, record)
    with torch.no_grad():
        for batch in batches:
            probe.run(batch)
            if on_batch is not None:
                on_batch(len(batch))
    return stats


@dataclass(frozen=True)
class NormSpec:
    """How activation scales lambda are chosen: ``none``, ``max`` (Diehl et al. 2015) or the
    robust ``p``-th percentile (Rueckauer sec. 3.2.2); layer-wise, per channel, or per neuron
    (SNM eq. 14: every neuron its own threshold, spikes worth their threshold)."""

    method: str = "percentile"  # none | max | percentile
    percentile: float = 99.9
    per_channel: bool = False
    per_neuron: bool = False

    @classmethod
    def parse(cls, text: str) -> NormSpec:
        """``none``, ``max``, ``p99.9``, optionally ``:channel`` or ``:neuron``."""
        match = re.fullmatch(r"(none|max|p(\d+(?:\.\d+)?))(:channel|:neuron)?", text.strip())
        if (not match or (match.group(2) and not 0 < float(match.group(2)) <= 100)
                or (match.group(1) == "none" and match.group(3))):
            raise LavaconvError(
                f"--norm {text!r}: expected none, max or pQ with 0 < Q <= 100, "
                "optionally followed by :channel or :neuron (e.g. p99.9:channel, max:neuron)"
            )
        method = "percentile" if match.group(2) else match.group(1)
        return cls(method, float(match.group(2) or 100.0), match.group(3) == ":channel",
                   match.group(3) == ":neuron")

    def __str__(self) -> str:
        base = f"p{self.percentile:g}" if self.method == "percentile" else self.method
        return base + (":channel" if self.per_channel else ":neuron" if self.per_neuron else "")


def neuron_scales(gm: torch.fx.GraphModule, x: np.ndarray, spec: NormSpec,
                  batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per-neuron lambda of every hidden population: the max of its activation over ``x``
    (SNM eq. 14), or the ``spec.percentile``-th percentile of its non-zero values (the
    inverted-CDF value of rank ceil(p * n / 100) among the n non-zero ones; 0 when n = 0)."""
    keep = math.floor(len(x) * (1 - spec.percentile / 100)) + 1 if spec.method != "max" else 1
    hidden = [p for p in population_nodes(gm) if p not in ("output", input_name(gm))]
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


def _pick(top: torch.Tensor, nonzero: torch.Tensor, spec: NormSpec) -> np.ndarray:
    """The wanted order statistic per neuron from its largest values ``top`` (k, N)."""
    if spec.method == "max":
        return top[0].clamp(min=0).numpy()
    n = nonzero.to(torch.float64)
    rank = torch.ceil(torch.round(spec.percentile * n / 100, decimals=9)).clamp(min=1)
    index = (n - rank).clamp(min=0, max=len(top) - 1).long()  # 0 = the largest
    value = top.gather(0, index[None]).squeeze(0)
    return torch.where(n > 0, value, torch.zeros_like(value)).numpy()


def _merged(stats: dict[str, ActivationStats]) -> dict[str, ActivationStats]:
    """Statistics over all ranks' shards (histogram merge is exact)."""
    states = distributed.all_gather_objects({k: v.to_state() for k, v in stats.items()})
    if len(states) == 1:
        return stats
    merged: dict[str, ActivationStats] = {}
    for per_rank in states:
        for name, state in per_rank.items():
            part = ActivationStats.from_state(state)
            merged[name] = merged[name].merge(part) if name in merged else part
    return merged


def activation_stats(gm: torch.fx.GraphModule, x_calib: np.ndarray, batch_size: int = 256,
              progress: bool = True, device: str = "cpu") -> dict[str, ActivationStats]:
    """Activation statistics of every population (keyed by population name)."""
    if len(x_calib) == 0:
        raise LavaconvError("calibration set is empty: give more data or --calib-samples > 0")
    names = population_nodes(gm)
    bar = tqdm(total=len(x_calib), desc="calibrate", unit="item", disable=not progress,
               leave=False)
    batches = (b for _, b in distributed.batches(x_calib, batch_size, device))
    by_node = _merged(collect(gm.to(device), batches, sorted(set(names.values())),
                              on_batch=bar.update))
    bar.close()
    return {pop: by_node[node] for pop, node in names.items()}
