"""The engine for sigma-delta networks (:class:`~lavaconv.ir.network.SigmaDelta`), float and
integer; the integer mode is bit-exact with Lava 0.10's ``PyDeltaModelFixed``,
``PySigmaDeltaModelFixed``, ``PySigmaModelFixed`` and the stock ``Dense``/``Conv`` fixed-point
models (docs/sigma-delta.md has the equations).

Layer by layer over all steps, like :mod:`lavaconv.sim.engine`. A layer whose inputs have gone
quiet sends nothing more (its delta stays below threshold), so each layer is computed only up to
the last step with input and its train is zero after that: the cost of a long run is the cost
of the settling wave. Int mode computes in float64 (exact: every value stays far below 2**53).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lavaconv.ir.network import Conv, Dense, Input, Network, Readout, SigmaDelta, Synapse
from lavaconv.sim.result import SimResult

CONV_WRAP_BITS = 24  # Lava's Conv wraps its output to 24 bits
DENSE_BITS = 32  # Lava's Dense sums in int32


def _dtype(net: Network) -> torch.dtype:
    return torch.float64 if net.numeric == "int" else torch.float32


def _wrap(a: torch.Tensor, bits: int) -> torch.Tensor:
    half = 2.0 ** (bits - 1)
    return torch.remainder(a + half, 2 * half) - half


def apply_synapse(syn: Synapse, m: torch.Tensor, numeric: str) -> torch.Tensor:
    """Synaptic output for messages ``m`` (N, *src_shape): Lava's Dense (int: ``(W @ m)``
    floor-shifted by ``weight_exp``) or Conv (int: wrapped to 24 bits)."""
    w = torch.as_tensor(np.asarray(syn.weight), dtype=m.dtype, device=m.device)
    if isinstance(syn, Dense):
        a = m.flatten(1) @ w.T
        if numeric == "int" and syn.weight_exp:
            a = torch.floor(a * 2.0 ** syn.weight_exp)
        return a
    a = F.conv2d(m, w, stride=tuple(syn.stride), padding=tuple(syn.padding), groups=syn.groups)
    return _wrap(a, CONV_WRAP_BITS) if numeric == "int" else a


def _input(net: Network, syn: Synapse, trains: dict[str, torch.Tensor], length: int,
           total: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """Add ``syn``'s contribution (one step of delay) to ``total`` (``length`` steps); also the
    largest |sum| before wrapping/shifting (what the 24-bit and int32 bounds are checked
    against). Trains hold the steps up to their last message (zeros after)."""
    m = trains[syn.source]
    n = min(len(m), length - 1)
    batch = m.shape[1]
    steps = length
    if total is None:
        w_shape = apply_synapse(syn, m.new_zeros((1, *m.shape[2:])), net.numeric).shape
        total = m.new_zeros((length, batch, *w_shape[1:]))
    if n <= 0:
        return total, 0.0
    flat = m[:n].reshape(-1, *m.shape[2:])
    rows = torch.nonzero(flat.flatten(1).abs().sum(dim=1)).flatten()  # (step, item) that send
    w = torch.as_tensor(np.asarray(syn.weight), dtype=m.dtype)
    sent = flat[rows]
    raw = (sent.flatten(1) @ w.T if isinstance(syn, Dense) else
           F.conv2d(sent, w, stride=tuple(syn.stride), padding=tuple(syn.padding),
                    groups=syn.groups))
    peak = float(raw.abs().max()) if len(rows) else 0.0
    if net.numeric == "int":
        if isinstance(syn, Dense):
            raw = torch.floor(raw * 2.0 ** syn.weight_exp) if syn.weight_exp else raw
        else:
            raw = _wrap(raw, CONV_WRAP_BITS)
    target = total.view(steps * batch, *total.shape[2:])
    target.index_add_(0, rows + batch, raw)  # one step later
    return total, peak


def delta_input(net: Network, payload: torch.Tensor) -> torch.Tensor:
    """Messages of the ``Delta`` encoder for a payload ``(T, B, *shape)``."""
    node = net.nodes[net.input_name]
    int_mode = net.numeric == "int"
    p = payload.to(_dtype(net))
    act = p * 2.0 ** node.state_exp if int_mode else p
    out = torch.zeros_like(act)
    prev = torch.zeros_like(act[0])
    res = torch.zeros_like(act[0])
    for t in range(len(act)):
        if t > 1 and torch.equal(act[t], act[t - 1]) and not torch.any(out[t - 1]):
            return out[:t]  # constant payload, nothing sent last step: quiet from here on
        delta = act[t] - prev + res
        s = torch.where(delta.abs() >= node.delta_threshold, delta, 0.0)
        res = delta - s
        prev = act[t]
        out[t] = torch.floor(s * 2.0 ** -node.state_exp) if int_mode else s
    return out


def sigma_delta(node: SigmaDelta, a: torch.Tensor, int_mode: bool) -> tuple[torch.Tensor, float]:
    """Messages of a population for its synaptic input ``a`` (L, B, *shape): ``L`` steps, the
    last input at most at step L - 1, so nothing is sent after; also the largest |sigma|."""
    steps = len(a)
    bias = torch.as_tensor(np.broadcast_to(np.asarray(node.bias), node.shape).copy(),
                           dtype=a.dtype)
    sigma = torch.zeros_like(a[0])
    act = torch.zeros_like(sigma)
    res = torch.zeros_like(sigma)
    out = torch.zeros_like(a)
    peak = 0.0
    for t in range(steps):  # after the last input nothing changes: |r| < threshold
        sigma += a[t]
        if t == node.t_start:
            sigma += bias
        new = sigma.clamp(min=0)
        delta = new - act + res
        s = torch.where(delta.abs() >= node.v_threshold, delta, 0.0)
        res = delta - s
        act = new
        out[t] = torch.floor(s * 2.0 ** -node.state_exp) if int_mode else s
        peak = max(peak, float(sigma.abs().max()))
    return out, peak


def _count(result: SimResult, name: str, train: torch.Tensor, checkpoints: Sequence[int],
           int_mode: bool) -> None:
    events = train.ne(0)
    per_step = events.flatten(1).sum(dim=1).cumsum(0)
    dtype = torch.int64 if int_mode else torch.float32
    for t in checkpoints:
        n = min(t, len(train))
        result.spikes_at[t][name] = float(per_step[n - 1]) if n else 0.0
        if result.counts_at is not None:
            result.counts_at[t][name] = events[:n].sum(dim=0).to(dtype)
    result.spike_counts[name] = events.sum(dim=0).to(dtype)


def simulate(net: Network, payload: torch.Tensor, checkpoints: Sequence[int] | None = None, *,
             counts_at: bool = False, ranges: dict[str, dict[str, float]] | None = None
             ) -> SimResult:
    """Run sigma-delta network ``net`` on ``payload`` ``(T, B, *input_shape)`` (what the Delta
    encoder receives every step, :func:`lavaconv.sim.engine.encode_input`). ``spike_counts``
    are messages (non-zero graded values) per neuron; the input's are in ``input_counts``.
    ``ranges`` (if given) receives per node the largest |sigma| (``state``), |synaptic sum|
    (``sum``) and |message| (``message``), what the quantizer sizes the formats with."""
    steps = payload.shape[0]
    checkpoints = sorted(set(checkpoints or [steps]))
    if checkpoints[-1] > steps or checkpoints[0] < 1:
        raise ValueError(f"checkpoints must lie in [1, {steps}], got {checkpoints}")
    int_mode = net.numeric == "int"
    result = SimResult({}, {}, {t: {} for t in checkpoints}, {},
                       counts_at={t: {} for t in checkpoints} if counts_at else None)
    trains = {net.input_name: delta_input(net, payload)}
    events = trains[net.input_name].ne(0)
    result.input_counts = {t: events[:t].sum(dim=0).to(torch.int64) for t in checkpoints}
    batch = payload.shape[1]
    state_limit = 2.0 ** (23 if not int_mode else max(
        n.state_bits for n in net.nodes.values() if isinstance(n, SigmaDelta | Readout)) - 1)
    for name, node in net.nodes.items():
        if isinstance(node, Input):
            continue
        syns = net.inputs_of(name)
        length = min(steps, max([len(trains[s.source]) + 1 for s in syns] + [node.t_start + 1]))
        total, peak = None, 0.0
        for syn in syns:
            total, p = _input(net, syn, trains, length, total)
            peak = max(peak, p)
        if total is None:
            total = payload.new_zeros((length, batch, *node.shape), dtype=_dtype(net))
        if isinstance(node, Readout):
            bias = torch.as_tensor(np.broadcast_to(np.asarray(node.bias), node.shape).copy(),
                                   dtype=total.dtype)
            if node.t_start < steps:
                total[node.t_start] += bias
            v = total.cumsum(0)
            result.readout = {t: v[min(t, length) - 1] for t in checkpoints}
            result.readout_input = total
            state = float(v.abs().max())
            result.saturated[name] = int((v.abs() > state_limit).sum()) if int_mode else 0
            if ranges is not None:
                ranges[name] = {"state": state, "sum": peak, "message": 0.0}
            continue
        train, state = sigma_delta(node, total, int_mode)
        del total
        trains[name] = train
        _count(result, name, train, checkpoints, int_mode)
        result.saturated[name] = int(state > state_limit) if int_mode else 0
        if ranges is not None:
            ranges[name] = {"state": state, "sum": peak, "message": float(train.abs().max())}
    return result


def within_bounds(net: Network, ranges: dict[str, dict[str, float]]) -> list[str]:
    """Nodes whose measured ranges break a fixed-point bound (24-bit state or conv sum, int32
    dense sum, message width): empty when the integer network is safe on those items."""
    bad = []
    for name, r in ranges.items():
        node = net.nodes[name]
        syns = net.inputs_of(name)
        conv = any(isinstance(s, Conv) for s in syns)
        if r["state"] >= 2 ** (node.state_bits - 1) or (conv and r["sum"] >= 2 ** 23) or \
                r["sum"] >= 2 ** (DENSE_BITS - 1):
            bad.append(name)
        elif isinstance(node, SigmaDelta) and r["message"] >= 2 ** (node.message_bits - 1):
            bad.append(name)
    return bad
