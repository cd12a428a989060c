"""Peers bench (issue 8): SpikingJelly's ann2snn against lavaconv on the bundled models.

    make peers-deps   # spikingjelly 2.0.0 with --no-deps, loguru, requests
    .venv/bin/python bench/peers.py [--items 1000] [--calib-items 60000] [--models vgg,resnet]
                                    [--threads 1] [--out docs/peers.json]

``--no-deps`` keeps pip from pulling torchvision and replacing torch. Both converters get the
same ANN weights, the same
Fashion-MNIST calibration items (by default the whole training set: SpikingJelly's LTB
recipe raises its thresholds a little per batch and needs hundreds of batches, as in its
example; with 2,000 items its accuracy fell as T grew) and the same first ``--items`` t10k
test items, and each runs its own simulator once to T = 128 on this CPU, read at
T = 16/32/64/128:

- SpikingJelly, three recipes of ``ann2snn``: ``RateCodingRecipe(mode="99.9%")`` (the
  "RobustNorm scalar thresholds" of its own MNIST example: a layer-wise 99.9th percentile,
  averaged with its default momentum 0.1 over calibration batches of 100; IF neurons with
  reset by subtraction starting at 0); the same with ``channel_wise=True, half_threshold=True``
  (a percentile per channel, potentials starting at half the threshold); and
  ``LocalThresholdBalancingRecipe`` (Bu et al., CVPR 2025; the other recipe of that example).
  Conv-BN fused, analog input (the image every step), output summed over the steps, stepped
  with ``functional.reset_net`` and one call per step as its example does. Its recipes replace
  ``nn.ReLU`` modules only, so functional ReLUs (``F.relu``, ``torch.relu``) are first turned
  into modules by :func:`relus_as_modules` (same weights, same function).
- lavaconv: the CLI's defaults (p99.9, rmp, analog, v_init 0.5) through ``lavaconv.convert``;
  the float engine, and the integer engine on the loihi2 profile (quantized for T = 128).
  Every lavaconv synapse delays by one step, as on Lava and Loihi, while SpikingJelly's step
  runs all layers at once: the float engine is also read at T + L, L the synapses on the
  longest input-to-readout path (:func:`longest_delay`), so that its readout has integrated T
  steps of the whole network's signal (same run and throughput); and its two Loihi 2 graphs,
  integer: the stock LIF soft-reset graph (``--maxpool relu``) and ``--neuron sigma-delta``.

Throughput is items x timesteps per second of simulation (input encoding included, conversion
and calibration excluded), with the same batch size for both and ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lavaconv  # noqa: E402
from examples import models  # noqa: E402
from lavaconv.ir.network import IF, MaxPool, Network, SigmaDelta  # noqa: E402
from lavaconv.sim import evaluation, heap  # noqa: E402

STEPS = [16, 32, 64, 128]
MODELS = {"vgg": ("vgg_fmnist.pt2", models.VGGStyle, "vgg_state_dict.pt"),
          "resnet": ("resnet_fmnist.pt2", models.ResNetStyle, "resnet_state_dict.pt")}
SJ_CALIB_BATCH = 100  # SpikingJelly's MNIST example calibrates on batches of 100
SEED = 0


def plain_ann(name: str) -> nn.Module:
    """The bundled model ``name`` as a plain ``nn.Module`` in eval mode."""
    _, cls, weights = MODELS[name]
    model = cls()
    model.load_state_dict(torch.load(ROOT / "examples" / weights, weights_only=True))
    return model.eval()


def relus_as_modules(model: nn.Module) -> fx.GraphModule:
    """``model`` traced, with every functional ReLU called through an ``nn.ReLU`` module."""
    gm = fx.symbolic_trace(model)
    for node in list(gm.graph.nodes):
        functional = node.op == "call_function" and node.target in (F.relu, torch.relu)
        method = node.op == "call_method" and node.target == "relu"
        if not (functional or method):
            continue
        name = f"relu_{node.name}"
        gm.add_submodule(name, nn.ReLU())
        with gm.graph.inserting_after(node):
            replacement = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


def spikingjelly_recipes(calib: list[torch.Tensor]) -> dict:
    """SpikingJelly's conversion recipes compared, by label (see the module docstring)."""
    from spikingjelly.activation_based import ann2snn

    return {
        "spikingjelly 99.9%": ann2snn.RateCodingRecipe(dataloader=calib, mode="99.9%"),
        "spikingjelly 99.9% channel-wise, half threshold": ann2snn.RateCodingRecipe(
            dataloader=calib, mode="99.9%", channel_wise=True, half_threshold=True),
        "spikingjelly LTB": ann2snn.LocalThresholdBalancingRecipe(dataloader=calib),
    }


def spikingjelly_run(ann: nn.Module, recipe, x: np.ndarray, y: np.ndarray, batch: int) -> dict:
    """Convert ``ann`` with a SpikingJelly recipe and simulate it step by step."""
    from spikingjelly.activation_based import ann2snn, functional, neuron

    snn = ann2snn.FXConverter(recipe, device="cpu").convert(relus_as_modules(ann)).eval()
    correct = dict.fromkeys(STEPS, 0)
    start_time = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(x), batch):
            xb = torch.from_numpy(x[start:start + batch])
            yb = torch.from_numpy(y[start:start + batch])
            functional.reset_net(snn)
            out = torch.zeros(())
            for t in range(1, STEPS[-1] + 1):
                out = out + snn(xb)
                if t in correct:
                    correct[t] += int((out.argmax(1) == yb).sum())
    elapsed = time.perf_counter() - start_time
    return {"accuracy": {t: c / len(x) for t, c in correct.items()},
            "item_steps_per_s": len(x) * STEPS[-1] / elapsed,
            "if_layers": sum(isinstance(m, neuron.BaseNode) for m in snn.modules())}


