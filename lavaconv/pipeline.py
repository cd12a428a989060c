"""The steps every command shares: load, calibrate, convert, evaluate (ANN and SNN)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from lavaconv import distributed
from lavaconv.calibrate import ActivationStats, collect
from lavaconv.convert import ConvertOptions, calibration_nodes
from lavaconv.data import Dataset
from lavaconv.engine import encode_input, simulate
from lavaconv.errors import LavaconvError
from lavaconv.methods import build_network
from lavaconv.network import IF, MaxPool, Network, Readout

MEMORY_BUDGET = 2 << 30  # bytes of spike trains the engine may hold at once


def _batches(x: np.ndarray, size: int, device: str | torch.device = "cpu"):
    """This rank's share of fixed batches (all of them in a single process)."""
    for start, stop in distributed.shard(len(x), size):
        yield start, torch.from_numpy(np.ascontiguousarray(x[start:stop])).to(device)


def _merged(stats: dict[str, ActivationStats]) -> dict[str, ActivationStats]:
    """Statistics over all ranks' shards (histogram merge is exact)."""
    states = distributed.all_gather_objects({k: v.to_state() for k, v in stats.items()})
    if len(states) == 1:
        return stats
    merged: dict[str, ActivationStats] = {}
    for per_rank in states:
        for name, state in per_rank.items():
            part = ActivationStats.from_state(state)
            merged[name] = merged[name].merge(part) if name in merged else part
    return merged


def calibrate(gm: torch.fx.GraphModule, x_calib: np.ndarray, batch_size: int = 256,
              progress: bool = True, device: str = "cpu") -> dict[str, ActivationStats]:
    """Activation statistics of every population (keyed by population name)."""
    if len(x_calib) == 0:
        raise LavaconvError("calibration set is empty: give more data or --calib-samples > 0")
    names = calibration_nodes(gm)
    bar = tqdm(total=len(x_calib), desc="calibrate", unit="item", disable=not progress,
               leave=False)
    batches = (b for _, b in _batches(x_calib, batch_size, device))
    by_node = _merged(collect(gm.to(device), batches, sorted(set(names.values())),
                              progress=lambda n: bar.update(n)))
    bar.close()
    return {pop: by_node[node] for pop, node in names.items()}


def ann_accuracy(gm: torch.fx.GraphModule, x: np.ndarray, y: np.ndarray,
                 batch_size: int = 512, device: str = "cpu") -> float:
    correct = 0
    with torch.no_grad():
        for start, xb in _batches(x, batch_size, device):
            out = gm.to(device)(xb)
            out = out[0] if isinstance(out, (tuple, list)) else out
            correct += int((out.argmax(1).cpu().numpy() == y[start:start + len(xb)]).sum())
    return distributed.all_sum({"c": correct})["c"] / max(len(x), 1)


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
             if isinstance(node, (IF, MaxPool))}
    correct = dict.fromkeys(checkpoints, 0)
    spikes = {t: dict.fromkeys(sizes, 0.0) for t in checkpoints}
    saturated = {name: 0 for name, node in net.nodes.items() if isinstance(node, (IF, Readout))}
    per = {("n", t, k): 0.0 for t in checkpoints for k in sizes} if per_neuron else {}
    per.update({("i", t): 0.0 for t in checkpoints} if per_neuron else {})
    bar = tqdm(total=len(x), desc=f"simulate T={steps}", unit="item", disable=not progress,
               leave=False)
    start_time = time.perf_counter()
    for start, xb in _batches(x, batch_size):
        payload = encode_input(net, xb, steps, seed=seed + start, device=device)
        res = simulate(net, payload, checkpoints, counts_at=per_neuron)
        for t in checkpoints:
            if y is not None:
                yb = torch.as_tensor(y[start:start + len(xb)])
                correct[t] += int((res.predictions(t).cpu() == yb).sum())
            for name, n in res.spikes_at[t].items():
                spikes[t][name] = spikes[t].get(name, 0.0) + n
            if per_neuron:
                for name, c in res.counts_at[t].items():
                    per[("n", t, name)] += c.sum(dim=0).double().cpu().numpy()
                per[("i", t)] += (payload[:t] != 0).sum(dim=(0, 1)).double().cpu().numpy()
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


def build(gm: torch.fx.GraphModule, dataset: Dataset, options: ConvertOptions,
          progress: bool = True, device: str = "cpu") -> tuple[Network, dict[str, ActivationStats]]:
    """Calibrate on the calibration items only, then convert with every method of
    ``options`` (those that run the SNN use calibration items too)."""
    stats = calibrate(gm, dataset.x_calib, progress=progress, device=device)
    net = build_network(gm, dataset.x_calib, stats, options)
    return net, stats
