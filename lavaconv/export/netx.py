"""An integer :class:`~lavaconv.ir.network.Network` as a lava-dl netx HDF5 file (lava-dl 0.6.0).

netx (``lava.lib.dl.netx.hdf5``) reads a chain of layers ``input``, ``conv``, ``flatten``,
``dense``, ``dense_rec``; each layer is one synapse (``dense_rec``: plus a recurrent one from
the layer's own spikes) and a population of stock Lava neurons. netx derives each dense
layer's weight exponent from the stored weights itself, so a dense layer computes exactly the
stored integer matrix or nothing exact (checked here by running netx's own weight pipeline).
Three forms are written, all exact against the integer engine where stated:

**Hard reset** (``reset="zero"``): ``CUBA`` LIF, ``iDecay = 4096, vDecay = 0`` (integrate and
fire). With ``a`` the synaptic sum (Lava 0.10 ``lava/proc/lif/models.py``, fixed point)

    v[t] = clip(v[t-1] + (a[t] << 6) + (bias_mant << 6), ±(2**23 - 1))
    s[t] = v[t] > vThMant << 6 ;  v[t] = 0 where s[t]

Our integer weights as they are, threshold and bias times ``k = 2**-a_exp`` (netx's state is
``k`` times ours; ``a_exp < -6`` floors the synaptic input and is refused). ``vThMant =
ceil(k * vth_int / 64) - 1``: every netx state is a multiple of 64, so netx's strict ``v >
vThMant << 6`` is our ``v >= vth_int``. The readout is a layer whose threshold is the largest
netx allows (``2**17 - 1``); its ``v`` is ``k`` times ours while below ``2**23 - 64``.
Biases only with ``approximate=True`` (netx adds them from the first step, lavaconv from
``t_start``; off netx's grid of 64 / k they are rounded), each stated in the notes.

**Stock soft reset** (``reset="lif"``, ``quantize(stock=True)``; docs/design.md section 7):
a ``dense_rec`` layer, ``CUBA`` LIF with ``iDecay = 1, vDecay = 4095`` (du = 0, dv = 4095: u
is the accumulator), feed-forward weights ``W << a_exp`` and the recurrent diagonal ``-M``
(``M = vth >> 6``) that subtracts the threshold one step after a spike, in one matrix (netx
gives both one exponent: exact when both fit its 8-bit grid; ``M <= 255`` at most). Biases
(which the stock form integrates in u; netx's LIF bias goes into v) go the stock way: a
clock unit, appended as each layer's last neuron, fires at every step from ``t_start - 1``
and adds ``bias >> 6`` through its recurrent column (:func:`_with_clocks`); a second one in
the last layer, a step later, carries the readout's bias. The readout (``Readout.lif``) is
the stock LIF integrator above with ``a_exp >= 0``. Refused: conv layers (netx has recurrent
weights for dense layers only), a readout ``a_exp < 0`` (the stock Dense floors each sum), a
bias that starts other than one step per layer. The floor neuron has no place in netx's chain
(its threshold is ``4 M``, netx has one per layer): a population quantized on netx's grid has
none (``IF.floor`` off; the engine and lavaconv's stock graph leave it out too, so the file
equals them exactly); one with a floor is written without it, exact while the floor never
fires (u above about ``-4 vth``), a condition stated in the notes.

``quantize(netx=True)`` puts the stock form on this grid (``a_exp = 0``, even ``M <= 252``,
weights and biases on the even 8-bit grid relative to ``M``, readout ``a_exp >= 0``, the
analog input's payload bits chosen on calibration items: ``M`` and the first weights share 8
bits); ``export --format netx`` of a float network does it itself. Measured on a digits MLP
64-48-32-10 (tests/test_export.py): ANN 96.49 %, engine on netx's grid 95.66 % at 32 steps
(4-bit input) against 96.66 % for ``quantize(stock=True)`` (0.4 points on average over three
trained nets); the file equals the engine spike for spike, though u falls to -16 thresholds
there (a floor neuron would have fired).

**Sigma-delta** (``--neuron sigma-delta``; docs/sigma-delta.md): populations ``SDNN`` layers
(netx: ``SigmaDelta``, ReLU, ``vThMant``; 16-bit messages: lava-dl 0.6.0 cannot read
``messageBits``), the readout ``sigma_output`` (``Sigma``). netx fixes ``state_exp = 6`` and
takes ``spike_exp`` at load (the file's ``spike_exp`` attribute: 0): exact for populations
with ``state_exp = 6, spike_exp = 0``, Dense weights as stored (``weight_exp = 0``: netx
derives the exponent from the stored integers; ``< 0`` floors). Biases: netx adds a layer's
``bias << 6`` to sigma at every step from step 0; ours is one pulse into sigma at ``t_start``,
the same sum from then on when ``t_start = 0`` (written as ``bias >> 6``; other ``t_start``
refused). netx's ``Sigma`` has no bias: the readout's arrives at step 1 (its ``t_start``) from a
pulse unit appended to the layer before, a neuron without inputs whose netx bias ``B`` sends
the message ``B`` once, at step 0, through a readout column ``bias / B``
(:func:`_with_pulse`). ``quantize_sigma_delta(netx=True)`` gives all of this (measured on the
digits MLP: 96.74 % at 12 steps, against 96.41 % for the default quantization). netx's input
layer takes no outside input (lava-dl 0.6.0's ``Input`` block feeds its neuron through its
bias only), so the file has none: feed it the input Delta's messages, the payload's change per
step ``p[t] - p[t-1]`` (``p[-1] = 0``; our encoder sends every change), as PilotNet SDNN does.
A dense first layer reads the input flattened in our (C, H, W) order.

Everything else is refused with a :class:`LavaconvError` naming the first layer: float
networks, reset by subtraction in our own neuron, max-pool gates, several inputs (residual
adds), synaptic delays, per-neuron thresholds, initial potentials, and whatever does not fit
netx's fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil
from pathlib import Path

import h5py
import numpy as np

from lavaconv.errors import LavaconvError
from lavaconv.ir.network import IF, Conv, Input, MaxPool, Network, Readout, SigmaDelta, Synapse

FORMAT = "lavaconv-netx/2"  # 2: notes (was approximations), spike_exp, dense_rec, SDNN
VTH_MANT_MAX = 2**17 - 1  # Lava LIF's unsigned 17-bit threshold mantissa
BIAS_MANT_MAX = 2**12 - 1  # signed 13-bit bias mantissa
MESSAGE_BITS_POISSON = 2  # signed ±1 spikes need a graded payload; a bool cast drops the sign
SDNN_STATE_EXP = 6  # netx builds every Delta / SigmaDelta with state_exp 6
SDNN_SPIKE_EXP = 0  # what the file asks hdf5.Network(spike_exp=...) for
SDNN_MESSAGE_BITS = 16  # netx's default: its NetDict reads no messageBits (not an array key)
CLOCK_UNITS = "lavaconv_clock_units"  # layer attribute: clock neurons after the population
PULSE_UNITS = "lavaconv_pulse_units"  # layer attribute: sigma-delta pulse units after it
GRID = ("netx's 8-bit dense grid (one exponent per layer, even values in [-256, 254] at full "
        "scale) does not hold them exactly: export the float network (convert's directory; "
        "export quantizes it on netx's grid), or quantize with netx=True")


@dataclass
class _Layer:
    """One netx layer as written: ``kind`` dense, dense_rec or conv; ``neuron`` its neuron
    group (strings, numbers, booleans)."""

    name: str
    syn: Synapse
    shape: tuple
    kind: str
    weight: np.ndarray
    neuron: dict
    bias: np.ndarray | None = None
    weight_rec: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)


def _fail(name: str, why: str) -> LavaconvError:
    return LavaconvError(f"export --format netx: layer {name}: {why}")


def _string(group: h5py.Group, key: str, value: str) -> None:
    group.create_dataset(key, (1,), "S10", [value.encode("ascii")])


def _input_message_bits(node: Input) -> int:
    if node.encoding == "delta":
        return node.payload_bits + 1  # a change of the payload
    return node.payload_bits if node.encoding == "analog" else MESSAGE_BITS_POISSON


def _chain(net: Network) -> list[tuple[str, IF | Readout | SigmaDelta, Synapse]]:
    """Populations in order with their single synapse; refuse anything but a chain."""
    layers = []
    previous = net.input_name
    for name, node in net.nodes.items():
        if isinstance(node, Input):
            continue
        if isinstance(node, MaxPool):
            raise _fail(name, "rate-gated max-pool has no netx layer; use average pooling")
        syns = net.inputs_of(name)
        if len(syns) != 1:
            raise _fail(name, f"{len(syns)} inputs (a residual add); netx layers form a chain")
        if syns[0].source != previous:
            raise _fail(name, f"reads {syns[0].source}, not the layer before it ({previous}); "
                              "netx layers form a chain")
        if syns[0].delay:
            raise _fail(name, "its synapse has a delay; convert without --align")
        if isinstance(node, IF) and np.any(node.v_init != 0):
            raise _fail(name, "starts at v_init != 0; netx has no initial potential: convert "
                              "with --v-init 0")
        layers.append((name, node, syns[0]))
        previous = name
    return layers


def _netx_exact(*parts: np.ndarray) -> bool:
    """Whether netx's own dense pipeline computes exactly the integer matrices ``parts`` of one
    layer: ``optimize_weight_bits`` on them side by side (one exponent and weight width), then
    each synapse's clip and truncation under its own sign mode (Lava's Dense decides it from
    its weights: a self-connection ``-M`` alone is inhibitory, clipped at -255)."""
    import lavaconv.lava  # noqa: F401  (first: Lava's import fixes; not at import time)
    # isort: split
    from lava.lib.dl.netx.utils import optimize_weight_bits
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

    joined = np.hstack(parts)
    if not joined.any() or joined.max() > 254 or joined.min() < -256:
        return False  # netx clips (with a printed warning) or divides by zero
    stored, bits, exp, _ = optimize_weight_bits(joined.astype(np.int64))
    start = 0
    for part in parts:
        mine = stored[:, start:start + part.shape[1]]
        start += part.shape[1]
        sign = determine_sign_mode(mine)
        kept = truncate_weights(clip_weights(mine, sign, num_bits=8), sign, bits)
        if not np.array_equal(kept * 2.0**exp, part):
            return False
    return True


def _weight(name: str, syn: Synapse, weight: np.ndarray) -> np.ndarray:
    """``weight`` as netx stores it, checked exact (a Conv stores any integer)."""
    if not np.array_equal(weight, np.round(weight)):
        raise _fail(name, "non-integer weights: quantize the network first")
    if not isinstance(syn, Conv) and not _netx_exact(weight):
        raise _fail(name, f"weights span [{weight.min():g}, {weight.max():g}]; {GRID}")
    return np.asarray(weight).astype(np.int64)


def _scaled_threshold(name: str, node: IF, k: float) -> int:
    vth = np.unique(node.v_threshold)
    if vth.size != 1:
        raise _fail(name, "per-neuron thresholds; netx has one vThMant per layer")
    mant = ceil(int(vth[0]) * k / 64) - 1
    if not 0 <= mant <= VTH_MANT_MAX:
        raise _fail(name, f"threshold {int(vth[0])} x 2**{-node.a_exp} needs vThMant {mant}, "
                          f"outside [0, {VTH_MANT_MAX}]")
    return mant


def _bias(name: str, node: IF | Readout, k: float, approximate: bool, notes: list[str]):
    """Bias mantissas (netx adds ``bias << 6``), per channel where constant over space."""
    bias = np.asarray(node.bias, dtype=np.float64) * k
    if not bias.any():
        return None
    if not approximate:
        raise _fail(name, f"has a bias; netx adds it from the first step, lavaconv from step "
                          f"t_start = {node.t_start}: export with approximate=True to accept")
    notes.append(f"{name}: bias flows from step 0 instead of t_start = {node.t_start}")
    mant = np.round(bias / 64).astype(np.int64)
    if np.any(mant * 64 != bias):
        error = float(np.abs(mant * 64 - bias).max() / k)
        notes.append(f"{name}: bias rounded to netx's grid (error up to {error:g} of {name}'s "
                     "integer state units)")
    if np.abs(mant).max() > BIAS_MANT_MAX:
        raise _fail(name, f"bias mantissa {int(np.abs(mant).max())} exceeds 13 bits")
    full = np.broadcast_to(mant, node.shape)
    if len(node.shape) == 3 and np.all(full == full[:, :1, :1]):
        return full[:, 0, 0]
    return full.transpose(2, 1, 0) if len(node.shape) == 3 else full  # netx maps are (W, H, C)


def _cuba(i_decay: int, v_decay: int, vth_mant: int) -> dict:
    return {"type": "CUBA", "iDecay": i_decay, "vDecay": v_decay, "vThMant": vth_mant,
            "refDelay": 1, "gradedSpike": False}


def _clock_columns(name: str, node: IF | Readout, clocks: int, position: int) -> np.ndarray:
    """The weights from the previous layer's clock units: zero, but for a stock readout after
    two clock units, whose second fires from step ``position - 1``: its column carries the
    readout's bias (``bias * k >> 6`` a step from ``t_start`` on, as the engine's)."""
    rows = int(np.prod(node.shape))
    columns = np.zeros((rows, clocks), np.int64)
    if clocks < 2:
        return columns
    if node.t_start != position:
        raise _fail(name, f"its bias starts at t_start = {node.t_start}; the clock chain of "
                          f"netx's layers reaches layer {position} at step {position}")
    bias = np.broadcast_to(np.asarray(node.bias), node.shape).reshape(rows) * 2.0**-node.a_exp
    if np.any(bias % 64):
        raise _fail(name, "bias x 2**-a_exp is not a multiple of 64: netx's LIF bias flows "
                          "from step 0; only a clock unit's weight (bias >> 6) starts later")
    columns[:, -1] = bias.astype(np.int64) >> 6
    return columns


def _lif_layer(name: str, node: IF | Readout, syn: Synapse, approximate: bool,
               notes: list[str], clocks: np.ndarray) -> _Layer:
    """Hard-reset IF population or readout: a stock LIF integrator, state ``k`` times ours;
    ``clocks``: the weights from the previous layer's clock units (:func:`_clock_columns`)."""
    if isinstance(node, IF) and node.reset != "zero":
        raise _fail(name, "resets by subtraction in lavaconv's own neuron; netx's LIF resets "
                          "to zero: convert with --neuron if, or quantize with stock=True "
                          "(the stock soft-reset form)")
    floors = isinstance(node, Readout) and node.lif
    if node.a_exp < (0 if floors else -6):
        why = ("the stock readout's Dense floors each synaptic sum" if floors else
               "floors the synaptic input")
        raise _fail(name, f"a_exp {node.a_exp} {why}; netx cannot: export the float network "
                          "(export quantizes it on netx's grid), or quantize with netx=True")
    k = 2.0 ** -node.a_exp
    vth = VTH_MANT_MAX if isinstance(node, Readout) else _scaled_threshold(name, node, k)
    weight = np.asarray(syn.weight)
    if clocks.size:
        weight = np.hstack([weight, clocks])
    bias = None if clocks.any() else _bias(name, node, k, approximate, notes)
    return _Layer(name, syn, tuple(node.shape), "conv" if isinstance(syn, Conv) else "dense",
                  _weight(name, syn, weight), _cuba(4096, 0, vth), bias,
                  attrs={"lavaconv_v_scale": k})


