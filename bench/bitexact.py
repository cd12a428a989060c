"""Lava against the integer engine on the bundled models, spike for spike (issues 3 and 4).

    .venv/bin/python bench/bitexact.py [--items 2] [--timesteps 32] [--stock] [--out docs]

For each bundled Fashion-MNIST model and each neuron / input / readout / burst / alignment case, the
network is converted (calibrated on 500 items), quantized to the loihi2 profile and run on the
same payload by the integer engine and by Lava (``Loihi2SimCfg(select_tag='fixed_pt')``: the
fused model, and with ``--stock`` also Lava's stock per-process models). Every population's spike
counts and the readout must be identical. Prints a markdown table and writes it with the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lavaconv.ann.data import load_dataset  # noqa: E402
from lavaconv.ann.stats import activation_stats  # noqa: E402
from lavaconv.conversion import ConvertOptions, NormSpec  # noqa: E402
from lavaconv.conversion.build import build_network  # noqa: E402
from lavaconv.cost.profiles import load_profile  # noqa: E402
from lavaconv.frontend import load_model  # noqa: E402
from lavaconv.ir.network import IF  # noqa: E402
from lavaconv.lava import compare, run_lava  # noqa: E402
from lavaconv.quantize.integer import quantize  # noqa: E402
from lavaconv.sim.engine import encode_input, simulate  # noqa: E402

MODELS = {"vgg": "examples/vgg_fmnist.pt2", "resnet": "examples/resnet_fmnist.pt2"}
CASES = {
    "rmp, p99.9, analog": ConvertOptions(NormSpec.parse("p99.9"), "rmp", "analog", 0.5),
    "if (hard reset), p99.9, analog": ConvertOptions(NormSpec.parse("p99.9"), "if", "analog",
                                                     v_init=0.0),
    "rmp, max, Poisson": ConvertOptions(NormSpec.parse("max"), "rmp", "poisson", v_init=0.0),
    "snm, neuron-wise max, count readout": ConvertOptions(NormSpec.parse("max:neuron"), "snm",
                                                          "analog", readout="count", v_init=0.0),
    "rmp, p99.9, analog, burst 2": ConvertOptions(NormSpec.parse("p99.9"), "rmp", "analog", 0.5,
                                                  burst=2),
    "snm, p99.9, analog, burst 4": ConvertOptions(NormSpec.parse("p99.9"), "snm", "analog", 0.5,
                                                  burst=4),
    "snm, p99.9, analog, burst 2, aligned": ConvertOptions(NormSpec.parse("p99.9"), "snm",
                                                           "analog", 0.5, burst=2, align=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2)
    parser.add_argument("--timesteps", type=int, default=32)
    parser.add_argument("--stock", action="store_true", help="also Lava's stock models")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    formats = load_profile("loihi2").formats
    rows = []
    for model, path in MODELS.items():
        data = load_dataset("fashion-mnist", n_eval=args.items, n_calib=500, seed=0)
        gm = load_model(ROOT / path, tuple(data.x_eval.shape[1:])).graph_module
        stats = activation_stats(gm, data.x_calib, progress=False)
        for case, options in CASES.items():
            net = build_network(gm, data.x_calib, stats, options)
            net_int, _ = quantize(net, formats, timesteps=args.timesteps)
            payload = encode_input(net_int, data.x_eval, args.timesteps, seed=0)
            engine = simulate(net_int, payload)
            spikes = sum(int(c.sum()) for n, c in engine.spike_counts.items()
                         if isinstance(net_int.nodes[n], IF))
            for fast in (True, False) if args.stock else (True,):
                start = time.perf_counter()
                lava = run_lava(net_int, payload.numpy(), fast=fast)
                bad = compare(net_int, engine, lava)
                rows.append({"model": model, "case": case, "lava": "fused" if fast else "stock",
                             "items": args.items, "timesteps": args.timesteps,
                             "spikes": spikes, "bit_exact": not bad, "mismatched": bad,
                             "ms_per_step": 1e3 * lava.seconds_per_step,
                             "wall_s": time.perf_counter() - start})
                print(_row(rows[-1]), flush=True)
    table = "\n".join(["| model | conversion | Lava models | items x T | IF spikes | bit-exact |"
                       " Lava ms/step |", "|---|---|---|---|---|---|---|", *map(_row, rows)])
    print("\n" + table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bitexact.json").write_text(json.dumps(rows, indent=1) + "\n")
        (args.out / "bitexact-run.md").write_text(table + "\n")
    if not all(r["bit_exact"] for r in rows):
        sys.exit(1)


def _row(r: dict) -> str:
    exact = "yes" if r["bit_exact"] else f"NO: {', '.join(r['mismatched'])}"
    return (f"| {r['model']} | {r['case']} | {r['lava']} | {r['items']} x {r['timesteps']} | "
            f"{r['spikes']} | {exact} | {r['ms_per_step']:.2f} |")


if __name__ == "__main__":
    main()
