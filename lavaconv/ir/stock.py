"""Reset by subtraction from stock Lava parts: the grids and the exact arithmetic.

A spiking population with reset ``'lif'`` is deployed as Lava's stock ``LIF`` (``du = 0``,
``dv = 4095``, ``bias_mant = 0``, ``u`` = the item's initial potential) plus stock synapses: its
incoming ``Dense`` (``weight_exp = a_exp``) or ``Conv`` (weights ``<< a_exp``), a ``Sparse``
self-connection of weight ``-w_s`` (``w_s << e_s = vth_mant``) that subtracts the threshold
from ``u`` one step after a spike, before the next threshold check, and ``Sparse`` bias terms fed
by always-on clock ``LIF`` units (LIF's own bias goes into ``v``, which this construction
recomputes every step), and a floor neuron (below). ``PyLifModelBitAcc`` then computes, per
neuron (docs/design.md section 7):

    A[t] = sum_e (W_e s_e[t-1] << a_exp) + b64 [t >= t_start] - (vth >> 6) s[t-1]
    u[t] = wrap24(L(u[t-1]) + (A[t] << 6)),    L(x) = sgn(x) ((|x| 4095) >> 12),  u[-1] = v_init
    v[t] = clip(C(v[t-1]) + u[t], +-(2**23 - 1)), C(x) = sgn(x) (|x| >> 12),       v[-1] = 0
    s[t] = v[t] > vth;  v[t] = 0 where s[t]

(``ds_offset = 1`` makes ``du = 0`` a decay of 1/4096; ``dv`` has 12 bits, so ``v`` keeps
1/4096 of itself.) u wraps where ours saturates, so an inhibited neuron would fall through
-2**23 and fire: a floor neuron (the same LIF, threshold ``FLOOR * vth``, every input mirrored,
so its u is -u) fires when u < -FLOOR * vth and lifts u by ``FLOOR * vth`` through a Sparse
diagonal; ``A[t]`` gets ``+ FLOOR * (vth >> 6) * s_floor[t-1]``. A readout with ``lif`` set
is a stock ``LIF`` with ``du = 4095``, ``dv = 0``
(an exact integrator), its own bias from step 0 and ``v[-1] = -t_start * bias`` (equal to ours
from ``t_start`` on), ``vth = 2**17 - 1``: ``v`` saturates at ``+-(2**23 - 1)`` and resets to 0
above ``(2**17 - 1) << 6``. Here: the grids and what
excludes the construction; the arithmetic is in :mod:`lavaconv.sim.lif`.
"""

from __future__ import annotations

import numpy as np

from lavaconv.ir.network import IF, MaxPool, Network, Readout

V_LIMIT = 2**23 - 1  # LIF clips v to +-V_LIMIT
U_HALF = 2**23  # LIF wraps u into (-2**23, 2**23]
READOUT_VTH = 2**17 - 1  # the readout LIF's threshold mantissa (the largest: 17 bits)
SIGNIFICANT_BITS = 7  # a threshold mantissa is (even 8-bit weight) << exponent
BIAS_TERMS = 2  # Sparse bias synapses per population (hi, lo)
FLOOR = 4  # the floor neuron's threshold in thresholds: u is lifted by FLOOR * vth below that
NETX_M_MAX = 252  # netx dense_rec: -M and a clock unit's drive M + 2 on the even 8-bit grid


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



def netx_threshold(vth_mant: int) -> int:
    """The largest threshold mantissa <= ``vth_mant`` on netx's ``dense_rec`` grid: even, at
    most :data:`NETX_M_MAX` (the self-connection ``-M`` and a clock unit's drive ``M + 2``
    share the layer's 8-bit weights, :mod:`lavaconv.export.netx`); at least 2."""
    return max(2, min(int(vth_mant), NETX_M_MAX) & ~1)


def netx_bias(bias_float: np.ndarray, a_exp: int, step: int = 2) -> np.ndarray:
    """A bias (state units) on netx's grid: ``bias * 2**-a_exp`` is ``64 *`` a multiple of
    ``step`` (a weight of the clock unit's column, ``>> 6``, even on the 8-bit grid) (int64)."""
    unit = 64 * step * 2**a_exp
    return (np.round(np.asarray(bias_float, dtype=np.float64) / unit) * unit).astype(np.int64)


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



def maxpool_obstacle(layer: str) -> str:
    """Why max-pool ``layer`` (a gate) keeps a network off the stock graph, and the way on."""
    return (f"layer {layer}: max-pool needs lavaconv's MaxPoolGate process; use --maxpool relu "
            "(two layers of stock LIF units per 2x2 window, a rate approximation)")


def obstacles(net: Network, weights: str = "layer", graph: bool = True) -> list[str]:
    """Why ``net`` (float or int) cannot be the stock LIF graph: one line per option, naming
    it and the stock alternative; empty when it can. ``graph=False``: only what the stock
    neuron itself excludes (the engine can still run it next to a max-pool gate)."""
    found: dict[str, str] = {}
    neuron = {"zero": "if", "snm": "snm"}
    for name, node in net.nodes.items():
        if isinstance(node, MaxPool) and graph:
            found.setdefault("maxpool", maxpool_obstacle(name))
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
    if neuron == "sigma-delta":  # Lava's stock SigmaDelta processes (lavaconv.lava.sdn)
        return found
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
