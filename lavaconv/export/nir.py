"""A float :class:`~lavaconv.ir.network.Network` as a NIR graph (package ``nir``, pinned to 1.0.8).

Nodes: ``Input`` → per synapse a ``Conv2d`` or ``Affine``/``Linear`` (preceded by one ``Flatten``
per map source that feeds a Dense synapse) → one neuron per population → ``Output``. Weights and
biases are our float weights, stored as float32, the precision the engine computes in.

Neurons. NIR changed the meaning of ``IF`` within 1.0.x: up to 1.0.5 it reset by subtraction,
from 1.0.6 on it resets to ``v_reset`` (NIR PR #129). With NIR 1.0.8:

- ``reset="zero"``: one ``IF`` with ``r = 1`` and ``v_reset = 0``;
- ``reset="subtract"`` cannot be an ``IF``; it is written exactly as the primitives it is made of:
  an integrator ``I`` (``u[t] = u[t-1] + a[t] - theta * s[t-1]``), a ``Threshold`` emitting
  ``s[t]`` and the feedback ``Scale(-theta)`` → ``Delay(1)`` → ``I``;
- graded spikes (a payload other than 1, ``--norm pQ:neuron``): a ``Scale(payload)`` after the
  spikes, and the synapses read it;
- the readout: an integrator ``I`` with ``r = 1`` (read as a potential: ``--readout count`` and
  ``softmax`` are refused).

NIR fires on ``v > v_threshold``, we fire on ``v >= threshold``; on float32 state the two agree when
``v_threshold`` is the largest float32 below our threshold, which is what the file holds.

Timing. NIR edges carry no delay, ours one step per synapse, and our biases flow from ``t_start``.
With ``dt`` = one step, every node ``n`` of the NIR graph runs ``t_start(n)`` steps ahead of ours:
``out_nir(n)[t] = out_ours(n)[t + t_start(n)]`` (the input has ``t_start = 0``), so an Affine bias
that flows from NIR step 0 flows from our ``t_start``. An edge whose source is reached later than
its target (a residual branch) gets a ``Delay`` of ``t_start(src) + 1 + delay - t_start(tgt)``
steps (``delay``: the synapse's own, from ``--align``); in chains and aligned networks there is
none. The readout our engine reports at checkpoint ``T`` is the NIR ``Output`` at
step ``T - 1 - t_start(readout)``.
"""

from __future__ import annotations

from pathlib import Path

import nir
import numpy as np

from lavaconv.errors import LavaconvError
from lavaconv.ir.network import IF, Conv, Input, MaxPool, Network, Readout, Synapse

FORMAT = "lavaconv-nir/1"


def below(threshold: np.ndarray) -> np.ndarray:
    """Largest float32 below each threshold: NIR's ``v > below(th)`` is ``v >= th`` in float32."""
    th = np.asarray(threshold, dtype=np.float32)
    return np.nextafter(th, np.float32(-np.inf))


def spike_node(name: str, net: Network) -> str:
    """Name of the NIR node that emits population ``name``'s spikes (or payload)."""
    node = net.nodes[name]
    return f"{name}.spike" if isinstance(node, IF) and node.reset == "subtract" else name


def message_node(name: str, net: Network) -> str:
    """Name of the NIR node whose output the synapses leaving ``name`` receive: a graded
    population's spikes times their payload (a ``Scale``), else its spikes."""
    return f"{name}.payload" if net.is_graded(name) and name != net.input_name else \
        spike_node(name, net)


def output_node(net: Network) -> str:
    """Name of the NIR ``Output`` node (it carries the readout potential)."""
    return f"{net.output_name}.out"


