"""Reset by subtraction from stock Lava parts: the grids and the exact arithmetic.

A spiking population with reset ``'lif'`` is deployed as Lava's stock ``LIF`` (``du = 0``,
``dv = 4095``, ``bias_mant = 0``, ``u`` = the item's initial potential) plus stock synapses: its
incoming ``Dense`` (``weight_exp = a_exp``) or ``Conv`` (weights ``<< a_exp``), a ``Sparse``
self-connection of weight ``-w_s`` (``w_s << e_s = vth_mant``) that subtracts the threshold
from ``u`` one step after a spike, before the next threshold check, and ``Sparse`` bias terms fed
by always-on clock ``LIF`` units (LIF's own bias goes into ``v``, which this construction
recomputes every step). ``PyLifModelBitAcc`` then computes, per neuron (docs/design.md §7):

    A[t] = sum_e (W_e s_e[t-1] << a_exp) + b64 [t >= t_start] - (vth >> 6) s[t-1]
    u[t] = wrap24(L(u[t-1]) + (A[t] << 6)),    L(x) = sgn(x) ((|x| 4095) >> 12),  u[-1] = v_init
    v[t] = clip(C(v[t-1]) + u[t], +-(2**23 - 1)), C(x) = sgn(x) (|x| >> 12),       v[-1] = 0
    s[t] = v[t] > vth;  v[t] = 0 where s[t]

(``ds_offset = 1`` makes ``du = 0`` a decay of 1/4096; ``dv`` has 12 bits, so ``v`` keeps
1/4096 of itself.) A readout with ``lif`` set is a stock ``LIF`` with ``du = 4095``, ``dv = 0``
(an exact integrator), its own bias from step 0 and ``v[-1] = -t_start * bias`` (equal to ours
from ``t_start`` on), ``vth = 2**17 - 1``: ``v`` saturates at ``+-(2**23 - 1)`` and resets to 0
above ``(2**17 - 1) << 6``. This module has no Lava import: the engine uses it too.
"""

from __future__ import annotations

import numpy as np
import torch

from lavaconv.network import IF, MaxPool, Network, Readout

V_LIMIT = 2**23 - 1  # LIF clips v to +-V_LIMIT
U_HALF = 2**23  # LIF wraps u into (-2**23, 2**23]
READOUT_VTH = 2**17 - 1  # the readout LIF's threshold mantissa (the largest: 17 bits)
SIGNIFICANT_BITS = 7  # a threshold mantissa is (even 8-bit weight) << exponent
BIAS_TERMS = 2  # Sparse bias synapses per population (hi, lo)


def self_weight(vth_mant: int) -> tuple[int, int]:
    """``(w, e)`` with ``w`` even, ``2 <= w <= 254`` and ``w * 2**e == vth_mant`` (``e >= -1``):
    the self-connection ``Sparse(-w, weight_exp=e)``; raises ValueError if there is none."""
    m = int(vth_mant)
    for e in range(-1, 24):
        if e >= 0 and m % (1 << e):
            break
        w = 2 * m if e < 0 else m >> e
        if w % 2 == 0 and w <= 254:
            return w, e
    raise ValueError(f"threshold mantissa {m} is not an even 8-bit weight times a power of 2")


def round_threshold(vth_mant: int) -> int:
    """The largest threshold mantissa <= ``vth_mant`` that :func:`self_weight` can express."""
    m = int(vth_mant)
    k = max(0, m.bit_length() - SIGNIFICANT_BITS)
    return (m >> k) << k


