"""Float sigma-delta network -> integer network on a profile's formats (docs/sigma-delta.md).

Every node P gets a state scale ``A_P`` (state units per unit of its lambda) and sends messages
in units of ``M_P = A_P / 2**state_exp`` (the input: its payload units). A synapse S -> P gets
``W_int = W * A_P / M_S`` (Conv: even integers in [-256, 254], Lava's Conv has no exponent;
Dense: ``W * A_P / M_S * 2**k`` on the same grid with ``weight_exp = -k``, so that the avg-pooled
readout keeps 8-bit weights). ``A_P`` is the largest power of two that keeps the largest
|sigma| seen on calibration items ``headroom_bits`` below the state bound and every Conv weight
on the grid; ``state_exp`` is Lava's largest (7, its 3-bit field), the coarsest message grid
and so the largest weights. Thresholds ``vth = round(theta * A_P / 2**st) << st`` (Lava's
``vth << (spike_exp + state_exp)`` with spike_exp 0), bias pulses ``round(b * A_P)``, plus
``2**(st - 1)`` for a sigma-delta unit (``round_messages``): Lava 0.10 floors every message
(``s >> st``) and drops the bits, so a unit's first message, which is its whole activation,
would lose half a message unit on average; with the offset it is rounded to the nearest unit.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from lavaconv.errors import LavaconvError
from lavaconv.ir.fixedpoint import Formats
from lavaconv.ir.network import Conv, Dense, Input, Network, Readout, SigmaDelta
from lavaconv.quantize.integer import LayerQuant, _rel_error
from lavaconv.sim import sigma_delta as engine
from lavaconv.sim.engine import encode_input

STATE_EXP_MAX = 7  # Lava's SigmaDelta state_exp is a 3-bit field
NETX_STATE_EXP = 6  # netx builds every SigmaDelta with state_exp 6
NETX_MESSAGE_BITS = 16  # and sends 16-bit messages (lava-dl 0.6.0 reads no messageBits)
WEIGHT_MAX = 254  # Lava's 8-bit mixed-sign grid: even values in [-256, 254]
DENSE_HEADROOM_BITS = 30  # int32 dense sums: keep (pre-activation * A * 2**k) below 2**30


def pulse_message(vth_mant: int, bias_max: float, weight_exp: int) -> int:
    """The message of netx's pulse unit (:mod:`lavaconv.export.netx`): a SigmaDelta neuron
    without inputs whose netx bias sends it once, at step 0, to carry the readout's bias
    through an even weight of at most 254 (``<< weight_exp``): at least the layer's threshold
    mantissa (so that it fires), more where the bias needs it."""
    return max(int(vth_mant), 1, math.ceil(bias_max / (WEIGHT_MAX << weight_exp)))


def _netx_biases(q: Network, name: str, node: SigmaDelta | Readout) -> None:
    """netx's biases (``quantize_sigma_delta(netx=True)``): a population's flows from step 0
    (``t_start = 0``; netx adds it to sigma at every step from step 0, where ours is one pulse
    into sigma, the same from then on) in multiples of ``2**state_exp`` (netx scales the file's
    bias by that); the readout's (netx's Sigma has none) arrives at step 1 as the message
    ``B`` of a pulse unit in the layer before times an even weight ``c`` (``<< weight_exp``)."""
    bias = np.asarray(node.bias, dtype=np.float64)
    if isinstance(node, SigmaDelta):
        node.t_start = 0
        node.bias = np.asarray(np.round(bias / 2**NETX_STATE_EXP) * 2**NETX_STATE_EXP)
        return
    syns = q.inputs_of(name)
    if not bias.any() or len(syns) != 1 or not isinstance(syns[0], Dense) or \
            not isinstance(q.nodes[syns[0].source], SigmaDelta):
        return  # export refuses what it cannot write
    prev, e = q.nodes[syns[0].source], int(syns[0].weight_exp)
    unit = pulse_message(int(prev.v_threshold) >> NETX_STATE_EXP,
                         float(np.abs(bias).max()), e) << e
    node.bias = np.asarray(np.clip(2 * np.round(bias / unit / 2), -256, WEIGHT_MAX) * unit)
    node.t_start = 1


def measure_ranges(net: Network, x: np.ndarray, steps: int, batch: int = 64
                   ) -> dict[str, dict[str, float]]:
    """Largest |sigma|, |synaptic sum| and |message| per node over items ``x``."""
    out: dict[str, dict[str, float]] = {}
    for start in range(0, len(x), batch):
        r: dict[str, dict[str, float]] = {}
        engine.simulate(net, encode_input(net, x[start:start + batch], steps), ranges=r)
        for name, v in r.items():
            old = out.setdefault(name, dict.fromkeys(v, 0.0))
            for k, val in v.items():
                old[k] = max(old[k], val)
    return out


def _pow2_floor(x: float) -> float:
    return 2.0 ** math.floor(math.log2(x))


def _grid(w: np.ndarray) -> np.ndarray:
    return np.clip(2 * np.round(w / 2), -256, WEIGHT_MAX)


def _balanced_scales(net: Network, ranges: dict[str, dict[str, float]], cap: float,
                     input_unit: float, state_exp: int = STATE_EXP_MAX,
                     fixed: tuple[type, ...] = (Conv,)) -> dict[str, int]:
    """log2 A_P per node: every Conv weight on the grid (``|W| A_P / M_S <= 254``), every state
    below ``cap``, and among those the scales whose Conv weights use the grid best (maximin:
    the worst-used synapse first, then the next; greedy steps of one bit). A residual join
    needs this: its sources' scales pull against each other, and the plain per-layer maximum
    leaves one of its synapses a few levels."""
    names = [n for n, v in net.nodes.items() if not isinstance(v, Input)]
    top = {n: math.floor(math.log2(cap / max(ranges[n]["state"], 1e-9))) for n in names}
    convs = [(s.source, s.target, math.log2(float(np.abs(s.weight).max())))
             for s in net.synapses if isinstance(s, fixed) and np.abs(s.weight).max() > 0]
    limit = math.log2(WEIGHT_MAX)

    def use(a: dict[str, int]) -> list[float] | None:
        out = []
        for src, dst, w in convs:
            m = math.log2(input_unit) if src == net.input_name else a[src] - state_exp
            u = w + a[dst] - m
            if u > limit + 1e-9:
                return None
            out.append(u)
        return sorted(out)

    a = dict(top)
    while use(a) is None:  # the plain choice: largest scales, lowered where a weight overflows
        for s, d, w in convs:
            m = math.log2(input_unit) if s == net.input_name else a[s] - state_exp
            if w + a[d] - m > limit + 1e-9:
                a[d] -= 1
    best = use(a)
    for _ in range(400):
        moves = [(n, d) for n in names for d in (-1, 1) if a[n] + d <= top[n]]
        found = None
        for n, d in moves:
            a[n] += d
            u = use(a)
            if u is not None and u > best:
                found, best_u = (n, d), u
            a[n] -= d
            if found:
                break
        if not found:
            break
        a[found[0]] += found[1]
        best = best_u
    return a


def quantize_sigma_delta(net: Network, formats: Formats, x_calib: np.ndarray, *,
                         items: int = 256, headroom_bits: int = 1, netx: bool = False,
                         round_messages: bool = True) -> tuple[Network, list[LayerQuant]]:
    """Integer copy of float sigma-delta network ``net``; ranges measured on ``x_calib``.
    ``netx``: on the grid lava-dl netx builds (:mod:`lavaconv.export.netx`): ``state_exp``
    :data:`NETX_STATE_EXP` (netx fixes it), Dense ``weight_exp = 0`` with the weights on the
    8-bit grid like a Conv's (netx derives a dense layer's exponent from the stored integers,
    so a stored ``W << e`` beyond it is clipped, and a negative one would floor), messages of
    at most 16 bits, and biases netx holds exactly (:func:`_netx_biases`).
    ``round_messages`` (not with ``netx``, whose biases flow every step): each sigma-delta
    unit's bias pulse carries half a message unit (``2**(state_exp - 1)``), so that its first
    message is rounded, not floored."""
    state_exp = NETX_STATE_EXP if netx else STATE_EXP_MAX
    netx_bits = [NETX_MESSAGE_BITS] if netx else []
    round_messages = round_messages and not netx
    if net.numeric != "float" or not net.is_sigma_delta:
        raise LavaconvError("quantize_sigma_delta takes a float sigma-delta network")
    steps = net.meta.get("depth", net.depth()) + 2
    ranges = measure_ranges(net, x_calib[:items], steps)
    q = copy.deepcopy(net)
    q.numeric = "int"
    inp = q.nodes[q.input_name]
    x_max = inp.x_max if inp.x_max is not None else float(np.abs(x_calib).max())
    # non-negative input (pixels): the unsigned grid, one level per 8-bit pixel value
    unsigned = bool(np.min(x_calib[:items]) >= 0)
    inp.payload_bits = formats.input_payload_bits + unsigned
    inp.gain = (2 ** (inp.payload_bits - 1) - 1) / max(x_max / inp.scale, 1e-12)
    inp.state_exp, inp.delta_threshold = 0, 1.0  # every change of the payload is sent: exact
    cap = 2.0 ** (formats.state_bits - 1 - headroom_bits)
    scale: dict[str, float] = {q.input_name: inp.gain * inp.scale}  # A_P
    unit: dict[str, float] = {q.input_name: inp.gain * inp.scale}  # M_P
    levels = _balanced_scales(q, ranges, cap, inp.gain * inp.scale, state_exp,
                              (Conv, Dense) if netx else (Conv,))
    for name, node in q.nodes.items():
        if isinstance(node, Input):
            continue
        scale[name] = 2.0 ** levels[name]
        if isinstance(node, SigmaDelta):
            node.state_exp = state_exp
            unit[name] = scale[name] / 2**state_exp
    report = []
    max_k = DENSE_HEADROOM_BITS - (formats.state_bits - 1 - headroom_bits)
    for syn in q.synapses:
        w = syn.weight * scale[syn.target] / unit[syn.source]
        if isinstance(syn, Dense):
            top = float(np.abs(w).max())
            k = math.floor(math.log2(WEIGHT_MAX / top)) if top > 0 else 0
            k = int(np.clip(k, -formats.weight_exp_max, min(-formats.weight_exp_min, max_k)))
            k = 0 if netx else k  # the scales above keep netx's weights on the grid
            syn.weight_exp = -k
            w = w * 2.0**k
        syn.weight = _grid(w)
    for name, node in q.nodes.items():
        if isinstance(node, Input):
            continue
        a = scale[name]
        bias = np.asarray(node.bias, dtype=np.float64)
        node.bias = np.asarray(np.round(bias * a))
        bias_error = _rel_error(bias * a, node.bias)
        weights = [s for s in q.synapses if s.target == name]
        floats = [s for s in net.synapses if s.target == name]
        exact = np.concatenate([f.weight.ravel() * scale[name] / unit[f.source] for f in floats])
        approx = np.concatenate([s.weight.ravel() * 2.0 ** getattr(s, "weight_exp", 0)
                                 for s in weights])
        vth = 0
        if isinstance(node, SigmaDelta):
            shift = node.state_exp + node.spike_exp
            vth = max(round(node.v_threshold * a / 2**shift), 1) << shift
            node.v_threshold = float(vth)
            if round_messages and node.state_exp > 0:
                node.bias = np.asarray(node.bias + 2.0 ** (node.state_exp - 1))
            node.state_bits = formats.state_bits
            need = ranges[name]["message"] * unit[name] * 2 + 1  # twice the calibration peak
            node.message_bits = int(min(formats.graded_payload_bits, *netx_bits,
                                        max(math.ceil(math.log2(need)) + 1, 2)))
        elif isinstance(node, Readout):
            node.state_bits = formats.state_bits
        if netx:
            _netx_biases(q, name, node)
        report.append(LayerQuant(name, vth, getattr(node, "state_exp", 0),
                                 _rel_error(exact, approx), bias_error,
                                 0))
    checked: dict[str, dict[str, float]] = {}
    engine.simulate(q, encode_input(q, x_calib[:items], steps), ranges=checked)
    bad = set(engine.within_bounds(q, checked))
    for lq in report:
        lq.saturated = 1.0 if lq.name in bad else 0.0
    q.meta.update(profile_formats={"state_exp": state_exp, "headroom_bits": headroom_bits,
                                   "round_messages": round_messages},
                  **({"grid": "netx"} if netx else {}),
                  sd_scales={k: v for k, v in scale.items()})
    return q, report