def _with_clocks(name: str, node: IF, feed: np.ndarray, rec: np.ndarray, mant: int,
                 position: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``feed``, ``rec`` and the LIF bias with ``count`` clock units appended as the layer's
    last neurons; the first one's recurrent column adds ``bias >> 6`` to a_in one step after it
    fires. The first layer's first clock fires at every step from step 0 on its LIF bias
    (``M + 1`` into v, no input); any other is a soft-reset neuron of the layer driven by the
    clock before it (the previous layer's, or the layer's own) with an even ``c > M``, so it
    fires at every step from one step after that one (u grows by ``(c - M) << 6`` a step until
    the leak holds it near ``(c - M) << 18``, below the wrap). Layer ``position``'s bias thus
    flows from step ``position`` on, the engine's ``t_start`` in a chain; a second clock fires
    from ``position`` on, for the readout's bias."""
    bias = np.broadcast_to(np.asarray(node.bias), node.shape).reshape(-1).astype(np.int64)
    if np.any(bias % 64):
        raise _fail(name, "bias is not a multiple of 64 (the stock grid): quantize with "
                          "stock=True")
    if bias.any() and node.t_start != position:
        raise _fail(name, f"its bias starts at t_start = {node.t_start}; the clock chain of "
                          f"netx's layers reaches layer {position} at step {position}")
    n, first = len(rec), position == 1
    drive = 2 * (mant // 2 + 1)
    extra = 0 if first else 1  # the clock of the layer before
    wide = np.zeros((n + count, feed.shape[1] + extra), np.int64)
    wide[:n, :feed.shape[1]] = feed
    wide[n, -1] = 0 if first else drive
    loop = np.zeros((n + count, n + count), np.int64)
    loop[:n, :n] = rec
    loop[:n, n] = bias >> 6
    loop[n, n] = 0 if first else -mant
    for j in range(n + 1, n + count):
        loop[j, j - 1], loop[j, j] = drive, -mant
    lif_bias = np.zeros(n + count, np.int64)
    lif_bias[n] = mant + 1
    return wide, loop, lif_bias if first else None


def _stock_layer(name: str, node: IF, syn: Synapse, notes: list[str], position: int,
                 clocks: int) -> _Layer:
    """The stock soft-reset population (docs/design.md section 7) as a ``dense_rec`` layer,
    the ``position``-th of the chain, with ``clocks`` clock units for the biases."""
    if isinstance(syn, Conv):
        raise _fail(name, "the stock soft reset needs a self-connection; netx has recurrent "
                          "weights for dense layers only (dense_rec), not conv")
    vth = np.unique(node.v_threshold)
    if vth.size != 1 or vth[0] % 64 or node.a_exp < 0:
        raise _fail(name, "not the stock form (one threshold, a multiple of 64, a_exp >= 0): "
                          "quantize with stock=True")
    mant = int(vth[0]) >> 6
    feed = np.asarray(syn.weight).astype(np.int64) << node.a_exp
    rec = -mant * np.eye(int(np.prod(node.shape)), dtype=np.int64)
    lif_bias = None
    if clocks:
        feed, rec, lif_bias = _with_clocks(name, node, feed, rec, mant, position, clocks)
        notes.append(f"{name}: its last {clocks} neuron(s) are clock units carrying biases")
    if not _netx_exact(feed, rec):
        raise _fail(name, f"weights << a_exp {node.a_exp} span [{feed.min()}, {feed.max()}] "
                          f"and the recurrent ones (self-connection -{mant}, threshold / 64) "
                          f"[{rec.min()}, {rec.max()}], in one dense_rec matrix: {GRID}")
    if node.floor:
        notes.append(f"{name}: no floor neuron (netx has no place for it): exact while it "
                     "would not fire, i.e. while u stays above -4 vth")
    return _Layer(name, syn, (len(rec),), "dense_rec", feed, _cuba(1, 4095, mant),
                  bias=lif_bias, weight_rec=rec, attrs={CLOCK_UNITS: clocks})


def _sdnn_neuron(name: str, node: SigmaDelta | Readout) -> dict:
    """netx's SDNN neuron group: ``SigmaDelta`` (ReLU) for a population, ``Sigma`` for the
    readout."""
    if not isinstance(node, SigmaDelta):
        return {"type": "SDNN", "activation": "relu", "sigma_output": True}
    if (node.state_exp, node.spike_exp) != (SDNN_STATE_EXP, SDNN_SPIKE_EXP):
        raise _fail(name, f"state_exp {node.state_exp}, spike_exp {node.spike_exp}: netx builds "
                          f"every SigmaDelta with state_exp {SDNN_STATE_EXP} and one spike_exp "
                          "(lavaconv's quantizer uses 7, 0 unless netx=True): export the float "
                          "network (export quantizes it on netx's grid), or run it with deploy "
                          "(the stock sigma-delta graph)")
    vth = float(node.v_threshold)
    if vth % 2**SDNN_STATE_EXP:
        raise _fail(name, f"threshold {vth:g} is not a multiple of 2**{SDNN_STATE_EXP} (netx's "
                          "vThMant << state_exp)")
    if node.message_bits > SDNN_MESSAGE_BITS:
        raise _fail(name, f"messages of {node.message_bits} bits; netx's SDNN layers send "
                          f"{SDNN_MESSAGE_BITS}-bit messages (lava-dl 0.6.0 cannot read "
                          "messageBits)")
    return {"type": "SDNN", "activation": "relu", "vThMant": int(vth) >> SDNN_STATE_EXP}


def _sdnn_bias(name: str, node: SigmaDelta) -> np.ndarray | None:
    """A population's bias as netx's SDNN bias, which netx scales by ``2**state_exp`` and adds
    to sigma at every step from step 0: exact for ours (one pulse into sigma at ``t_start``)
    when it flows from step 0 (``quantize_sigma_delta(netx=True)``)."""
    bias = np.broadcast_to(np.asarray(node.bias), node.shape)
    if not bias.any():
        return None
    if node.t_start != 0:
        raise _fail(name, f"has a bias from t_start = {node.t_start}; netx's SDNN bias flows "
                          "from step 0: quantize with quantize_sigma_delta(netx=True) (biases "
                          "from step 0), or run it with deploy")
    if np.any(bias % 2**SDNN_STATE_EXP):
        raise _fail(name, f"bias is not a multiple of 2**{SDNN_STATE_EXP} (netx scales the "
                          "file's bias by 2**state_exp)")
    mant = (bias // 2**SDNN_STATE_EXP).astype(np.int64)
    if len(node.shape) == 3 and np.all(mant == mant[:, :1, :1]):
        return mant[:, 0, 0]
    return mant.transpose(2, 1, 0) if len(node.shape) == 3 else mant  # netx maps: (W, H, C)


def _sdnn_layer(name: str, node: SigmaDelta | Readout, syn: Synapse) -> _Layer:
    """A sigma-delta population (netx ``SigmaDelta``) or the readout (netx ``Sigma``; its bias
    is added by :func:`_with_pulse`)."""
    exp = 0 if isinstance(syn, Conv) else int(syn.weight_exp)
    if exp < 0:
        raise _fail(name, f"weight_exp {exp} floors each synaptic sum; netx's dense layers "
                          "have no weight exponent")
    weight = np.asarray(syn.weight).astype(np.int64) << exp
    kind = "conv" if isinstance(syn, Conv) else "dense"
    if isinstance(node, Readout):
        return _Layer(name, syn, tuple(node.shape), kind, weight, _sdnn_neuron(name, node))
    return _Layer(name, syn, tuple(node.shape), kind, _weight(name, syn, weight),
                  _sdnn_neuron(name, node), _sdnn_bias(name, node))


def _with_pulse(name: str, node: Readout, top: _Layer, before: _Layer | None,
                notes: list[str]) -> None:
    """The readout's bias: a pulse unit appended to the layer ``before`` (a SigmaDelta neuron
    without inputs whose netx bias ``B`` sends the message ``B`` once, at step 0) and a column
    ``bias / B`` in the readout's weights: the bias arrives at step 1, ours at ``t_start``."""
    bias = np.broadcast_to(np.asarray(node.bias), node.shape).reshape(-1)
    if not bias.any():
        top.weight = _weight(name, top.syn, top.weight)
        return
    if before is None or before.kind != "dense" or top.kind != "dense" or \
            before.neuron.get("sigma_output") or node.t_start != 1:
        raise _fail(name, f"has a bias (ours: one pulse into sigma at t_start = "
                          f"{node.t_start}); netx's Sigma has none: a pulse unit in a dense "
                          "SigmaDelta layer before it carries it from step 1: quantize with "
                          "quantize_sigma_delta(netx=True)")
    from lavaconv.quantize.sigma_delta import pulse_message

    exp = int(top.syn.weight_exp)
    message = pulse_message(before.neuron["vThMant"], float(np.abs(bias).max()), exp)
    if np.any(bias % (message << exp)):
        raise _fail(name, f"bias is not a multiple of the pulse unit's message {message} << "
                          f"weight_exp {exp}: quantize with quantize_sigma_delta(netx=True)")
    n = len(before.weight)
    before.weight = np.vstack([before.weight, np.zeros((1, before.weight.shape[1]), np.int64)])
    before.bias = np.append(np.zeros(n, np.int64) if before.bias is None else before.bias,
                            message)
    before.shape = (n + 1,)
    before.attrs[PULSE_UNITS] = 1
    column = (bias // message).astype(np.int64).reshape(-1, 1)
    top.weight = _weight(name, top.syn, np.hstack([top.weight, column]))
    notes.append(f"{before.name}: its last neuron is a pulse unit carrying {name}'s bias")


def _sdnn_input(inp: Input) -> None:
    """netx's input layer cannot take outside input (lava-dl 0.6.0's ``Input`` block feeds its
    neuron only through its bias), so the file's first layer reads the input Delta's messages
    themselves; they are the payload's change per step when every change is sent."""
    if inp.delta_threshold > 2**inp.state_exp:
        raise _fail("input", f"the Delta encoder's threshold {inp.delta_threshold:g} holds back "
                             "small changes; netx's input layer cannot encode outside input, so "
                             "the file takes the change of the payload: quantize with "
                             "quantize_sigma_delta (threshold 1, every change sent)")


def _write_group(group: h5py.Group, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, str):
            _string(group, key, value)
        else:
            group.create_dataset(key, data=value)


def _write_layer(group: h5py.Group, layer: _Layer) -> None:
    _string(group, "type", layer.kind)
    group.create_dataset("shape", data=np.array(layer.shape))
    group.create_dataset("weight", data=layer.weight)
    for key in ("weight_rec", "bias"):
        if getattr(layer, key) is not None:
            group.create_dataset(key, data=getattr(layer, key))
    if isinstance(layer.syn, Conv):
        group.create_dataset("stride", data=np.array(layer.syn.stride))
        group.create_dataset("padding", data=np.array(layer.syn.padding))
        group.create_dataset("dilation", data=np.array([1, 1]))
        group.create_dataset("groups", data=layer.syn.groups)
    _write_group(group.create_group("neuron"), layer.neuron)
    group.attrs["lavaconv_name"] = layer.name
    for key, value in layer.attrs.items():
        group.attrs[key] = value  # lavaconv_v_scale: netx state = k x lavaconv state


def _clock_plan(net: Network, chain: list) -> dict[str, int]:
    """Clock units per stock population: none without biases; otherwise one each, and two in
    the last one when a stock readout after it has a bias."""
    stock = [n for n, node, _ in chain if isinstance(node, IF) and node.reset == "lif"]
    top = net.nodes[chain[-1][0]]
    readout_bias = isinstance(top, Readout) and top.lif and bool(np.any(top.bias != 0))
    if not stock or not (readout_bias or any(np.any(net.nodes[n].bias != 0) for n in stock)):
        return {}
    for name, _, _ in chain[:-1]:
        if name not in stock:
            raise _fail(name, "not in the stock form, but the chain's biases need a clock unit "
                              "in every population before them: quantize with stock=True")
    return {n: 1 + (readout_bias and n == chain[-2][0]) for n in stock}


def _layers(net: Network, approximate: bool, notes: list[str]) -> list[_Layer]:
    chain = _chain(net)
    plan = _clock_plan(net, chain)
    layers: list[_Layer] = []
    for name, node, syn in chain:
        position = len(layers) + 1
        if net.is_sigma_delta:
            layers.append(_sdnn_layer(name, node, syn))
            if isinstance(node, Readout):
                _with_pulse(name, node, layers[-1], layers[-2] if len(layers) > 1 else None,
                            notes)
        elif isinstance(node, IF) and node.reset == "lif":
            layers.append(_stock_layer(name, node, syn, notes, position, plan.get(name, 0)))
        else:
            clocks = layers[-1].attrs.get(CLOCK_UNITS, 0) if layers else 0
            layers.append(_lif_layer(name, node, syn, approximate, notes,
                                     _clock_columns(name, node, clocks, position)))
    return layers


def export_netx(net: Network, path: str | Path, *, approximate: bool = False) -> list[str]:
    """Write the integer network as a netx HDF5 file; return its notes: the approximations
    made (only with ``approximate``) and the conditions of exactness (stock soft-reset layers:
    no floor neuron). Load it with ``hdf5.Network(path, input_message_bits=...,
    spike_exp=...)`` from the file's attributes of those names; a sigma-delta file takes the
    change of the payload per step."""
    if net.numeric != "int":
        raise LavaconvError("export --format netx: the network is a float network; netx holds "
                            "Loihi integers: quantize it first (a hardware profile)")
    inp = net.nodes[net.input_name]
    if net.is_sigma_delta:
        _sdnn_input(inp)
    notes: list[str] = []
    layers = _layers(net, approximate, notes)
    with h5py.File(path, "w") as f:
        f.attrs["lavaconv_format"] = FORMAT
        f.attrs["input_message_bits"] = _input_message_bits(inp)
        f.attrs["spike_exp"] = SDNN_SPIKE_EXP
        f.attrs["notes"] = "; ".join(notes)
        first = f.create_group("layer/0")
        _string(first, "type", "input")
        first.create_dataset("shape", data=np.array(inp.shape))
        index = 1
        for layer in layers:
            if not isinstance(layer.syn, Conv) and len(net.nodes[layer.syn.source].shape) > 1:
                _string(f.create_group(f"layer/{index}"), "type", "flatten")
                index += 1
            _write_layer(f.create_group(f"layer/{index}"), layer)
            index += 1
    return notes