def bias_terms(bias: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """Bias in units of 64 (what ``u`` gets per step, ``>> 6``) as Sparse terms ``(w, e)``: even
    weights in [-254, 254] with ``weight_exp e >= -1``, ``sum w * 2**e`` nearest to ``bias``
    (hi, then lo for the remainder). Exact for values on :func:`round_bias`'s grid."""
    b = np.asarray(bias, dtype=np.float64)
    top = float(np.abs(b).max(initial=0))
    if top == 0:
        return []
    e_hi = max(-1, int(np.ceil(np.log2(top / 254))))
    terms = []
    rest = b
    for e in (e_hi, max(-1, e_hi - 7))[:BIAS_TERMS]:
        w = 2 * np.round(rest / 2.0 ** (e + 1))
        terms.append((w.astype(np.int64), e))
        rest = rest - w * 2.0**e
        if e == -1 or not np.any(rest):
            break
    return [(w, e) for w, e in terms if np.any(w)]


def terms_value(terms: list[tuple[np.ndarray, int]], shape) -> np.ndarray:
    """``sum w * 2**e`` of :func:`bias_terms` (int64, exact: ``w`` is even)."""
    total = np.zeros(shape, np.int64)
    for w, e in terms:
        total = total + (w << e if e >= 0 else w >> -e)
    return total


def round_bias(bias_float: np.ndarray) -> np.ndarray:
    """A population's bias (state units) on the stock grid: ``64 *`` a value of the Sparse bias
    terms (int64)."""
    b64 = np.asarray(bias_float, dtype=np.float64) / 64
    return terms_value(bias_terms(b64), b64.shape) << 6


def obstacles(net: Network, weights: str = "layer", graph: bool = True) -> list[str]:
    """Why ``net`` (float or int) cannot be the stock LIF graph: one line per option, naming
    it and the stock alternative; empty when it can. ``graph=False``: only what the stock
    neuron itself excludes (the engine can still run it next to a max-pool gate)."""
    found: dict[str, str] = {}
    neuron = {"zero": "if", "snm": "snm"}
    for name, node in net.nodes.items():
        if isinstance(node, MaxPool) and graph:
            found.setdefault("maxpool", f"layer {name}: max-pool needs lavaconv's MaxPoolGate "
                             "process (no stock construction for spike trains); use an average "
                             "pool or a strided convolution in the model")
        elif isinstance(node, IF):
            if node.reset in neuron:
                found.setdefault("neuron", f"--neuron {neuron[node.reset]}: needs lavaconv's "
                                 "IFNeuron process; use --neuron rmp (stock LIF soft reset)")
            if node.burst > 1:
                found.setdefault("burst", "--burst: graded burst spikes need lavaconv's "
                                 "IFNeuron process; use --burst 1")
            if not np.all(node.payload == 1) or np.ptp(node.v_threshold) > 0:
                found.setdefault("norm", "--norm ...:neuron: graded spikes need lavaconv's "
                                 "IFNeuron process; use --norm pQ or pQ:channel")
        elif isinstance(node, Readout) and node.mode != "potential" and graph:
            found.setdefault("readout", f"--readout {node.mode}: needs lavaconv's Readout "
                             "process; use --readout potential (v of a stock LIF)")
    if graph and any(s.delay for s in net.synapses):
        found["align"] = ("--align: synaptic delays need lavaconv's Delay process; "
                          "use the default timing (no --align)")
    if weights != "layer":
        found["weights"] = ("--weights channel: the stock LIF graph has one threshold per "
                            "population; use --weights layer")
    return list(found.values())


def option_obstacles(neuron: str = "rmp", burst: int = 1, readout: str = "potential",
                     align: bool = False, weights: str = "layer", norm: str = "") -> list[str]:
    """:func:`obstacles` from the command line's options alone (before any conversion)."""
    found = []
    if neuron != "rmp":
        found.append(f"--neuron {neuron}: needs lavaconv's IFNeuron process; use --neuron rmp "
                     "(stock LIF soft reset)")
    if burst > 1:
        found.append("--burst: graded burst spikes need lavaconv's IFNeuron process; use "
                     "--burst 1")
    if norm.endswith(":neuron"):
        found.append("--norm ...:neuron: graded spikes need lavaconv's IFNeuron process; use "
                     "--norm pQ or pQ:channel")
    if readout != "potential":
        found.append(f"--readout {readout}: needs lavaconv's Readout process; use --readout "
                     "potential (v of a stock LIF)")
    if align:
        found.append("--align: synaptic delays need lavaconv's Delay process; use the default "
                     "timing (no --align)")
    if weights != "layer":
        found.append("--weights channel: the stock LIF graph has one threshold per population; "
                     "use --weights layer")
    return found


def floors(net: Network, x: np.ndarray, timesteps: int, batch: int = 16) -> dict[str, float]:
    """Largest |potential| (in thresholds, as a negative number) of every IF population of the
    float ``net`` on the items ``x`` over ``timesteps`` steps: the stock LIF's u wraps instead
    of saturating, so the quantizer keeps ``|floor| * vth`` inside the 24-bit state."""
    from lavaconv.engine import encode_input, simulate

    low = {n: 0.0 for n, node in net.nodes.items() if isinstance(node, IF)}

    def probe(name: str, current: torch.Tensor, train: torch.Tensor) -> None:
        v0 = torch.as_tensor(np.asarray(net.nodes[name].v_init, dtype=np.float32))
        v = torch.cumsum(current, 0).sub_(torch.cumsum(train, 0)).add_(v0)
        low[name] = min(low[name], float(v.min()), -float(v.max()))

    for i in range(0, len(x), batch):
        simulate(net, encode_input(net, x[i:i + batch], timesteps), probe=probe)
    return low


# ----- the arithmetic of PyLifModelBitAcc on int64 tensors -----

def leak(u: torch.Tensor) -> torch.Tensor:
    """``sgn(u) * ((|u| * 4095) >> 12)``: du = 0 with Loihi's ds_offset of 1."""
    return torch.sign(u) * torch.div(u.abs() * 4095, 4096, rounding_mode="floor")


def carry(v: torch.Tensor) -> torch.Tensor:
    """``sgn(v) * (|v| >> 12)``: dv = 4095."""
    return torch.sign(v) * torch.div(v.abs(), 4096, rounding_mode="floor")


def wrap_u(u: torch.Tensor) -> torch.Tensor:
    """LIF's wrap of u: above 2**23 subtract 2**24, at or below -2**23 add 2**24 (in place)."""
    u.sub_(u.gt(U_HALF).to(u.dtype) * (2 * U_HALF))
    u.add_(u.le(-U_HALF).to(u.dtype) * (2 * U_HALF))
    return u


def lif_integrate_and_fire(current, steps: int, theta: torch.Tensor, u_init: torch.Tensor,
                           out: torch.Tensor) -> int:
    """The stock soft-reset neuron for ``steps`` steps; ``current(t)`` is ``A[t] << 6`` without
    the self-connection (int64). Writes s[t] (0/1) into ``out[t]``; returns the neuron-steps
    whose u wrapped or v saturated."""
    u = u_init.clone()
    v = torch.zeros_like(u)
    s = torch.zeros_like(u, dtype=torch.bool)
    clipped = 0
    for t in range(steps):
        x = current(t) - theta * s
        u = leak(u).add_(x)
        clipped += int(torch.count_nonzero(u.gt(U_HALF) | u.le(-U_HALF)))
        wrap_u(u)
        v = carry(v).add_(u)
        clipped += int(torch.count_nonzero(v.abs() > V_LIMIT))
        v.clamp_(-V_LIMIT, V_LIMIT)
        s = v > theta
        v.masked_fill_(s, 0)
        out[t] = s
    return clipped


def lif_readout(x: torch.Tensor, bias: torch.Tensor, t_start: int) -> tuple[torch.Tensor, int]:
    """v[t] (all t) of a readout LIF receiving ``x[t] = A[t] << 6`` (int64, (T, B, n)) and its
    own ``bias`` every step from ``v[-1] = -t_start * bias``; and the neuron-steps clipped or
    reset."""
    x = x.clone()
    bad = x.gt(U_HALF) | x.le(-U_HALF)
    clipped = int(torch.count_nonzero(bad))
    if clipped:
        wrap_u(x)
    x.add_(bias)
    v = torch.cumsum(x, 0) - t_start * bias
    limit = READOUT_VTH << 6
    if v.min() >= -V_LIMIT and v.max() <= limit:
        return v, clipped
    state = torch.zeros_like(x[0]) - t_start * bias
    for t in range(len(x)):
        state.add_(x[t])
        clipped += int(torch.count_nonzero((state.abs() > V_LIMIT) | (state > limit)))
        state.clamp_(-V_LIMIT, V_LIMIT)
        state.masked_fill_(state > limit, 0)
        v[t] = state
    return v, clipped
