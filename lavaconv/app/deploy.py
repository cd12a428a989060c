"""``lavaconv deploy``: quantize, evaluate, run on Lava, prove bit-exactness, measure energy,
write the report (HTML, Markdown, JSON)."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

import numpy as np

from lavaconv import distributed
from lavaconv.app.commands import Prepared, integer_network
from lavaconv.app.outputs import atomic_dir, write_json
from lavaconv.app.report import deploy_html, deploy_markdown, deploy_summary
from lavaconv.cost import energy
from lavaconv.cost.counting import ann_macs
from lavaconv.cost.profiles import Profile, load_profile
from lavaconv.cost.resources import estimate
from lavaconv.errors import LavaconvError
from lavaconv.ir.network import Network
from lavaconv.sim import evaluation
from lavaconv.sim.engine import encode_input, readout_scores, simulate, state_bounds

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
    out = net.nodes[net.output_name]
    expected = engine.readout[steps]
    if out.mode == "softmax":  # classes are sampled off-chip from v: Lava's part is v
        expected = readout_scores(out, engine.readout_input, [steps], state_bounds(net, out),
                                  "potential")[0][steps]
    if not np.array_equal(expected.cpu().numpy(), lava.readout):
        bad.append(net.output_name)
    return bad


def _lava_check(net_int: Network, x: np.ndarray, steps: int, seed: int, target: str,
                progress: bool) -> dict:
    """Run ``x`` through Lava and the engine on the same payload; raise on any difference."""
    from lavaconv.lava import run_lava

    payload = encode_input(net_int, x, steps, seed=seed)
    engine = simulate(net_int, payload)
    t0 = time.perf_counter()
    simulate(net_int, payload[:, :1])  # one item, as Lava runs them: the like-for-like speed
    engine_seconds = (time.perf_counter() - t0) / steps
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


def _snn_profiles(profile: Profile) -> list[Profile]:
    """The default neuromorphic profiles, plus the deploy profile where it is another one (a
    user's copy of loihi2 with energy figures, say)."""
    chosen = energy.profiles_of(energy.DEFAULT_SNN_PROFILES, "neuromorphic")
    return chosen + ([profile] if profile.name not in energy.DEFAULT_SNN_PROFILES else [])


def _energy(prep: Prepared, net_int: Network, profile: Profile,
            int_eval: evaluation.SnnEval) -> dict:
    """The report's energy section: the ANN's MACs, the integer SNN's activity on the items."""
    layers = ann_macs(prep.model.graph_module, tuple(prep.dataset.x_eval.shape[1:]))
    ann = energy.profiles_of(energy.DEFAULT_ANN_PROFILES, "ann")
    return energy.summarize(layers, ann, net_int, energy.activity(int_eval),
                            _snn_profiles(profile))


def build_report(args: argparse.Namespace, prep: Prepared) -> tuple[dict, Network]:
    """Quantize, evaluate, estimate resources and energy: the report but its Lava check, and
    the integer network."""
    profile = load_profile(args.profile)
    steps = args.timesteps
    data = prep.dataset
    progress, device = not args.quiet, distributed.device(args.device)
    if steps < prep.net.depth():
        raise LavaconvError(f"--timesteps {steps} is shorter than the network's depth "
                            f"{prep.net.depth()}")
    checkpoints = sorted({t for t in CHECKPOINTS if prep.net.depth() <= t < steps} | {steps})
    net_int, quant = integer_network(prep, profile, steps, args.weights)
    calib = evaluation.evaluate(net_int, data.x_calib[:256], data.y_calib[:256], [steps],
                              seed=args.seed, device=device, progress=progress)
    for q in quant:
        q.saturated = calib.saturated.get(q.name, 0.0)
    float_eval = evaluation.evaluate(prep.net, data.x_eval, data.y_eval, checkpoints,
                                   seed=args.seed, device=device, progress=progress)
    int_eval = evaluation.evaluate(net_int, data.x_eval, data.y_eval, checkpoints,
                                 seed=args.seed, device=device, progress=progress,
                                 per_neuron=True)
    resources = estimate(net_int, profile)
    energy_section = _energy(prep, net_int, profile, int_eval)
    report = {
        "model": str(args.model), "data": args.data, "items": len(data.y_eval),
        "options": prep.options.describe(),
        "profile": profile.name, "weights": args.weights, "target": args.target,
        "ann_accuracy": prep.ann_accuracy,
        "snn_accuracy": int_eval.accuracy, "snn_accuracy_float": float_eval.accuracy,
        "spike_rate": int_eval.spike_rate,
        "engine": {"seconds_per_step": int_eval.seconds_per_step},
        "quantization": [asdict(q) for q in quant],
        "resources": resources,
        "energy": energy_section,
    }
    return report, net_int


def run_deploy(args: argparse.Namespace, prep: Prepared) -> int:
    report, net_int = build_report(args, prep)
    steps, data, progress = args.timesteps, prep.dataset, not args.quiet
    hardware_missing = args.target == "loihi2" and not _loihi2_available()
    with atomic_dir(args.out, inputs=(args.model, args.data)) as tmp:
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
        (tmp / "report.md").write_text(deploy_markdown(report))
        (tmp / "report.html").write_text(deploy_html(report))
    print(deploy_summary(report, args.out))
    if hardware_missing:
        raise LavaconvError(f"--target loihi2: {LOIHI2_MISSING}; the integer network and the "
                            f"resource estimate are in {args.out}: on an INRC system with "
                            f"lava-loihi run the same command there")
    if not report["lava"]["bit_exact"]:
        print(f"lavaconv: error: Lava and the engine differ in {report['lava']['mismatched']} "
              f"(see {args.out}/report.json)")
        return 1
    return 0
