"""An integer :class:`~lavaconv.ir.network.Network` as a lava-dl netx HDF5 file (lava-dl 0.6.0).

netx (``lava.lib.dl.netx.hdf5``) reads a chain of layers ``input``, ``conv``, ``flatten``,
``dense``; each ``conv``/``dense`` layer is one synapse plus a population of Lava ``LIF`` neurons
(``CUBA``; ``iDecay = 4096, vDecay = 0`` makes them integrate-and-fire). Per layer, with
``a`` the synaptic sum, netx computes (Lava 0.10 ``lava/proc/lif/models.py``, fixed point)

    v[t] = clip(v[t-1] + (a[t] << 6) + (bias_mant << 6), ±(2**23 - 1))
    s[t] = v[t] > vThMant << 6 ;  v[t] = 0 where s[t]

What is written: our integer weights as they are, and per layer the threshold and bias times
``k = 2**-a_exp``, so that netx's state is ``k`` times ours (netx has no dendritic exponent; our
``a_exp < -6`` floors the synaptic input and is refused). ``vThMant = ceil(k * vth_int / 64) - 1``:
every netx state is a multiple of 64, so netx's strict ``v > vThMant << 6`` is our
``v >= vth_int``. The readout is a layer whose threshold is the largest netx allows
(``2**17 - 1``); its ``v`` is ``k`` times our readout while it stays below ``2**23 - 64``.

Exact: hard-reset (``reset="zero"``) chains without biases, until a state saturates. Refused
with a :class:`LavaconvError` naming the first such layer: float networks, reset by subtraction
(netx has no such neuron), max-pool gates, several inputs (residual adds), per-neuron thresholds,
and whatever does not fit netx's fields. Only with ``approximate=True``: biases (netx adds them
from the first step, lavaconv from ``t_start``) and biases that are not a multiple of 64 / k
(rounded); each approximation is returned and stored in the file's ``approximations``.
"""

from __future__ import annotations

from math import ceil
from pathlib import Path

import h5py
import numpy as np

from lavaconv.errors import LavaconvError
from lavaconv.ir.network import IF, Conv, Input, MaxPool, Network, Readout, Synapse

FORMAT = "lavaconv-netx/1"
VTH_MANT_MAX = 2**17 - 1  # Lava LIF's unsigned 17-bit threshold mantissa
BIAS_MANT_MAX = 2**12 - 1  # signed 13-bit bias mantissa
DENSE_RANGE = (-256, 254)  # 8-bit mixed-sign Dense weights (lava.lib.dl.netx.utils)
MESSAGE_BITS_POISSON = 2  # signed ±1 spikes need a graded payload; a bool cast drops the sign


def _fail(name: str, why: str) -> LavaconvError:
    return LavaconvError(f"export --format netx: layer {name}: {why}")


def _string(group: h5py.Group, key: str, value: str) -> None:
    group.create_dataset(key, (1,), "S10", [value.encode("ascii")])


def _input_message_bits(node: Input) -> int:
    return node.payload_bits if node.encoding == "analog" else MESSAGE_BITS_POISSON


def _chain(net: Network) -> list[tuple[str, IF | Readout, Synapse]]:
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
        if isinstance(node, IF) and node.reset != "zero":
            raise _fail(name, "resets by subtraction; netx neurons (Lava LIF) reset to zero: "
                              "convert with --neuron if")
        if isinstance(node, IF) and np.any(node.v_init != 0):
            raise _fail(name, "starts at v_init != 0; netx has no initial potential: convert "
                              "with --v-init 0")
        layers.append((name, node, syns[0]))
        previous = name
    return layers


def _weight(name: str, node: IF | Readout, syn: Synapse) -> tuple[np.ndarray, float]:
    """Weights as netx stores them and the factor k by which netx's state exceeds ours."""
    if node.a_exp < -6:
        raise _fail(name, f"a_exp {node.a_exp} < -6 floors the synaptic input; netx cannot")
    weight = np.asarray(syn.weight)
    if not np.array_equal(weight, np.round(weight)):
        raise _fail(name, "non-integer weights: quantize the network first")
    if not isinstance(syn, Conv) and (weight.min() < DENSE_RANGE[0] or
                                      weight.max() > DENSE_RANGE[1]):
        raise _fail(name, f"weights span [{weight.min()}, {weight.max()}], outside netx's 8-bit "
                          f"dense range {list(DENSE_RANGE)}")
    return weight.astype(np.int64), 2.0 ** -node.a_exp


def _threshold(name: str, node: IF | Readout, k: float) -> int:
    if isinstance(node, Readout):
        return VTH_MANT_MAX
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


def _write_layer(group: h5py.Group, name: str, node: IF | Readout, syn: Synapse, k: float,
                 weight: np.ndarray, bias, vth_mant: int) -> None:
    _string(group, "type", "conv" if isinstance(syn, Conv) else "dense")
    group.create_dataset("shape", data=np.array(node.shape))
    group.create_dataset("weight", data=weight)
    if bias is not None:
        group.create_dataset("bias", data=bias)
    if isinstance(syn, Conv):
        group.create_dataset("stride", data=np.array(syn.stride))
        group.create_dataset("padding", data=np.array(syn.padding))
        group.create_dataset("dilation", data=np.array([1, 1]))
        group.create_dataset("groups", data=syn.groups)
    neuron = group.create_group("neuron")
    _string(neuron, "type", "CUBA")
    for key, value in (("iDecay", 4096), ("vDecay", 0), ("vThMant", vth_mant), ("refDelay", 1),
                       ("gradedSpike", False)):
        neuron.create_dataset(key, data=value)
    group.attrs["lavaconv_name"] = name
    group.attrs["lavaconv_v_scale"] = k  # netx state = k x lavaconv state


def export_netx(net: Network, path: str | Path, *, approximate: bool = False) -> list[str]:
    """Write the integer network as a netx HDF5 file; return the approximations made (none
    unless ``approximate``). Load it with ``hdf5.Network(path, input_message_bits=...)`` using
    the file's ``input_message_bits`` attribute (graded input: the payload's bits, or 2 for
    signed Poisson spikes)."""
    if net.is_sigma_delta:
        raise LavaconvError("export --format netx: sigma-delta networks are not exported yet "
                            "(their bias arrives as a pulse, netx's SDNN bias is constant); run "
                            "them with deploy (docs/sigma-delta.md)")
    if net.numeric != "int":
        raise LavaconvError("export --format netx: the network is a float network; netx holds "
                            "Loihi integers: quantize it first (a hardware profile)")
    inp = net.nodes[net.input_name]
    layers = _chain(net)
    notes: list[str] = []
    prepared = []
    for name, node, syn in layers:
        weight, k = _weight(name, node, syn)
        prepared.append((name, node, syn, k, weight, _bias(name, node, k, approximate, notes),
                         _threshold(name, node, k)))
    with h5py.File(path, "w") as f:
        f.attrs["lavaconv_format"] = FORMAT
        f.attrs["input_message_bits"] = _input_message_bits(inp)
        f.attrs["approximations"] = "; ".join(notes)
        first = f.create_group("layer/0")
        _string(first, "type", "input")
        first.create_dataset("shape", data=np.array(inp.shape))
        index = 1
        for name, node, syn, k, weight, bias, vth_mant in prepared:
            if not isinstance(syn, Conv) and len(net.nodes[syn.source].shape) > 1:
                _string(f.create_group(f"layer/{index}"), "type", "flatten")
                index += 1
            _write_layer(f.create_group(f"layer/{index}"), name, node, syn, k, weight, bias,
                         vth_mant)
            index += 1
    return notes