def _f32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _check(net: Network) -> None:
    if net.is_sigma_delta:
        raise LavaconvError("export --format nir: sigma-delta networks have no NIR form here "
                            "(NIR has no delta encoder); run them with deploy")
    if net.numeric != "float":
        raise LavaconvError("export --format nir: the network is an integer network; NIR has no "
                            "fixed-point shifts or saturation: export the float network")
    for name, node in net.nodes.items():
        if isinstance(node, MaxPool):
            raise LavaconvError(f"export --format nir: node {name} is a rate-gated max-pool, which "
                                "NIR cannot express; use average pooling in the model")
        if isinstance(node, IF) and (node.burst > 1 or node.reset == "snm"):
            raise LavaconvError(f"export --format nir: node {name} sends burst or signed spikes "
                                "(--burst > 1 or --neuron snm), which NIR's neurons cannot")
        if isinstance(node, IF) and not np.all(node.v_threshold > 0):
            raise LavaconvError(f"export --format nir: node {name} has a threshold <= 0")
        if isinstance(node, Readout) and node.mode != "potential":
            raise LavaconvError(f"export --format nir: the readout {name} reads its {node.mode} "
                                "(--readout), which NIR cannot state; convert with --readout "
                                "potential")
        if isinstance(node, IF) and np.any(node.v_init != 0):
            raise LavaconvError(f"export --format nir: node {name} starts at v_init != 0, which "
                                "NIR cannot state; convert with --v-init 0")


def _t_start(net: Network, name: str) -> int:
    node = net.nodes[name]
    return 0 if isinstance(node, Input) else node.t_start


def _delays(net: Network, target: str, syns: list[Synapse]) -> list[int]:
    """NIR delay of each synapse into ``target`` (see the module docstring)."""
    delays = [_t_start(net, s.source) + 1 + s.delay - _t_start(net, target) for s in syns]
    if min(delays) != 0:
        raise LavaconvError(f"export --format nir: node {target} has t_start "
                            f"{_t_start(net, target)}, but its earliest input arrives at step "
                            f"{min(delays) + _t_start(net, target)}")
    return delays


def _neuron(name: str, node: IF | Readout) -> tuple[dict[str, nir.NIRNode], list[tuple]]:
    """NIR nodes and internal edges of one population (a graded one's spikes then pass a
    ``Scale`` by their payload)."""
    if isinstance(node, Readout):
        return {name: nir.I(r=np.ones(node.shape, np.float32),
                            metadata={"lavaconv": "readout"})}, []
    nodes, edges = _firing(name, node)
    if node.is_graded:
        payload = _f32(np.broadcast_to(node.per_channel(node.payload), node.shape))
        nodes[f"{name}.payload"] = nir.Scale(scale=payload, metadata={
            "lavaconv": "graded spikes: each spike carries its payload"})
        edges.append((f"{name}.spike" if node.reset == "subtract" else name, f"{name}.payload"))
    return nodes, edges


def _firing(name: str, node: IF) -> tuple[dict[str, nir.NIRNode], list[tuple]]:
    """The membrane and the spikes of an IF population."""
    ones = np.ones(node.shape, np.float32)
    th = np.broadcast_to(node.v_threshold, node.shape)
    if node.reset == "zero":
        meta = {"lavaconv": "IF, reset to zero, fires on v >= threshold",
                "threshold": _f32(th)}
        return {name: nir.IF(r=ones, v_threshold=below(th), v_reset=np.zeros_like(ones),
                             metadata=meta)}, []
    spike, reset, delay = f"{name}.spike", f"{name}.reset", f"{name}.reset.delay"
    nodes = {
        name: nir.I(r=ones, metadata={"lavaconv": "IF membrane, reset by subtraction (NIR 1.0.8's "
                                                  "IF resets to v_reset and cannot express it)"}),
        spike: nir.Threshold(threshold=below(th), metadata={"threshold": _f32(th)}),
        reset: nir.Scale(scale=-_f32(th)),
        delay: nir.Delay(delay=ones),
    }
    return nodes, [(name, spike), (spike, reset), (reset, delay), (delay, name)]


def _bias(node: IF | Readout, target: str, per_channel: bool) -> np.ndarray:
    bias = np.broadcast_to(node.bias, node.shape)
    if not per_channel:
        return _f32(bias)
    if not np.all(bias == bias[:, :1, :1]):
        raise LavaconvError(f"export --format nir: node {target} has a bias that varies over "
                            "space; NIR's Conv2d bias is one value per channel")
    return _f32(bias[:, 0, 0])


