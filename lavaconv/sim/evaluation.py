"""The SNN's accuracy and activity on a data set: the engine run batch by batch (sharded over
distributed ranks), read at every checkpoint T."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from lavaconv import distributed
from lavaconv.errors import LavaconvError
from lavaconv.ir.network import IF, MaxPool, Network, Readout, SigmaDelta
from lavaconv.sim.engine import encode_input, simulate

MEMORY_BUDGET = 2 << 30  # bytes of spike trains the engine may hold at once


def chunks(x: np.ndarray, size: int):
    """``(start, x[start:start + size])`` over all of ``x`` (in this process, not sharded)."""
    for start in range(0, len(x), size):
        yield start, x[start:start + size]


def auto_batch(net: Network, timesteps: int) -> int:
    """Items per engine batch so that the spike trains fit in MEMORY_BUDGET."""
    widest = max(int(np.prod(n.shape)) for n in net.nodes.values())
    per_item = timesteps * widest * (16 if net.numeric == "int" else 8) * 3
    if per_item > MEMORY_BUDGET:
        raise LavaconvError(f"one item at T={timesteps} needs {per_item / 2**30:.1f} GiB of spike "
                            f"trains (widest layer {widest} neurons), over the engine's memory "
                            f"budget of {MEMORY_BUDGET / 2**30:.1f} GiB: use fewer timesteps")
    return int(min(1024, MEMORY_BUDGET // per_item))


@dataclass
class Activity:
    """Spikes of an SNN over the first T steps of each checkpoint T, summed over ``items``."""

    items: int
    spike_counts: dict[int, dict[str, np.ndarray]]  # T -> node -> spikes per neuron
    input_events: dict[int, np.ndarray]  # T -> non-zero payloads sent per input neuron


@dataclass
class SnnEval:
    """Accuracy and activity of the SNN at each checkpoint T."""

    accuracy: dict[int, float]
    spike_rate: dict[int, dict[str, float]]  # RMP eq. 8, in % of neurons per step, per layer
    seconds_per_step: float  # engine wall time per timestep for one item
    items: int
    saturated: dict[str, float] = field(default_factory=dict)  # fraction of neuron-steps
    # with per_neuron=True: T -> node -> spike events per neuron in steps [0, T), all items;
    # T -> non-zero input payloads per input neuron (what energy estimates count)
    neuron_counts: dict[int, dict[str, np.ndarray]] | None = None
    input_events: dict[int, np.ndarray] | None = None

    @property
    def activity(self) -> Activity:
        """The per-neuron activity an evaluation with ``per_neuron=True`` kept."""
        if self.neuron_counts is None:
            raise ValueError("evaluate(..., per_neuron=True) keeps the activity")
        return Activity(self.items, self.neuron_counts, self.input_events)


def evaluate(net: Network, x: np.ndarray, y: np.ndarray | None, timesteps: Sequence[int], *,
             seed: int = 0, batch_size: int | None = None, device: str = "cpu",
             progress: bool = True, per_neuron: bool = False) -> SnnEval:
    """Run the engine once to max(timesteps) and read accuracy at every checkpoint (and, with
    ``per_neuron``, every neuron's spike count there); ``y`` None: no accuracy."""
    checkpoints = sorted(set(int(t) for t in timesteps))
    steps = checkpoints[-1]
    if steps < net.depth():
        raise LavaconvError(f"--timesteps {steps} is shorter than the network's depth "
                            f"{net.depth()}: the readout would receive nothing")
    batch_size = batch_size or auto_batch(net, steps)
    sizes = {name: int(np.prod(node.shape)) for name, node in net.nodes.items()
             if isinstance(node, (IF, MaxPool, SigmaDelta))}
    correct = dict.fromkeys(checkpoints, 0)
    spikes = {t: dict.fromkeys(sizes, 0.0) for t in checkpoints}
    saturated = {name: 0 for name, node in net.nodes.items()
                 if isinstance(node, (IF, Readout, SigmaDelta))}
    per = {("n", t, k): 0.0 for t in checkpoints for k in sizes} if per_neuron else {}
    per.update({("i", t): 0.0 for t in checkpoints} if per_neuron else {})
    bar = tqdm(total=len(x), desc=f"simulate T={steps}", unit="item", disable=not progress,
               leave=False)
    start_time = time.perf_counter()
    for start, xb in distributed.batches(x, batch_size):
        payload = encode_input(net, xb, steps, seed=seed + start, device=device)
        res = simulate(net, payload, checkpoints, seed=seed + start, counts_at=per_neuron)
        for t in checkpoints:
            if y is not None:
                yb = torch.as_tensor(y[start:start + len(xb)])
                correct[t] += int((res.predictions(t).cpu() == yb).sum())
            for name, n in res.spikes_at[t].items():
                spikes[t][name] = spikes[t].get(name, 0.0) + n
            if per_neuron:
                for name, c in res.counts_at[t].items():
                    per[("n", t, name)] += c.cpu().numpy().sum(axis=0)  # (torch's: 7x slower)
                events = (res.input_counts[t] if res.input_counts is not None
                          else (payload[:t] != 0).sum(dim=0))
                per[("i", t)] += events.sum(dim=0).double().cpu().numpy()
        for name, n in res.saturated.items():
            saturated[name] += n
        bar.update(len(xb))
    bar.close()
    elapsed = time.perf_counter() - start_time
    totals = distributed.all_sum({**{("c", t): c for t, c in correct.items()},
                                  **{("s", t, k): v for t, d in spikes.items()
                                     for k, v in d.items()},
                                  **{("x", k): v for k, v in saturated.items()}, **per})
    correct = {t: totals[("c", t)] for t in checkpoints}
    spikes = {t: {k: totals[("s", t, k)] for k in sizes} for t in checkpoints}
    saturated = {k[1]: v for k, v in totals.items() if k[0] == "x"}
    n = max(len(x), 1)
    rate = {t: {k: 100.0 * v / (sizes[k] * t * n) for k, v in spikes[t].items()}
            for t in checkpoints}
    return SnnEval(
        accuracy={t: c / n for t, c in correct.items()} if y is not None else {},
        spike_rate=rate,
        seconds_per_step=elapsed / (steps * n),
        items=len(x),
        saturated={k: v / (int(np.prod(net.nodes[k].shape)) * steps * n)
                   for k, v in saturated.items()},
        neuron_counts={t: {k: totals[("n", t, k)] for k in sizes} for t in checkpoints}
        if per_neuron else None,
        input_events={t: totals[("i", t)] for t in checkpoints} if per_neuron else None,
    )


def measure_activity(net: Network, x: np.ndarray, checkpoints: Sequence[int], *, seed: int = 0,
                     batch_size: int | None = None, device: str = "cpu",
                     progress: bool = True) -> Activity:
    """Run the engine on ``x`` (batches and seeds of :func:`evaluate`, so Poisson input draws
    the same spikes) and keep every neuron's spike count at each checkpoint, from one run to
    the last checkpoint (the engine is causal)."""
    if min(checkpoints) < 1:
        raise LavaconvError(f"timesteps must be >= 1, got {min(checkpoints)}")
    return evaluate(net, x, None, checkpoints, seed=seed, batch_size=batch_size, device=device,
                    progress=progress, per_neuron=True).activity
