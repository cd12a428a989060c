"""Accuracy of the stock LIF soft-reset graph against lavaconv's IFNeuron 'subtract' (issue 18).

    OMP_NUM_THREADS=1 .venv/bin/python bench/stock.py [--items 2000] [--calib-items 2000]
                               [--models vgg,resnet] [--steps 16,...,256] [--json FILE]

Both bundled models with the default conversion (``--neuron rmp``, p99.9, analog input, v_init
0.5, potential readout), quantized to the loihi2 profile for our processes and for the stock
graph (:mod:`lavaconv.ir.stock`; max-pools as IF units, ``--maxpool relu``, where ours keeps
the gate) and run through the integer engine
to max(steps) on the same items, batch by batch (a running line per batch on stderr). Prints a
Markdown table: accuracy in %, the difference in points, and the paired discordant items
(ours right and stock wrong / the reverse) with a 95 % interval of the difference (normal
approximation of the paired test), so that noise and effect can be told apart.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lavaconv.app.session import RunConfig, prepare  # noqa: E402
from lavaconv.conversion import ConvertOptions  # noqa: E402
from lavaconv.ir.network import MaxPool  # noqa: E402
from lavaconv.sim.engine import encode_input, simulate  # noqa: E402
from lavaconv.sim.evaluation import auto_batch, chunks  # noqa: E402

MODELS = {"vgg": "examples/vgg_fmnist.pt2", "resnet": "examples/resnet_fmnist.pt2"}
GRAPHS = ("ours", "stock")


def measure(model: str, items: int, calib: int, steps: list[int]) -> dict:
    """Per item and checkpoint: is each graph's prediction right (paired)."""
    def prepared(options: ConvertOptions):
        return prepare(RunConfig(ROOT / MODELS[model], "fashion-mnist", samples=items,
                                 calib_samples=calib, options=options, progress=False))

    prep = prepared(ConvertOptions())
    nets = {"ours": prep.integer("loihi2", max(steps))[0]}
    if any(isinstance(n, MaxPool) for n in prep.net.nodes.values()):  # the stock graph builds
        prep = prepared(ConvertOptions(maxpool="relu"))  # max-pools from IF units
    nets["stock"] = prep.integer("loihi2", max(steps), stock=True)[0]
    x, y = prep.dataset.x_eval, torch.as_tensor(prep.dataset.y_eval)
    right = {g: {t: [] for t in steps} for g in GRAPHS}
    seconds = dict.fromkeys(GRAPHS, 0.0)
    saturated = dict.fromkeys(GRAPHS, 0)
    batch = auto_batch(nets["stock"], max(steps))
    done = 0
    for start, xb in chunks(x, batch):
        for g, net in nets.items():
            t0 = time.perf_counter()
            res = simulate(net, encode_input(net, xb, max(steps), seed=start), steps, seed=start)
            seconds[g] += time.perf_counter() - t0
            saturated[g] += sum(res.saturated.values())
            for t in steps:
                right[g][t].append((res.predictions(t).cpu() == y[start:start + len(xb)]).numpy())
        done += len(xb)
        t = 64 if 64 in steps else steps[-1]
        acc = {g: 100 * np.concatenate(right[g][t]).mean() for g in GRAPHS}
        print(f"{model} {done}/{len(x)} items, T={t}: ours {acc['ours']:.2f} stock "
              f"{acc['stock']:.2f}", file=sys.stderr, flush=True)
    out = {"ann": prep.ann_accuracy, "items": len(x), "seconds": seconds,
           "saturated_neuron_steps": saturated}
    for t in steps:
        a, b = (np.concatenate(right[g][t]) for g in GRAPHS)
        out[str(t)] = {"ours": float(a.mean()), "stock": float(b.mean()),
                       "ours_only": int((a & ~b).sum()), "stock_only": int((b & ~a).sum())}
    return out


def interval(r: dict, n: int) -> float:
    """Half-width (points) of the 95 % interval of the paired accuracy difference."""
    b, c = r["ours_only"], r["stock_only"]
    return 100 * 1.96 * math.sqrt(max(b + c - (c - b) ** 2 / n, 0.0)) / n


def table(results: dict, steps: list[int]) -> str:
    lines = ["| model | T | IFNeuron subtract % | stock LIF soft reset % | difference (points) "
             "| items ours only / stock only |", "|---|---|---|---|---|---|"]
    for model, r in results.items():
        for t in steps:
            row = r[str(t)]
            a, b = 100 * row["ours"], 100 * row["stock"]
            lines.append(f"| {model} | {t} | {a:.2f} | {b:.2f} | {b - a:+.2f} "
                         f"± {interval(row, r['items']):.2f} | {row['ours_only']} / "
                         f"{row['stock_only']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--models", default="vgg,resnet")
    ap.add_argument("--json")
    ap.add_argument("--calib-items", type=int, default=2000)
    ap.add_argument("--steps", default="16,32,64,128,256")
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps = sorted(int(t) for t in args.steps.split(","))
    results = {}
    for model in args.models.split(","):
        results[model] = measure(model, args.items, args.calib_items, steps)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    print(table(results, steps))


if __name__ == "__main__":
    main()
