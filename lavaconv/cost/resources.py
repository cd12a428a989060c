"""Resource estimate of an integer network against a neuromorphic profile's structure.

Conservative model, stated in every report: a population's neurons are spread over cores of
``neurons_per_core``; each core stores every synapse of its neurons unshared (no convolutional
weight sharing), ``weight_bits`` each; a core accepts at most ``max_fan_in_axons_per_core``
distinct input axons. The core count of a population is the largest of the three demands.
"""

from __future__ import annotations

import math

import numpy as np

from lavaconv.ir.network import IF, Conv, Network, Readout, SigmaDelta
from lavaconv.ir.stock import bias_terms

ASSUMPTIONS = ("unshared synapses (no conv weight sharing), weight_bits per synapse, neurons "
               "spread evenly over cores, input axons per core bounded by the fan-in limit; "
               "stock LIF graph: a floor neuron per neuron with mirrored inputs, four "
               "diagonal synapses and the bias terms twice per neuron, one clock axon per "
               "core, the clock neurons themselves not counted")


def _fan_in(syn) -> int:
    """Synapses per target neuron."""
    w = syn.weight
    return int(np.prod(w.shape[1:])) if isinstance(syn, Conv) else int(w.shape[1])


def _axons_per_core(syn, src_shape, neurons_in_core: int, tgt_shape) -> int:
    """Distinct source neurons feeding ``neurons_in_core`` consecutive target neurons."""
    src = int(np.prod(src_shape))
    if not isinstance(syn, Conv):
        return src
    # a core holding a block of rows of every channel sees the matching rows of the input
    rows = max(1, math.ceil(neurons_in_core / (tgt_shape[0] * tgt_shape[2])))
    kh = syn.weight.shape[2]
    in_rows = min(src_shape[1], rows * syn.stride[0] + kh - 1)
    return src_shape[0] * in_rows * src_shape[2]


def estimate(net: Network, profile) -> dict:
    """Cores per layer, chips, synaptic memory, and which limit binds."""
    st = profile.structure
    weight_bits = profile.formats.weight_bits
    layers = []
    for name, node in net.nodes.items():
        if not isinstance(node, (IF, Readout, SigmaDelta)):
            continue
        neurons = int(np.prod(node.shape))
        syns = net.inputs_of(name)
        synapses = sum(neurons * _fan_in(s) for s in syns)
        extra = _stock_synapses(node, neurons, synapses)  # stock LIF graph: floor neuron etc.
        floor = extra and node.floor
        if floor:
            neurons *= 2  # each neuron's floor neuron
        synapses += extra
        mem = math.ceil(synapses * weight_bits / 8)
        cores = max(math.ceil(neurons / st.neurons_per_core),
                    math.ceil(mem / st.synaptic_memory_bytes_per_core))
        per_core = math.ceil(neurons / cores)
        axons = sum(_axons_per_core(s, net.nodes[s.source].shape, per_core, node.shape)
                    for s in syns)
        if extra:  # the floor's mirrored inputs share the axons; own and floor spikes; clock
            axons += (2 if floor else 1) * per_core + 1
        if axons > st.max_fan_in_axons_per_core:
            cores = max(cores, math.ceil(neurons * axons / st.max_fan_in_axons_per_core / per_core))
        layers.append({"name": name, "neurons": neurons, "synapses": synapses,
                       "stock_synapses": extra,
                       "synaptic_memory_bytes": mem, "input_axons_per_core": axons,
                       "cores": cores})
    total = sum(layer["cores"] for layer in layers)
    chips = math.ceil(total / st.cores_per_chip)
    limits = [f"{layer['name']}: {layer['input_axons_per_core']} input axons per core > "
              f"{st.max_fan_in_axons_per_core}" for layer in layers
              if _dense_fan_in_violation(layer, st)]
    return {"layers": layers, "total_cores": total, "chips": chips,
            "fits": not limits, "violations": limits, "assumptions": ASSUMPTIONS}


def _stock_synapses(node, neurons: int, synapses: int) -> int:
    """Synapses the stock LIF soft-reset construction adds to a population
    (:mod:`lavaconv.ir.stock`): the floor neuron's mirrored copy of every input synapse, four
    diagonals (self, mirror, floor self, lift) and every Sparse bias term twice, per neuron;
    without the floor neuron (``IF.floor`` off, netx's grid) the self-connection and the bias
    terms once."""
    if not (isinstance(node, IF) and node.reset == "lif"):
        return 0
    bias = np.broadcast_to(np.asarray(node.bias), node.shape).reshape(-1)
    if not node.floor:
        return neurons * (1 + len(bias_terms(bias >> 6)))
    return synapses + neurons * (4 + 2 * len(bias_terms(bias >> 6)))


def _dense_fan_in_violation(layer: dict, st) -> bool:
    """A single neuron's input axons cannot be split over cores."""
    return layer["input_axons_per_core"] > st.max_fan_in_axons_per_core and layer["cores"] >= \
        layer["neurons"]
