"""Running the canonical ANN graph: which fx node each population reads, one probe interpreter
that observes (or replaces) those nodes' outputs, activations per population, and accuracy."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.fx

from lavaconv import distributed
from lavaconv.errors import LavaconvError

aten = torch.ops.aten
Hook = Callable[[torch.fx.Node, Any], Any]


class Probe(torch.fx.Interpreter):
    """Runs the graph; at each node named in ``names`` calls ``hook(node, value)``, whose
    result becomes the node's output (return ``value`` to only observe it)."""

    def __init__(self, gm: torch.fx.GraphModule, names: Iterable[str], hook: Hook) -> None:
        super().__init__(gm)
        self.names = set(names)
        self.hook = hook

    def run_node(self, n: torch.fx.Node):
        value = super().run_node(n)
        return self.hook(n, value) if n.name in self.names else value


def population_nodes(gm: torch.fx.GraphModule) -> dict[str, str]:
    """Population name → the fx node whose output it represents (the input, every ReLU, and
    the readout as ``"output"``)."""
    names = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            names[node.name] = node.name
        elif node.target in (aten.relu.default, aten.hardtanh.default):  # ReLU, clipped ReLU
            names[node.name] = node.name
        elif node.op == "output":
            arg = node.args[0]
            names["output"] = (arg[0] if isinstance(arg, (tuple, list)) else arg).name
    return names


def input_name(gm: torch.fx.GraphModule) -> str:
    return next(n.name for n in gm.graph.nodes if n.op == "placeholder")


def activations(gm: torch.fx.GraphModule, x: np.ndarray,
                batch_size: int = 256) -> Iterator[dict[str, torch.Tensor]]:
    """For each batch of ``x``: population name → its ANN activation ``(B, *shape)`` (the
    input and the output included, named as in the converted network)."""
    names = population_nodes(gm)
    seen: dict[str, torch.Tensor] = {}

    def keep(node: torch.fx.Node, value):
        seen[node.name] = value.detach()
        return value

    probe = Probe(gm, names.values(), keep)
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            seen.clear()
            probe.run(torch.as_tensor(np.ascontiguousarray(x[start:start + batch_size])))
            yield {pop: seen[node] for pop, node in names.items()}


def accuracy(gm: torch.fx.GraphModule | Probe, x: np.ndarray, y: np.ndarray,
             batch_size: int = 512, device: str = "cpu") -> float:
    """Top-1 accuracy of the graph (or of a probe that alters it) on ``(x, y)``, sharded over
    the distributed ranks."""
    run = gm.to(device) if isinstance(gm, torch.fx.GraphModule) else gm.run
    correct = 0
    with torch.no_grad():
        for i, (start, xb) in enumerate(distributed.batches(x, batch_size, device)):
            out = run(xb)
            out = out[0] if isinstance(out, (tuple, list)) else out
            if i == 0:
                check_labels(y, out.shape[1])
            correct += int((out.argmax(1).cpu().numpy() == y[start:start + len(xb)]).sum())
    return distributed.all_sum({"c": correct})["c"] / max(len(x), 1)


def check_labels(y: np.ndarray, classes: int) -> None:
    """Refuse labels that are no class of a model with ``classes`` outputs (an accuracy
    measured against them would be meaningless)."""
    outside = (y < 0) | (y >= classes)
    if outside.any():
        i = int(np.argmax(outside))
        raise LavaconvError(f"label {y[i]} (item {i} of the evaluation set) is not one of the "
                            f"model's {classes} classes 0..{classes - 1}")
