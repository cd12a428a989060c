"""Fast batched PyTorch simulator of a :class:`~lavaconv.network.Network`.

Implements the update equations of ``docs/design.md`` section 3 exactly, in float mode
(float32) and in integer mode (integer state in int64, synaptic sums in float64, which is exact
below 2**53). Each synapse's input for all timesteps is computed in one batched op: the spike
train ``(T, B, ...)`` is folded into the batch dimension, shifted by the one-step synapse delay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from lavaconv.network import IF, Conv, Dense, Input, MaxPool, Network, Readout, Synapse


@dataclass
class SimResult:
    """What one simulation produced for a batch of items."""

    readout: dict[int, torch.Tensor]  # checkpoint t -> readout potential v[t-1], (B, n_out)
    spike_counts: dict[str, torch.Tensor]  # node -> spikes per neuron over all T, (B, *shape)
    spikes_at: dict[int, dict[str, float]] = field(default_factory=dict)  # t -> node -> total
    saturated: dict[str, int] = field(default_factory=dict)  # int mode: neuron-steps clipped

    def predictions(self, t: int) -> torch.Tensor:
        return self.readout[t].argmax(dim=1)


def _device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def encode_input(
    net: Network, x, timesteps: int, seed: int = 0, device: str | torch.device | None = "cpu"
) -> torch.Tensor:
    """Payload the input node sends at each step: ``(T, B, *shape)``.

    Analog: ``x / scale`` (float) or ``round(x * gain)`` clipped to the payload bits (int);
    Poisson: signed spikes with ``P(s = ±1) = |x| / scale`` (RMP-SNN sec. 3.1), seeded.
    """
    node = net.nodes[net.input_name]
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64, device=_device(device))
    int_mode = net.numeric == "int"
    if node.encoding == "analog":
        if int_mode:
            limit = 2 ** (node.payload_bits - 1) - 1
            p = torch.clamp(torch.round(x * node.gain), -limit, limit).to(torch.int64)
        else:
            p = (x / node.scale).to(torch.float32)
        return p.unsqueeze(0).expand(timesteps, *p.shape)
    if node.encoding != "poisson":
        raise ValueError(f"unknown input encoding {node.encoding!r}")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    u = torch.rand((timesteps, *x.shape), generator=gen, dtype=torch.float64).to(x.device)
    p = torch.sign(x) * (u < x.abs() / node.scale)
    return p.to(torch.int64 if int_mode else torch.float32)


def _wrap(a: torch.Tensor, bits: int) -> torch.Tensor:
    """Two's-complement wrap to ``bits`` (Lava's Conv ``signed_clamp``)."""
    half = 2 ** (bits - 1)
    return torch.remainder(a + half, 2 * half) - half


def _apply_synapse(syn: Synapse, s: torch.Tensor, int_mode: bool) -> torch.Tensor:
    """Synaptic output for a batch of source payloads ``s`` (N, *src_shape)."""
    dtype = torch.float64 if int_mode else torch.float32
    w = torch.as_tensor(syn.weight, dtype=dtype, device=s.device)
    s = s.to(dtype)
    if isinstance(syn, Dense):
        return s.flatten(1) @ w.T
    a = F.conv2d(s, w, stride=tuple(syn.stride), padding=tuple(syn.padding), groups=syn.groups)
    return _wrap(a, 24) if int_mode else a


def synaptic_input(
    net: Network, name: str, trains: dict[str, torch.Tensor], constant: set[str]
) -> torch.Tensor:
    """``a[t] = sum_e syn_e(s_src[t-1])`` for all t at once; ``a[0] = 0`` (one-step delay)."""
    int_mode = net.numeric == "int"
    total = None
    for syn in net.inputs_of(name):
        s = trains[syn.source]
        steps = s.shape[0]
        if syn.source in constant:  # analog input: the same payload every step
            a = _apply_synapse(syn, s[0], int_mode)
            a = a.unsqueeze(0).expand(steps - 1, *a.shape)
        else:
            flat = s[:-1].reshape(-1, *s.shape[2:])
            a = _apply_synapse(syn, flat, int_mode)
            a = a.reshape(steps - 1, s.shape[1], *a.shape[1:])
        if total is None:
            total = a.new_zeros((steps, *a.shape[1:]))
        total[1:] += a
    return total.round().to(torch.int64) if int_mode else total


def _gain(a: torch.Tensor, a_exp: int) -> torch.Tensor:
    """Integer dendritic gain ``a * 2**(6 + a_exp)``, floor shift when negative."""
    shift = 6 + a_exp
    return a << shift if shift >= 0 else a >> -shift


def run_population(
    net: Network, node: IF | Readout, a: torch.Tensor, checkpoints: Sequence[int]
) -> tuple[torch.Tensor | None, dict[int, torch.Tensor], int]:
    """Integrate ``a`` (T, B, *shape), which this function may overwrite; return the spike
    train (IF), v at the checkpoints and how many neuron-steps saturated the state (int mode)."""
    int_mode = net.numeric == "int"
    dtype = torch.int64 if int_mode else torch.float32
    if int_mode:
        a = _gain(a, node.a_exp)
    a[node.t_start:] += torch.as_tensor(node.bias, device=a.device).to(dtype)
    lo, hi = -(2 ** (node.state_bits - 1)), 2 ** (node.state_bits - 1) - 1
    if isinstance(node, Readout):
        v = torch.cumsum(a, dim=0)
        if not int_mode or (v.min() >= lo and v.max() <= hi):  # no saturation: a plain sum
            return None, {t: v[t - 1] for t in checkpoints}, 0
    return _integrate_and_fire(node, a, checkpoints, (lo, hi) if int_mode else None)


def _integrate_and_fire(node: IF | Readout, a: torch.Tensor, checkpoints: Sequence[int],
                        bounds: tuple[int, int] | None):
    """The step-by-step loop, in place; ``bounds`` saturate the state (int mode)."""
    spiking = isinstance(node, IF)
    v = torch.zeros_like(a[0])
    if spiking:
        v += torch.as_tensor(node.v_init, device=a.device).to(a.dtype)
    fired = torch.zeros_like(a[0], dtype=torch.bool)
    spikes = torch.zeros_like(a) if spiking else None
    if spiking:
        vth = torch.as_tensor(node.v_threshold, device=a.device).to(a.dtype)
        scalar_vth = vth.dim() == 0
    marks = set(checkpoints)
    at: dict[int, torch.Tensor] = {}
    saturated = 0
    for t in range(a.shape[0]):
        v.add_(a[t])
        if bounds is not None:
            saturated += int(torch.count_nonzero((v < bounds[0]) | (v > bounds[1])))
            v.clamp_(*bounds)
        if spiking:
            torch.ge(v, vth, out=fired)
            if node.reset == "subtract":  # reset by subtraction (Rueckauer eq. 4b)
                v.sub_(fired.to(v.dtype) * vth) if not scalar_vth else v.sub_(
                    fired.to(v.dtype), alpha=vth.item())
            else:  # reset to zero (Rueckauer eq. 4a)
                v.masked_fill_(fired, 0)
            spikes[t] = fired
        if t + 1 in marks:
            at[t + 1] = v.clone()
    return spikes, at, saturated


def maxpool_gate(node: MaxPool, s: torch.Tensor) -> torch.Tensor:
    """Rate-gated spiking max-pool (Rueckauer sec. 3.6): pass the spikes of the input with the
    highest spike count so far in each window; ties go to the first, padding never wins."""
    steps, batch, ch, h, w = s.shape
    counts = torch.cumsum(s, dim=0).to(torch.float64)
    ph, pw = node.padding
    kh, kw = node.kernel

    def windows(x: torch.Tensor, fill: float) -> torch.Tensor:
        x = F.pad(x.reshape(-1, ch, h, w).to(torch.float64), (pw, pw, ph, ph), value=fill)
        cols = F.unfold(x, (kh, kw), stride=tuple(node.stride))  # (N, C*kh*kw, L)
        return cols.reshape(x.shape[0], ch, kh * kw, -1)

    pick = windows(counts, -1.0).argmax(dim=2, keepdim=True)
    out = windows(s, 0.0).gather(2, pick).squeeze(2)
    return out.reshape(steps, batch, *node.shape).to(s.dtype)


def simulate(
    net: Network,
    payload: torch.Tensor,
    checkpoints: Sequence[int] | None = None,
) -> SimResult:
    """Run ``net`` on a payload ``(T, B, *input_shape)`` from :func:`encode_input`."""
    steps = payload.shape[0]
    checkpoints = sorted(set(checkpoints or [steps]))
    if checkpoints[-1] > steps or checkpoints[0] < 1:
        raise ValueError(f"checkpoints must lie in [1, {steps}], got {checkpoints}")
    order = {name: i for i, name in enumerate(net.nodes)}
    uses = [(s.source, s.target) for s in net.synapses]
    uses += [(n.source, name) for name, n in net.nodes.items() if isinstance(n, MaxPool)]
    last_use: dict[str, str] = {}
    for src, dst in uses:
        if src not in last_use or order[dst] > order[last_use[src]]:
            last_use[src] = dst
    inp = net.nodes[net.input_name]
    trains: dict[str, torch.Tensor] = {net.input_name: payload}
    constant = {net.input_name} if inp.encoding == "analog" else set()
    counts: dict[str, torch.Tensor] = {}
    spikes_at: dict[int, dict[str, float]] = {t: {} for t in checkpoints}
    readout: dict[int, torch.Tensor] = {}
    saturated: dict[str, int] = {}
    for name, node in net.nodes.items():
        if isinstance(node, Input):
            continue
        if isinstance(node, MaxPool):
            train = maxpool_gate(node, trains[node.source])
        else:
            a = synaptic_input(net, name, trains, constant)
            train, at, saturated[name] = run_population(net, node, a, checkpoints)
            del a
            if isinstance(node, Readout):
                readout = at
        if train is not None:
            trains[name] = train
            cum = train.abs().sum(dim=tuple(range(1, train.dim()))).cumsum(0)
            for t in checkpoints:
                spikes_at[t][name] = float(cum[t - 1])
            counts[name] = train.sum(dim=0)
        for src in [s for s, last in last_use.items() if last == name and s in trains]:
            del trains[src]
    return SimResult(readout, counts, spikes_at, saturated)
