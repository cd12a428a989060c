"""Float network → integer network on a hardware profile's fixed-point grid.

Per target population, with ``W_unit`` the float contribution of one payload unit of each
incoming synapse, the integer weights, threshold and dendritic exponent satisfy
``W_int * 2**(6 + a_exp) = W_unit * vth_int`` (``vth_int = vth_mant << 6``), so the integer
network computes the float one scaled by ``vth_int`` (docs/design.md section 3). ``vth_mant``
takes as many bits as the 24-bit state allows with ``headroom_bits`` of room above threshold;
weights use the profile's signed mantissa (step 2 on Lava's 8-bit Dense grid, |m| <= 127).

A population with per-neuron thresholds (neuron-wise normalisation) sends graded spikes: its
float payload ``P`` (= its relative threshold, SNM eq. 6) becomes ``ceil(P * G)`` on a grid of
``G = (2**(b-1) - 1) / max P`` with ``b = min(graded_payload_bits, input_payload_bits)``, and
its threshold is put on the same grid, so a spike still subtracts exactly what it sends. The grid
is made coarser where a target's weight exponent would otherwise fall below the profile's range.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

from lavaconv.errors import LavaconvError
from lavaconv.ir.fixedpoint import Formats
from lavaconv.ir.network import IF, MaxPool, Network, Readout
from lavaconv.ir.stock import netx_bias, netx_threshold, obstacles, round_bias, round_threshold

WEIGHT_SCALES = ("layer", "channel")
CHANNEL_SPREAD_BITS = 8  # most a channel's weight scale may exceed the layer's smallest by


@dataclass
class LayerQuant:
    """What quantization cost one population."""

    name: str
    vth_int: int
    a_exp: int
    weight_rel_error: float
    bias_rel_error: float
    bias_exp: int
    saturated: float = 0.0  # fraction of neuron-steps whose state hit the 24-bit bound


def _rel_error(exact: np.ndarray, approx: np.ndarray) -> float:
    norm = float(np.linalg.norm(exact))
    return float(np.linalg.norm(approx - exact)) / norm if norm > 0 else 0.0


def quantize(
    net: Network,
    formats: Formats,
    *,
    timesteps: int,
    input_max: float | None = None,
    headroom_bits: int = 3,
    weight_scale: str = "layer",
    stock: bool = False,
    netx: bool = False,
    x_calib: np.ndarray | None = None,
    input_bits: int | None = None,
) -> tuple[Network, list[LayerQuant]]:
    """Integer copy of ``net``; ``timesteps`` bounds the readout's accumulated state,
    ``input_max`` is max |x| over calibration data (the analog gain; default the input node's
    ``x_max``). ``weight_scale='channel'`` gives every output channel of a spiking population
    its own threshold mantissa, so that each channel's incoming weights span the whole weight
    grid (per-channel weight quantization; a readout keeps one scale, which its argmax needs).
    ``stock``: the grids of the stock LIF graph (:mod:`lavaconv.ir.stock`): reset 'subtract'
    becomes 'lif', populations get ``a_exp >= 0`` and threshold mantissas of 7 significant bits,
    biases on the Sparse-term grid, the readout is a ``lif`` one; a population's threshold
    leaves one more headroom bit (room below the floor neuron's lift of ``FLOOR * vth``).
    ``netx`` (implies ``stock``): the stock form on the grid of lava-dl netx's ``dense_rec``
    layers (:mod:`lavaconv.export.netx`), where the feed-forward weights, the self-connection
    ``-M`` and the bias columns ``bias >> 6`` share one 8-bit weight grid and exponent:
    populations get ``a_exp = 0`` and an even threshold mantissa ``M <= NETX_M_MAX`` (its
    weights and biases, in thresholds, quantized relative to it: even values of at most 254),
    biases ``64 *`` an even integer; the readout ``a_exp >= 0`` and its bias (times
    ``2**-a_exp``) ``64 *`` an even integer, so that nothing floors; populations have no
    floor neuron (``IF.floor`` off: netx has no place for it, and with ``M <= 252`` u wraps
    only some 520 thresholds down); an analog input gets the payload bits that make the first
    synaptic sums most exact, and among it and its neighbours the one whose readout is nearest
    the float network's on ``x_calib`` where given (:func:`_netx_input`), or ``input_bits``."""
    stock = stock or netx
    if stock and obstacles(net, weight_scale, graph=False):
        raise LavaconvError(obstacles(net, weight_scale, graph=False)[0])
    if weight_scale not in WEIGHT_SCALES:
        raise LavaconvError(f"--weights {weight_scale!r}: expected one of "
                            f"{', '.join(WEIGHT_SCALES)}")
    if net.numeric != "float":
        raise ValueError("quantize expects a float network")
    out = copy.deepcopy(net)
    out.numeric = "int"
    inp = out.nodes[out.input_name]
    unit = {name: 1.0 for name in out.nodes}
    if inp.encoding == "analog":
        input_max = inp.x_max if input_max is None else input_max
        if input_max is None:
            raise LavaconvError("the network's input has no calibration maximum (x_max): "
                                "convert it again, or give input_max")
        inp.payload_bits = formats.input_payload_bits
        inp.gain = (2 ** (formats.input_payload_bits - 1) - 1) / max(input_max / inp.scale, 1e-12)
        unit[out.input_name] = 1.0 / inp.gain
    if netx and inp.encoding == "analog":
        if input_bits is None:
            input_bits = _netx_input(net, formats, input_max, headroom_bits, timesteps, x_calib)
        if not 2 <= input_bits <= formats.input_payload_bits:
            raise LavaconvError(f"input_bits {input_bits}: expected 2 to the profile's "
                                f"{formats.input_payload_bits} input payload bits")
        inp.payload_bits = input_bits
        inp.gain = (2 ** (input_bits - 1) - 1) / max(input_max / inp.scale, 1e-12)
        unit[out.input_name] = 1.0 / inp.gain
    _check_graded(out, formats)
    shift = formats.threshold_shift
    step = 2 ** (9 - formats.weight_bits)  # Lava keeps 8 stored bits; mixed sign drops the rest
    m_max = 2 ** (formats.weight_bits - 1) - 1
    levels = _payload_levels(out, formats, unit, headroom_bits, timesteps)
    report = []
    for name, node in out.nodes.items():
        if isinstance(node, MaxPool):
            unit[name] = unit[node.source]
        if not isinstance(node, (IF, Readout)):
            continue
        syns = out.inputs_of(name)
        w_unit = [s.weight * unit[s.source] for s in syns]
        spiking = isinstance(node, IF)
        per_channel = spiking and weight_scale == "channel"
        w_max = _row_max(w_unit, node.shape if per_channel else None)
        if netx:  # the bias column shares the weights' grid: bias (in thresholds) <= w_max
            w_max = np.maximum(w_max, float(np.abs(node.bias).max(initial=0)))
        r_max = step * m_max / w_max  # largest vth_mant * 2**-e keeping |W_int| in range
        # channels with far smaller weights than the rest do not take the others' threshold bits
        r_max = np.minimum(r_max, r_max.min() * 2.0**CHANNEL_SPREAD_BITS)
        theta = _relative_thresholds(node, levels.get(name)) if spiking else np.ones(())
        cap = _cap(node, formats, headroom_bits + (stock and spiking), timesteps)
        exp = int(np.clip(math.floor(math.log2(cap / float(r_max.max()))),
                          max(formats.weight_exp_min, 0) if stock and spiking
                          else formats.weight_exp_min, formats.weight_exp_max))
        if netx:  # netx's dense_rec: W and -M on one grid; its readout has no exponent
            exp = 0 if spiking else max(exp, 0)
        vth_mant = np.minimum(np.floor(r_max * 2.0**exp), cap).astype(np.int64)
        if netx and spiking:
            vth_mant = np.asarray(netx_threshold(int(vth_mant)), dtype=np.int64)
        elif stock and spiking:
            vth_mant = np.asarray(round_threshold(int(vth_mant)), dtype=np.int64)
        if vth_mant.min() < 1:
            raise LavaconvError(
                f"layer {name}: threshold underflows the {formats.threshold_mant_bits}-bit grid "
                f"(weights up to {1 / r_max.min() * step * m_max:.3g} per threshold); use a "
                "larger weight_exp range")
        ratio = vth_mant * 2.0**-exp  # per output channel (a scalar array: one per layer)
        errors = []
        for syn, w in zip(syns, w_unit, strict=True):
            rows = ratio.reshape(-1, *[1] * (w.ndim - 1)) if ratio.ndim else ratio
            w_int = step * np.round(w * rows / step)
            errors.append((w * rows, w_int))
            syn.weight = w_int.astype(np.int64)
        if per_channel:  # (C, 1, 1) against (C, H, W) maps
            vth_mant = node.per_channel(vth_mant)
        vth_int = vth_mant << shift
        bias_float = node.bias * vth_int
        bias_exp = 0
        bias_lim = 2 ** (formats.bias_mant_bits - 1) - 1
        while np.abs(np.round(bias_float / 2**bias_exp)).max(initial=0) > bias_lim:
            bias_exp += 1
        if bias_exp > formats.bias_exp_max:
            raise LavaconvError(f"layer {name}: bias {np.abs(node.bias).max():.3g} x threshold "
                                "exceeds the profile's bias range")
        bias_int = (np.round(bias_float / 2**bias_exp) * 2**bias_exp).astype(np.int64)
        if netx:
            bias_int = netx_bias(bias_float, exp, step)
        elif stock and spiking:
            bias_int = round_bias(bias_float)
        node.bias = bias_int
        node.a_exp = exp
        node.state_bits = formats.state_bits
        if stock:
            if spiking:
                node.reset = "lif"
                node.floor = not netx  # netx has no place for it; M <= 252: far from the wrap
            else:
                node.lif = node.mode == "potential"
        if spiking:
            node.v_init = np.round(vth_int * node.v_init).astype(np.int64)
            node.v_threshold = (np.round(vth_mant * theta).astype(np.int64) << shift)
            unit[name] = _graded(node, levels.get(name))
        else:
            node.v_threshold = np.asarray(vth_int, dtype=np.int64).reshape(())
        exact = np.concatenate([e.ravel() for e, _ in errors])
        approx = np.concatenate([a.ravel() for _, a in errors])
        report.append(LayerQuant(name, int(vth_int.max()), exp, _rel_error(exact, approx),
                                 _rel_error(bias_float, bias_int.astype(float)), bias_exp))
    out.meta = {**net.meta, "formats": formats.__dict__, "headroom_bits": headroom_bits,
                **({"graph": "stock"} if stock else {}), **({"grid": "netx"} if netx else {})}
    return out, report


def _netx_input(net: Network, formats: Formats, input_max: float, headroom_bits: int,
                timesteps: int, x_calib: np.ndarray | None) -> int:
    """The analog input's payload bits for netx's grid (float ``net``): the first populations'
    weights and threshold ``M <= NETX_M_MAX`` share 8 bits, so a fine payload leaves each
    weight per payload unit a few levels, a coarse one rounds the input. Of ``b = 2 ..
    input_payload_bits`` the one with the smallest error of the first synaptic sums in
    thresholds (RMS over neurons, the worst target; expected: per neuron ``sum_i e_i**2 p**2 +
    W_i**2 / 12``, ``e`` a weight's rounding error, ``p`` half the largest payload, the payload's
    own rounding uniform); with ``x_calib`` (up to 256 items), of it and its two neighbours the
    one whose readout after ``timesteps`` steps is nearest the float network's (relative RMS;
    the sums' error alone picked 3 bits on digits where 4 was better in two of three nets)."""
    inp = net.nodes[net.input_name]
    targets = [(s, net.nodes[s.target]) for s in net.synapses if s.source == net.input_name]
    top_bits = formats.input_payload_bits
    best = None
    for bits in range(2, top_bits + 1):
        levels = 2 ** (bits - 1) - 1
        gain = levels / max(input_max / inp.scale, 1e-12)
        err = 0.0
        for syn, node in targets:
            w = np.asarray(syn.weight, dtype=np.float64).reshape(len(syn.weight), -1) / gain
            top = max(float(np.abs(w).max()), float(np.abs(node.bias).max(initial=0))) or 1.0
            cap = _cap(node, formats, headroom_bits + 1, timesteps)
            mant = netx_threshold(min(254 / top, cap)) if isinstance(node, IF) else \
                min(254 / top, cap)
            w_int = 2 * np.round(w * mant / 2)
            rows = ((w_int - w * mant) ** 2 * (levels / 2) ** 2 + w_int**2 / 12).sum(axis=1)
            err = max(err, float(np.sqrt(rows.mean())) / mant)
        if best is None or err < best[0]:
            best = (err, bits)
    if x_calib is None:
        return best[1]
    from lavaconv.sim.engine import encode_input, simulate

    x = np.asarray(x_calib[:256])
    ref = simulate(net, encode_input(net, x, timesteps)).readout[timesteps].double()
    scores = []
    for bits in (best[1], best[1] - 1, best[1] + 1):
        if 2 <= bits <= top_bits:
            q, _ = quantize(net, formats, timesteps=timesteps, input_max=input_max,
                            headroom_bits=headroom_bits, netx=True, input_bits=bits)
            got = simulate(q, encode_input(q, x, timesteps)).readout[timesteps].double()
            got = got / float(q.nodes[q.output_name].v_threshold)
            scores.append((float((got - ref).norm() / max(float(ref.norm()), 1e-12)), bits))
    return min(scores)[1]


def _row_max(weights: list[np.ndarray], shape: tuple[int, ...] | None) -> np.ndarray:
    """Largest |weight| into the population (a 0-d array), or into each output channel
    (``shape`` given: one per row of every synapse; a channel without weights gets the
    largest)."""
    if shape is None:
        return np.asarray(max(float(np.abs(w).max()) for w in weights) or 1.0)
    rows = np.zeros(shape[0])
    for w in weights:
        rows = np.maximum(rows, np.abs(w).reshape(len(w), -1).max(axis=1))
    return np.where(rows > 0, rows, rows.max() or 1.0)


def _check_graded(net: Network, formats: Formats) -> None:
    """Refuse populations that send more than binary spikes (graded payloads, bursts, signed
    spikes) on a profile without graded spikes."""
    if formats.graded_payload_bits > 0:
        return
    for name, node in net.nodes.items():
        if isinstance(node, IF) and not net.is_binary(name):
            raise LavaconvError(f"layer {name}: sends graded or signed spikes (SNM neuron, "
                                "burst or neuron-wise norm), but the profile has binary spikes "
                                "only (graded_payload_bits 0)")


def _cap(node: IF | Readout, formats: Formats, headroom_bits: int, timesteps: int) -> int:
    """Largest threshold mantissa: ``headroom`` bits (more for a burst neuron) of the state
    above the largest threshold (a readout: room to accumulate ``timesteps`` steps), and the
    bias (in thresholds) times the threshold within the bias range."""
    spiking = isinstance(node, IF)
    # a burst neuron may hold up to ``burst`` thresholds before it fires them all
    headroom = (headroom_bits + (node.burst - 1).bit_length() if spiking
                else math.ceil(math.log2(2 * timesteps)))
    top = max(1.0, float(np.max(node.v_threshold))) if spiking else 1.0
    half_state = 2 ** (formats.state_bits - 1)
    cap = min(2 ** formats.threshold_mant_bits - 1,
              math.floor(half_state / (2 ** (formats.threshold_shift + headroom) * top)))
    bias = float(np.abs(node.bias).max(initial=0))  # bias * vth_int must fit mant << exp_max
    bias_max = (2 ** (formats.bias_mant_bits - 1) - 1) * 2**formats.bias_exp_max
    limit = bias_max / (bias * 2**formats.threshold_shift) if bias > 0 else math.inf
    if limit < cap:  # a subnormal bias gives an infinite limit: no constraint
        cap = math.floor(limit)
    return max(cap, 1)


def _graded_source(net: Network, name: str) -> str | None:
    """The population whose graded payload grid a synapse from ``name`` carries, if any."""
    src = net.sender(name)
    node = net.nodes[src]
    return src if isinstance(node, IF) and np.any(node.payload != 1) else None


def _payload_levels(net: Network, formats: Formats, unit: dict[str, float],
                    headroom_bits: int, timesteps: int) -> dict[str, int]:
    """Largest integer payload of every graded population: ``2**(b-1) - 1`` with
    ``b = min(graded_payload_bits, input_payload_bits)``, divided by 2 for every step a target's
    weight exponent would fall below ``weight_exp_min`` (fine payloads make each payload unit
    worth less, so the target's weights need a smaller exponent); 1 makes the spikes binary."""
    bits = min(formats.graded_payload_bits, formats.input_payload_bits)
    levels = {n: 2 ** (bits - 1) - 1 for n in net.nodes if _graded_source(net, n) == n}
    step_max = 2 ** (9 - formats.weight_bits) * (2 ** (formats.weight_bits - 1) - 1)
    for name, node in net.nodes.items():
        if not isinstance(node, (IF, Readout)):
            continue
        cap = _cap(node, formats, headroom_bits, timesteps)
        for syn in net.inputs_of(name):
            src = _graded_source(net, syn.source)
            if src is None:
                continue
            top = float(np.max(net.nodes[src].payload))
            w_max = float(np.abs(syn.weight).max()) * top / levels[src] or 1.0
            ideal = math.floor(math.log2(cap * w_max / step_max))
            if ideal < formats.weight_exp_min:
                levels[src] = max(1, levels[src] >> (formats.weight_exp_min - ideal))
    return levels


def _payload_grid(node: IF, levels: int | None) -> float:
    """Graded payload units per unit of float payload (1 for binary spikes)."""
    if levels is None:
        return 1.0
    return levels / float(np.max(node.payload))


def _relative_thresholds(node: IF, levels: int | None) -> np.ndarray:
    """Float thresholds, put on the payload grid where a spike is worth its threshold."""
    grid = _payload_grid(node, levels)
    if levels is None or not np.array_equal(
            np.broadcast_to(node.v_threshold, node.payload.shape), node.payload):
        return node.v_threshold
    return np.maximum(np.ceil(node.payload * grid), 1) / grid


def _graded(node: IF, levels: int | None) -> float:
    """Set the integer payload of ``node``; return the float value of one payload unit."""
    grid = _payload_grid(node, levels)
    if levels is not None:
        node.payload = np.maximum(np.ceil(node.payload * grid), 1).astype(np.int64)
    return 1.0 / grid
