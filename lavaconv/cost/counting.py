"""Operation counts: ANN multiply-accumulates and SNN synaptic operations.

Convention: one MAC is 1 op here (torchvision / syops-counter); an FPGA datasheet's FLOP count
is 2 per MAC. A synaptic operation (SOP) is one spike arriving at one synapse; a synapse is a
non-zero weight, and a source neuron's fan-out is counted exactly from the connection structure
(conv borders and strides included; the zeros of an identity shortcut reach nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from lavaconv.ir.network import Conv, Dense, Input, Network

aten = torch.ops.aten


@dataclass
class LayerCount:
    name: str
    kind: str
    ops: float  # MACs (ANN) or SOPs per item (SNN)
    graded: bool = False  # SNN: the source sends graded values (analog input: MACs, SNM eq. 15)


def _module_path(node: torch.fx.Node) -> str:
    """The layer's module path (``layer1.0.conv2``) where the front end recorded it."""
    where = node.meta.get("lavaconv_where")
    return where.split(" (")[0] if where else node.name


def ann_macs(gm: torch.fx.GraphModule, input_shape: tuple[int, ...]) -> list[LayerCount]:
    """MACs of every conv and linear layer of a canonical graph, for one item."""
    ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
    out = []
    for node in gm.graph.nodes:
        if node.target == aten.conv2d.default:
            w = getattr(gm, node.args[1].target)
            n_out = int(np.prod(node.meta["tensor_meta"].shape[1:]))
            out.append(LayerCount(_module_path(node), "conv",
                                  float(n_out * np.prod(w.shape[1:]))))
        elif node.target == aten.linear.default:
            w = getattr(gm, node.args[1].target)
            out.append(LayerCount(_module_path(node), "linear", float(w.shape[0] * w.shape[1])))
    return out


def fan_out(syn: Conv | Dense, src_shape: tuple[int, ...]) -> np.ndarray:
    """Number of non-zero synapses by which each source neuron reaches a target (src_shape)."""
    if isinstance(syn, Dense):
        return (np.asarray(syn.weight) != 0).sum(axis=0).reshape(src_shape).astype(np.float64)
    w = torch.from_numpy(np.asarray(syn.weight) != 0).to(torch.float64)
    out_shape = F.conv2d(torch.zeros(1, *src_shape, dtype=torch.float64), w, None, syn.stride,
                         syn.padding, 1, syn.groups).shape
    h, wd = out_shape[2:]
    k, st, pad = syn.weight.shape[2:], syn.stride, syn.padding
    # output_padding restores the rows and columns a stride leaves unused at the far border
    extra = tuple(src_shape[1 + i] - ((h, wd)[i] - 1) * st[i] + 2 * pad[i] - k[i] for i in (0, 1))
    back = F.conv_transpose2d(torch.ones(out_shape, dtype=torch.float64), w, None, st, pad,
                              output_padding=extra, groups=syn.groups)
    return back[0].numpy()


def snn_synops(net: Network, spike_counts: dict[str, np.ndarray],
               input_events: np.ndarray, items: int) -> list[LayerCount]:
    """SOPs per item of every synapse, from per-neuron spike events summed over ``items``.

    ``input_events`` are the input node's non-zero payload events per neuron (summed over
    items). A synapse whose source sends graded values is marked ``graded``; those from analog
    input are multiply-accumulates (SNM eq. 15).
    """
    out = []
    for syn in net.synapses:
        src = net.nodes[syn.source]
        counts = input_events if isinstance(src, Input) else spike_counts[syn.source]
        fan = fan_out(syn, tuple(src.shape))
        ops = float((np.abs(np.asarray(counts)) * fan).sum()) / max(items, 1)
        out.append(LayerCount(f"{syn.source}->{syn.target}", type(syn).__name__.lower(), ops,
                              net.is_graded(syn.source)))
    return out