def longest_delay(net: Network) -> int:
    """Steps until the readout first receives input along the longest path (one per synapse;
    a max-pool gate adds none): the whole network's signal reaches the readout from then."""
    delay: dict[str, int] = {}

    def of(name: str) -> int:
        if name not in delay:
            node = net.nodes[name]
            incoming = [of(s.source) + 1 for s in net.synapses if s.target == name]
            delay[name] = of(node.source) if isinstance(node, MaxPool) else max(incoming,
                                                                                 default=0)
        return delay[name]

    return of(net.output_name)


def lavaconv_runs(snn: lavaconv.Converted) -> dict[str, dict]:
    """The float engine, read at T and at T + the longest delay, and the integer engine
    (loihi2) at T, on ``snn``'s evaluation items."""
    lag = longest_delay(snn.network)
    q = snn.quantize("loihi2", timesteps=STEPS[-1])
    out = {}
    for key, net, reads in (("float", snn, STEPS + [t + lag for t in STEPS]),
                            ("loihi2 int", q, STEPS)):
        accuracy = net.simulate(reads)
        layers = sum(isinstance(n, IF) for n in net.network.nodes.values())
        speed = 1.0 / net.results["simulate"].seconds_per_step
        out[key] = {"accuracy": {t: accuracy[t] for t in STEPS}, "item_steps_per_s": speed,
                    "if_layers": layers}
        if key == "float":
            out[f"float, read at T + {lag}"] = {
                "accuracy": {t: accuracy[t + lag] for t in STEPS}, "item_steps_per_s": speed,
                "if_layers": layers}
    return out


def stock_runs(pt2: Path, items: int, calib_items: int) -> dict[str, dict]:
    """lavaconv's Loihi 2 graphs, integer (loihi2): the stock LIF soft-reset graph (max-pools
    from IF units) and the sigma-delta network (stock SigmaDelta units)."""
    out = {}
    for key, methods in (("stock LIF graph int", {"maxpool": "relu"}),
                         ("sigma-delta int", {"neuron": "sigma-delta"})):
        snn = lavaconv.convert(pt2, data="fashion-mnist", samples=items,
                               calib_samples=calib_items, seed=SEED, **methods)
        q = snn.quantize("loihi2", timesteps=STEPS[-1], stock="neuron" not in methods)
        accuracy = q.simulate(STEPS)
        layers = sum(isinstance(n, (IF, SigmaDelta)) for n in q.network.nodes.values())
        out[key] = {"accuracy": {t: accuracy[t] for t in STEPS}, "if_layers": layers,
                    "item_steps_per_s": 1.0 / q.results["simulate"].seconds_per_step}
    return out


def bench_model(name: str, items: int, calib_items: int) -> dict:
    pt2 = ROOT / "examples" / MODELS[name][0]
    snn = lavaconv.convert(pt2, data="fashion-mnist", samples=items, calib_samples=calib_items,
                           seed=SEED)
    data = snn.dataset
    ann = plain_ann(name)
    with torch.no_grad():
        plain_acc = float((ann(torch.from_numpy(data.x_eval)).argmax(1).numpy()
                           == data.y_eval).mean())
    batch = evaluation.auto_batch(snn.network, STEPS[-1])
    runs = {f"lavaconv {k}": v
            for k, v in {**lavaconv_runs(snn), **stock_runs(pt2, items, calib_items)}.items()}
    calib = [torch.from_numpy(data.x_calib[i:i + SJ_CALIB_BATCH])
             for i in range(0, len(data.x_calib), SJ_CALIB_BATCH)]
    for label, recipe in spikingjelly_recipes(calib).items():
        runs[label] = spikingjelly_run(ann, recipe, data.x_eval, data.y_eval, batch)
    return {"ann_accuracy": snn.ann_accuracy, "plain_module_accuracy": plain_acc,
            "batch": batch, "runs": runs}


def table(results: dict) -> str:
    """The results as a markdown table (accuracy in %, throughput in item-steps per s)."""
    head = ("| model (ANN %) | converter | IF layers | " + " | ".join(f"T={t}" for t in STEPS)
            + " | item-steps/s |")
    lines = [head, "|" + "---|" * (len(STEPS) + 4)]
    for model, res in results["models"].items():
        for conv, run in res["runs"].items():
            acc = " | ".join(f"{100 * run['accuracy'][t]:.2f}" for t in STEPS)
            lines.append(f"| {model} ({100 * res['ann_accuracy']:.2f}) | {conv} | "
                         f"{run['if_layers']} | {acc} | {run['item_steps_per_s']:,.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--calib-items", type=int, default=60000)
    parser.add_argument("--models", default="vgg,resnet")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "peers.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    heap.keep_freed_memory()  # as the CLI does
    torch.manual_seed(SEED)
    from importlib.metadata import version

    results = {"items": args.items, "calib_items": args.calib_items, "threads": args.threads,
               "versions": {p: version(p) for p in ("spikingjelly", "torch", "lavaconv")},
               "cpu_count": os.cpu_count(), "load_before": os.getloadavg()[0], "models": {}}
    for name in args.models.split(","):
        results["models"][name] = bench_model(name, args.items, args.calib_items)
        print(f"{name} done", file=sys.stderr)
    results["load_after"] = os.getloadavg()[0]
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
