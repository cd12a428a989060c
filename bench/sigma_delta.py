"""Sigma-delta benchmark (issue 19): the threshold knob against accuracy and traffic.

    .venv/bin/python bench/sigma_delta.py [--models vgg,resnet] [--thetas 0.01,0.03,0.1]
                                          [--items 2000] [--out sigma-delta.json]
                                          [--floor-messages]

For each bundled model and each delta threshold theta (in units of a layer's scale): convert
with ``--neuron sigma-delta``, quantize to the loihi2 profile, and run the float and the integer
engine once to T = 64 on the first ``--items`` test items; the checkpoints give the accuracy at
T = 4 .. 64 (``--floor-messages``: the integer units' first messages floored, as before the
half-unit offset in their bias pulses; docs/sigma-delta.md). Traffic at T = 64 (the network
is quiet long before): messages per inference (the input's included) and synaptic operations
(messages times fan-out), against the ANN's MACs.
Prints one table per model and writes every number to ``--out`` after each run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lavaconv.app.session import RunConfig, prepare
from lavaconv.conversion import ConvertOptions
from lavaconv.cost.counting import ann_macs, snn_synops
from lavaconv.cost.profiles import load_profile
from lavaconv.quantize.sigma_delta import quantize_sigma_delta
from lavaconv.sim.evaluation import evaluate

TIMESTEPS = [4, 6, 8, 10, 12, 14, 16, 20, 24, 32, 48, 64]


def run(model: str, theta: float, items: int, round_messages: bool = True) -> dict:
    cfg = RunConfig(f"examples/{model}_fmnist.pt2", "fashion-mnist",
                    ConvertOptions(neuron="sigma-delta", sd_threshold=theta), samples=items,
                    progress=False)
    prep = prepare(cfg)
    shape = tuple(prep.dataset.x_eval.shape[1:])
    macs = sum(layer.ops for layer in ann_macs(prep.model.graph_module, shape))
    out = {"model": model, "theta": theta, "items": items, "ann_accuracy": prep.ann_accuracy,
           "ann_macs": macs, "depth": prep.net.meta["depth"], "round_messages": round_messages}
    net_int, report = quantize_sigma_delta(prep.net, load_profile("loihi2").formats,
                                           prep.dataset.x_calib, round_messages=round_messages)
    out["quantization"] = [{"name": r.name, "vth": r.vth_int, "weight_rel_error":
                            r.weight_rel_error, "out_of_range": bool(r.saturated)}
                           for r in report]
    for label, net in (("float", prep.net), ("int", net_int)):
        t0 = time.perf_counter()
        ev = evaluate(net, prep.dataset.x_eval, prep.dataset.y_eval, TIMESTEPS, progress=False,
                      per_neuron=True)
        act = ev.activity
        last = max(TIMESTEPS)
        ops = snn_synops(net, act.spike_counts[last], act.input_events[last], act.items)
        messages = (sum(float(c.sum()) for c in act.spike_counts[last].values())
                    + float(act.input_events[last].sum())) / act.items
        out[label] = {"accuracy": {t: a for t, a in ev.accuracy.items()},
                      "synops": sum(o.ops for o in ops), "messages": messages,
                      "synops_per_synapse": {o.name: o.ops for o in ops},
                      "seconds": time.perf_counter() - t0}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vgg,resnet")
    ap.add_argument("--thetas", default="0.01,0.03,0.1")
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--out", default="sigma-delta.json")
    ap.add_argument("--floor-messages", action="store_true",
                    help="no half-unit offset: every integer message floored")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = []
    for model in args.models.split(","):
        print(f"{model}: T =", " ".join(f"{t:>6}" for t in TIMESTEPS), "  ops/MACs  msgs")
        for theta in (float(v) for v in args.thetas.split(",")):
            r = run(model, theta, args.items, not args.floor_messages)
            results.append(r)
            Path(args.out).write_text(json.dumps(results, indent=1))
            for label in ("float", "int"):
                row = r[label]
                accs = " ".join(f"{100 * row['accuracy'][t]:6.2f}" for t in TIMESTEPS)
                print(f"  theta {theta:<5} {label:5} {accs}   {row['synops'] / r['ann_macs']:.3f}"
                      f"  {row['messages']:.0f}   (ANN {100 * r['ann_accuracy']:.2f}, depth "
                      f"{r['depth']})", flush=True)


if __name__ == "__main__":
    main()
