"""Discrete-time interpreter for the NIR nodes lavaconv writes (one step = ``dt`` = 1).

Each step, every node reads the sum of its sources' outputs of the same step (edges in graph
order) and updates in topological order; a ``Delay`` of ``d`` steps outputs what it received
``d`` steps earlier, so edges leaving a ``Delay`` may close cycles. Neurons follow the NIR 1.0.8
definitions with forward Euler at ``dt = 1``:

    I:         v[t] = v[t-1] + r * x[t];  y[t] = v[t]
    IF:        v[t] = v[t-1] + r * x[t];  z[t] = v[t] > v_threshold;  v[t] = v_reset where z[t]
    Threshold: z[t] = x[t] > threshold
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import nir
import numpy as np
import torch
import torch.nn.functional as F


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


def _pair(x) -> tuple[int, int]:
    v = [int(i) for i in np.atleast_1d(x)]
    return (v[0], v[-1])


def _order(graph: nir.NIRGraph) -> list[str]:
    """Topological order over the edges that do not leave a Delay."""
    delays = {n for n, node in graph.nodes.items() if isinstance(node, nir.Delay)}
    deps = {n: {s for s, t in graph.edges if t == n and s not in delays} for n in graph.nodes}
    order: list[str] = []
    while len(order) < len(deps):
        ready = [n for n, d in deps.items() if n not in order and d <= set(order)]
        if not ready:
            raise ValueError("NIR graph has a cycle without a Delay")
        order += ready
    return order


def _step_fn(node: nir.NIRNode) -> Callable[[torch.Tensor, dict], torch.Tensor]:
    """``f(x, state) -> y`` for one step of ``node``."""
    if isinstance(node, (nir.Input, nir.Output, nir.Delay)):
        return lambda x, s: x
    if isinstance(node, nir.Affine):
        w, b = _t(node.weight), _t(node.bias)
        return lambda x, s: x @ w.T + b
    if isinstance(node, nir.Linear):
        w = _t(node.weight)
        return lambda x, s: x @ w.T
    if isinstance(node, nir.Conv2d):
        w, b = _t(node.weight), _t(node.bias)
        args = (_pair(node.stride), _pair(node.padding), _pair(node.dilation), int(node.groups))
        return lambda x, s: F.conv2d(x, w, b, *args)
    if isinstance(node, nir.Flatten):
        end = node.end_dim + 1 if node.end_dim >= 0 else node.end_dim
        return lambda x, s: x.flatten(node.start_dim + 1, end)
    if isinstance(node, nir.Scale):
        scale = _t(node.scale)
        return lambda x, s: x * scale
    if isinstance(node, nir.Threshold):
        th = _t(node.threshold)
        return lambda x, s: (x > th).to(x.dtype)
    if isinstance(node, nir.I):
        r = _t(node.r)

        def integrate(x: torch.Tensor, s: dict) -> torch.Tensor:
            s["v"] = s.get("v", 0) + r * x
            return s["v"]
        return integrate
    if isinstance(node, nir.IF):
        r, th, reset = _t(node.r), _t(node.v_threshold), _t(node.v_reset)

        def fire(x: torch.Tensor, s: dict) -> torch.Tensor:
            v = s.get("v", 0) + r * x
            z = v > th
            s["v"] = torch.where(z, reset, v)
            return z.to(x.dtype)
        return fire
    raise ValueError(f"NIR node type {type(node).__name__} is not supported by this interpreter")


def _delay_steps(node: nir.Delay) -> int:
    d = np.unique(np.asarray(node.delay))
    if d.size != 1 or d[0] < 1 or d[0] != int(d[0]):
        raise ValueError(f"Delay must be one whole number of steps >= 1, got {d}")
    return int(d[0])


def run_nir(
    graph: nir.NIRGraph, inputs: torch.Tensor, record: Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """Run ``graph`` on ``inputs`` ``(T, B, *input shape)``; return the outputs ``(T, B, ...)``
    of its Output nodes and of the nodes named in ``record``."""
    inputs = inputs.to(torch.float32)
    order = _order(graph)
    fns = {n: _step_fn(node) for n, node in graph.nodes.items()}
    state: dict[str, dict] = {n: {} for n in graph.nodes}
    sources = {n: [s for s, t in graph.edges if t == n] for n in graph.nodes}
    delays = {n: _delay_steps(v) for n, v in graph.nodes.items() if isinstance(v, nir.Delay)}
    lines = {n: [0.0] * d for n, d in delays.items()}  # what each Delay emits next
    keep = set(record) | {n for n, v in graph.nodes.items() if isinstance(v, nir.Output)}
    trains: dict[str, list[torch.Tensor]] = {n: [] for n in keep}
    (input_name,) = [n for n, v in graph.nodes.items() if isinstance(v, nir.Input)]
    for t in range(inputs.shape[0]):
        out = {n: lines[n].pop(0) for n in delays}
        for name in order:
            if name in delays:
                continue
            x = inputs[t] if name == input_name else sum(out[s] for s in sources[name])
            out[name] = fns[name](x, state[name])
        for name in delays:
            lines[name].append(sum(out[s] for s in sources[name]))
        for name in keep:
            trains[name].append(torch.as_tensor(out[name]).clone())
    return {n: torch.stack(torch.broadcast_tensors(*v)) for n, v in trains.items()}
