"""Accuracy of the stock LIF soft-reset graph against lavaconv's IFNeuron 'subtract' (issue 18).

    OMP_NUM_THREADS=1 .venv/bin/python bench/stock.py [--items 2000] [--calib-items 2000]
                               [--models vgg,resnet] [--steps 16,...,256] [--json FILE]

Both bundled models with the default conversion (``--neuron rmp``, p99.9, analog input, v_init
0.5, potential readout), calibrated once, quantized to the loihi2 profile twice — for our
processes and for the stock graph (:mod:`lavaconv.ir.stock`) — and run through the integer engine
to T = 256 on the same items. Prints a Markdown table (accuracy in %, difference in points).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lavaconv.app.session import RunConfig, prepare  # noqa: E402
from lavaconv.sim import evaluation  # noqa: E402

MODELS = {"vgg": "examples/vgg_fmnist.pt2", "resnet": "examples/resnet_fmnist.pt2"}
STEPS = [16, 32, 64, 128, 256]


def measure(model: str, items: int, calib: int = 2000) -> dict:
    prep = prepare(RunConfig(ROOT / MODELS[model], "fashion-mnist", samples=items,
                             calib_samples=calib, progress=False))
    out = {"ann": prep.ann_accuracy, "items": items}
    for graph in ("ours", "stock"):
        net, _ = prep.integer("loihi2", max(STEPS), stock=graph == "stock")
        t0 = time.perf_counter()
        ev = evaluation.evaluate(net, prep.dataset.x_eval, prep.dataset.y_eval, STEPS,
                               progress=False)
        out[graph] = {str(t): ev.accuracy[t] for t in STEPS}
        out[graph + "_seconds"] = time.perf_counter() - t0
        out[graph + "_saturated"] = ev.saturated
    return out


def table(results: dict) -> str:
    lines = ["| model | T | IFNeuron subtract % | stock LIF soft reset % | difference (points) |",
             "|---|---|---|---|---|"]
    for model, r in results.items():
        for t in STEPS:
            a, b = 100 * r["ours"][str(t)], 100 * r["stock"][str(t)]
            lines.append(f"| {model} | {t} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
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
    STEPS[:] = [int(t) for t in args.steps.split(",")]
    results = {m: measure(m, args.items, args.calib_items) for m in args.models.split(",")}
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
