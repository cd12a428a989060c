"""Speed bench (issue 20): the engine against the ANN's forward and SpikingJelly, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/speed.py [--items 200] [--timesteps 64]
        [--rounds 3] [--models vgg,resnet] [--baseline DIR] [--out docs/speed.json]

For each bundled model, on the same first ``--items`` Fashion-MNIST test items and the same
batch (lavaconv's float batch for T), each runner simulates every item for T steps; the
runners take turns, ``--rounds`` times, and each keeps its fastest round (the machine is
shared; the load average is printed). Throughput is item-steps per second:

- lavaconv float, int (loihi2 profile) and stock int (the loihi2 profile's graph of stock
  Lava processes, what ``deploy`` runs by default): ``engine.simulate`` with input encoding,
  as ``lavaconv eval`` runs it;
- ``--baseline DIR``: the same three with ``DIR/lavaconv/sim/engine.py`` (another checkout,
  say the commit before a change), on the same networks;
- the dense limit: the ANN's forward on the batch, T times (one forward per item-step): the
  trained ``nn.Module`` (BatchNorm apart) and lavaconv's canonical graph (BatchNorm folded);
  the faster one is the limit;
- SpikingJelly 2.0 ``ann2snn`` (``RateCodingRecipe(mode="99.9%")``, see ``bench/peers.py``),
  stepped as its example does, when installed (``make peers-deps``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import peers  # noqa: E402

import lavaconv  # noqa: E402
from lavaconv.sim import engine, evaluation, heap  # noqa: E402

SJ_CALIB_ITEMS = 2000  # SpikingJelly's thresholds: speed does not depend on them


def load_engine(checkout: Path):
    """``lavaconv/sim/engine.py`` of another checkout, as a module of its own, with that
    checkout's ``kernels.py`` where it has one (their signatures change together)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(
            f"baseline_{name}", checkout / "lavaconv" / "sim" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module

    module = load("engine")
    if (checkout / "lavaconv" / "sim" / "kernels.py").exists():
        module.kernels = load("kernels")
    return module


def engine_runner(eng, net, x: np.ndarray, steps: int, batch: int):
    def run() -> None:
        for start in range(0, len(x), batch):
            eng.simulate(net, eng.encode_input(net, x[start:start + batch], steps), [steps])
    return run


def ann_runner(model, x: np.ndarray, steps: int, batch: int):
    batches = [torch.from_numpy(x[i:i + batch]) for i in range(0, len(x), batch)]

    def run() -> None:
        with torch.no_grad():
            for xb in batches:
                for _ in range(steps):
                    model(xb)
    return run


def spikingjelly_runner(name: str, data, steps: int, batch: int):
    from spikingjelly.activation_based import ann2snn, functional

    calib = [torch.from_numpy(data.x_calib[i:i + peers.SJ_CALIB_BATCH])
             for i in range(0, len(data.x_calib), peers.SJ_CALIB_BATCH)]
    recipe = ann2snn.RateCodingRecipe(dataloader=calib, mode="99.9%")
    snn = ann2snn.FXConverter(recipe, device="cpu").convert(
        peers.relus_as_modules(peers.plain_ann(name))).eval()
    batches = [torch.from_numpy(data.x_eval[i:i + batch]) for i in range(0, len(data.x_eval),
                                                                          batch)]

    def run() -> None:
        with torch.no_grad():
            for xb in batches:
                functional.reset_net(snn)
                out = torch.zeros(())
                for _ in range(steps):
                    out = out + snn(xb)
    return run


def bench_model(name: str, args: argparse.Namespace) -> dict:
    pt2 = ROOT / "examples" / peers.MODELS[name][0]
    snn = lavaconv.convert(pt2, data="fashion-mnist", samples=args.items,
                           calib_samples=SJ_CALIB_ITEMS, seed=0)
    q = snn.quantize("loihi2", timesteps=args.timesteps)
    x, steps = snn.dataset.x_eval, args.timesteps
    batch = evaluation.auto_batch(snn.network, steps)
    stock = snn.quantize("loihi2", timesteps=args.timesteps, stock=True)
    runners = {"lavaconv float": engine_runner(engine, snn.network, x, steps, batch),
               "lavaconv int": engine_runner(engine, q.network, x, steps, batch),
               "lavaconv stock int": engine_runner(engine, stock.network, x, steps, batch)}
    if args.baseline:
        base = load_engine(args.baseline)
        runners["baseline float"] = engine_runner(base, snn.network, x, steps, batch)
        runners["baseline int"] = engine_runner(base, q.network, x, steps, batch)
        runners["baseline stock int"] = engine_runner(base, stock.network, x, steps, batch)
    runners["ANN nn.Module"] = ann_runner(peers.plain_ann(name), x, steps, batch)
    runners["ANN BN folded"] = ann_runner(snn.model, x, steps, batch)
    if importlib.util.find_spec("spikingjelly") is not None:
        runners["spikingjelly 99.9%"] = spikingjelly_runner(name, snn.dataset, steps, batch)
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(args.rounds):
        for label, run in runners.items():
            start = time.perf_counter()
            run()
            best[label] = min(best[label], time.perf_counter() - start)
    rate = {label: len(x) * steps / seconds for label, seconds in best.items()}
    dense = max(rate["ANN nn.Module"], rate["ANN BN folded"])
    ratios = {}
    for mode in ("float", "int", "stock int"):
        mine = rate[f"lavaconv {mode}"]
        ratios[f"{mode} / dense limit"] = mine / dense
        if "spikingjelly 99.9%" in rate:
            ratios[f"{mode} / spikingjelly"] = mine / rate["spikingjelly 99.9%"]
        if args.baseline and f"baseline {mode}" in rate:
            ratios[f"{mode} / baseline"] = mine / rate[f"baseline {mode}"]
    return {"batch": batch, "item_steps_per_s": rate, "ratios": ratios}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--timesteps", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="vgg,resnet")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline", type=Path, help="a checkout whose engine to time as well")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    heap.keep_freed_memory()  # as the CLI does
    results = {"items": args.items, "timesteps": args.timesteps, "rounds": args.rounds,
               "threads": args.threads, "cpu_count": os.cpu_count(),
               "load_before": os.getloadavg()[0], "models": {}}
    for name in args.models.split(","):
        results["models"][name] = bench_model(name, args)
    results["load_after"] = os.getloadavg()[0]
    for name, res in results["models"].items():
        print(f"{name} (batch {res['batch']}, T={args.timesteps}, {args.items} items)")
        for label, rate in res["item_steps_per_s"].items():
            print(f"  {label:24s} {rate:10,.0f} item-steps/s")
        for label, ratio in res["ratios"].items():
            print(f"  {label:24s} {ratio:10.2f}x")
    print(f"load average {results['load_before']:.1f} before, {results['load_after']:.1f} after "
          f"({results['cpu_count']} CPUs)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
