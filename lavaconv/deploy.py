"""``lavaconv deploy``: quantize, evaluate, run on Lava, prove bit-exactness, write the report."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

import numpy as np

from lavaconv import pipeline
from lavaconv.commands import Prepared, integer_network
from lavaconv.engine import encode_input, simulate
from lavaconv.errors import LavaconvError
from lavaconv.network import Network
from lavaconv.outputs import atomic_dir, write_json
from lavaconv.profiles import load_profile
from lavaconv.resources import estimate

CHECKPOINTS = (8, 16, 32, 64, 128, 256)
LOIHI2_MISSING = "Intel's Loihi 2 extension (lava-loihi, for INRC members) is not importable"


def _loihi2_available() -> bool:
    from lavaconv.lava import loihi2_available

    return loihi2_available()


def compare(net: Network, engine, lava) -> list[str]:
    """Populations (and the readout) whose Lava results differ from the engine's."""
    bad = [name for name, counts in engine.spike_counts.items()
           if not np.array_equal(counts.cpu().numpy(), lava.spike_counts[name])]
    steps = max(engine.readout)
    if not np.array_equal(engine.readout[steps].cpu().numpy(), lava.readout):
        bad.append(net.output_name)
    return bad


def _lava_check(net_int: Network, x: np.ndarray, steps: int, seed: int, target: str,
                progress: bool) -> dict:
    """Run ``x`` through Lava and the engine on the same payload; raise on any difference."""
    from lavaconv.lava import run_lava

    payload = encode_input(net_int, x, steps, seed=seed)
    t0 = time.perf_counter()
    engine = simulate(net_int, payload)
    engine_seconds = (time.perf_counter() - t0) / (steps * len(x))
    lava = run_lava(net_int, payload.numpy(), tag="fixed_pt", target=target,
                    progress=progress)
    bad = compare(net_int, engine, lava)
    return {
        "bit_exact": not bad,
        "mismatched": bad,
        "samples": len(x),
        "timesteps": steps,
        "seconds_per_step": lava.seconds_per_step,
        "startup_seconds": lava.startup_seconds,
        "engine_batch1_seconds_per_step": engine_seconds,
        "target": target,
    }


def _report_md(report: dict) -> str:
    lines = [f"# lavaconv deploy report: {report['model']}", "",
             f"- data: {report['data']}, {report['items']} evaluation items",
             f"- neuron {report['options']['neuron']}, norm {report['options']['norm']}, input "
             f"{report['options']['input']}, profile {report['profile']}",
             f"- ANN accuracy: {100 * report['ann_accuracy']:.2f} %", "",
             "| T | float SNN % | integer SNN % |", "|---|---|---|"]
    for t, acc in report["snn_accuracy"].items():
        lines.append(f"| {t} | {100 * report['snn_accuracy_float'][t]:.2f} | {100 * acc:.2f} |")
    lava = report["lava"]
    if "status" in lava:
        lines += ["", f"Lava ({lava['target']}): {lava['status']}"]
    else:
        lines += ["", f"Lava ({lava['target']}, fixed_pt): {lava['samples']} items x "
              f"{lava['timesteps']} steps, bit-exact with the engine: {lava['bit_exact']}; "
              f"{1e3 * lava['seconds_per_step']:.2f} ms per step "
              f"(engine batch-1: {1e3 * lava['engine_batch1_seconds_per_step']:.3f} ms; "
              f"engine batched: {1e3 * report['engine']['seconds_per_step']:.4f} ms per item-step)"]
    lines += ["", "## Quantization", "",
              "| layer | vth | a_exp | weight err | bias err | saturated |", "|---|---|---|---|---|---|"]
    for q in report["quantization"]:
        lines.append(f"| {q['name']} | {q['vth_int']} | {q['a_exp']} | "
                     f"{q['weight_rel_error']:.4f} | {q['bias_rel_error']:.4f} | "
                     f"{q['saturated']:.2e} |")
    res = report["resources"]
    lines += ["", f"## Resources on {report['profile']}", "",
              f"{res['total_cores']} cores on {res['chips']} chip(s); fits: {res['fits']}", ""]
    return "\n".join(lines) + "\n"


def run_deploy(args: argparse.Namespace, prep: Prepared) -> int:
    profile = load_profile(args.profile)
    steps = args.timesteps
    data = prep.dataset
    progress = not args.quiet
    if steps < prep.net.depth():
        raise LavaconvError(f"--timesteps {steps} is shorter than the network's depth "
                            f"{prep.net.depth()}")
    checkpoints = sorted({t for t in CHECKPOINTS if prep.net.depth() <= t < steps} | {steps})
    net_int, quant = integer_network(prep, profile, steps)
    calib = pipeline.evaluate(net_int, data.x_calib[:256], data.y_calib[:256], [steps],
                              seed=args.seed, progress=progress)
    for q in quant:
        q.saturated = calib.saturated.get(q.name, 0.0)
    float_eval = pipeline.evaluate(prep.net, data.x_eval, data.y_eval, checkpoints,
                                   seed=args.seed, progress=progress)
    int_eval = pipeline.evaluate(net_int, data.x_eval, data.y_eval, checkpoints,
                                 seed=args.seed, progress=progress)
    resources = estimate(net_int, profile)
    report = {
        "model": str(args.model), "data": args.data, "items": len(data.y_eval),
        "options": {k: prep.net.meta[k] for k in ("neuron", "norm", "input")},
        "profile": profile.name, "target": args.target,
        "ann_accuracy": prep.ann_accuracy,
        "snn_accuracy": int_eval.accuracy, "snn_accuracy_float": float_eval.accuracy,
        "spike_rate": int_eval.spike_rate,
        "engine": {"seconds_per_step": int_eval.seconds_per_step},
        "quantization": [asdict(q) for q in quant],
        "resources": resources,
    }
    hardware_missing = args.target == "loihi2" and not _loihi2_available()
    with atomic_dir(args.out) as tmp:
        (tmp / "network").mkdir()
        net_int.save(tmp / "network")
        (tmp / "network_float").mkdir()
        prep.net.save(tmp / "network_float")
        k = min(args.lava_samples, len(data.x_eval))
        if hardware_missing:
            report["lava"] = {"target": "loihi2", "status": "not run: " + LOIHI2_MISSING}
        else:
            report["lava"] = _lava_check(net_int, data.x_eval[:k], steps, args.seed,
                                         args.target, progress)
        write_json(tmp / "report.json", report)
        (tmp / "report.md").write_text(_report_md(report))
    print(_report_md(report))
    if hardware_missing:
        raise LavaconvError(f"--target loihi2: {LOIHI2_MISSING}; the integer network and the "
                            f"resource estimate are in {args.out}: on an INRC system with "
                            f"lava-loihi run the same command there")
    if not report["lava"]["bit_exact"]:
        print(f"lavaconv: error: Lava and the engine differ in {report['lava']['mismatched']} "
              f"(see {args.out}/report.json)")
        return 1
    return 0