def _ungrouped(syn: Conv) -> np.ndarray:
    """The grouped kernel as one block-diagonal kernel: NIR 1.0.8 derives a Conv2d's input
    channels from ``weight.shape[1]`` alone, so a grouped Conv2d fails its type check."""
    out_ch, per_group = syn.weight.shape[:2]
    w = np.zeros((out_ch, per_group * syn.groups, *syn.weight.shape[2:]))
    block = out_ch // syn.groups
    for o in range(out_ch):
        g = o // block
        w[o, g * per_group:(g + 1) * per_group] = syn.weight[o]
    return w


def _synapse(syn: Synapse, net: Network, bias: bool) -> nir.NIRNode:
    target = net.nodes[syn.target]
    if isinstance(syn, Conv):
        b = _bias(target, syn.target, True) if bias else np.zeros(target.shape[0], np.float32)
        return nir.Conv2d(input_shape=tuple(net.nodes[syn.source].shape[1:]),
                          weight=_f32(_ungrouped(syn)), stride=tuple(syn.stride),
                          padding=tuple(syn.padding), dilation=(1, 1), groups=1, bias=b)
    if bias:
        return nir.Affine(weight=_f32(syn.weight), bias=_bias(target, syn.target, False))
    return nir.Linear(weight=_f32(syn.weight))


def _metadata(net: Network) -> dict:
    resets = sorted({n.reset for n in net.nodes.values() if isinstance(n, IF)})
    inp = net.nodes[net.input_name]
    return {
        "format": FORMAT,
        "nir_version": nir.version,
        "if_semantics": "NIR >= 1.0.6: IF resets to v_reset; reset by subtraction is written as "
                        "I + Threshold + Scale(-threshold) + Delay(1) feedback",
        "lavaconv_reset": ",".join(resets),
        "dt": 1.0,
        "timing": "node n runs t_start(n) steps ahead of lavaconv (one step of delay per synapse "
                  "there); Delay nodes keep residual branches aligned",
        "input": (f"x / {inp.scale:g} every step (analog current)" if inp.encoding == "analog"
                  else f"signed spikes, P(s = sign(x)) = |x| / {inp.scale:g} (poisson)"),
        "readout": f"lavaconv's readout at checkpoint T = Output at step T - 1 - "
                   f"{net.nodes[net.output_name].t_start}",
    }


def nir_graph(net: Network) -> nir.NIRGraph:
    """The float network as a NIR graph (module docstring: mapping and timing)."""
    _check(net)
    nodes: dict[str, nir.NIRNode] = {}
    edges: list[tuple[str, str]] = []
    for name, node in net.nodes.items():
        if isinstance(node, Input):
            nodes[name] = nir.Input(input_type={"input": np.array(node.shape)})
            continue
        pop_nodes, pop_edges = _neuron(name, node)
        nodes.update(pop_nodes)
        edges += pop_edges
        syns = net.inputs_of(name)
        delays = _delays(net, name, syns)
        for k, (syn, delay) in enumerate(zip(syns, delays, strict=True)):
            src = message_node(syn.source, net)
            src_shape = net.nodes[syn.source].shape
            if not isinstance(syn, Conv) and len(src_shape) > 1:
                flat = f"{src}.flat"
                if flat not in nodes:
                    nodes[flat] = nir.Flatten(input_type={"input": np.array(src_shape)},
                                              start_dim=0, end_dim=-1)
                    edges.append((src, flat))
                src = flat
            syn_name = f"{name}.syn{k}"
            nodes[syn_name] = _synapse(syn, net, bias=k == delays.index(0))
            edges.append((src, syn_name))
            if delay:
                nodes[f"{syn_name}.delay"] = nir.Delay(delay=np.full(node.shape, float(delay)))
                edges.append((syn_name, f"{syn_name}.delay"))
                syn_name = f"{syn_name}.delay"
            edges.append((syn_name, name))
    readout = net.nodes[net.output_name]
    nodes[output_node(net)] = nir.Output(output_type={"output": np.array(readout.shape)})
    edges.append((net.output_name, output_node(net)))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=_metadata(net))


def export_nir(net: Network, path: str | Path) -> None:
    """Write the float network to ``path`` as a NIR (HDF5) file."""
    nir.write(str(path), nir_graph(net))
