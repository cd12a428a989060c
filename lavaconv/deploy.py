"""``lavaconv deploy``: quantize, evaluate, run on Lava, prove bit-exactness, measure energy,
write the report (HTML, Markdown, JSON)."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

import numpy as np

from lavaconv import distributed, energy, pipeline, stock
from lavaconv.commands import Prepared, integer_network
from lavaconv.counting import ann_macs
from lavaconv.engine import encode_input, readout_scores, simulate, state_bounds
from lavaconv.errors import LavaconvError
from lavaconv.network import Network
from lavaconv.outputs import atomic_dir, write_json
from lavaconv.profiles import Profile, load_profile
from lavaconv.report import deploy_html, deploy_markdown, deploy_summary
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
    out = net.nodes[net.output_name]
    expected = engine.readout[steps]
    if out.mode == "softmax":  # classes are sampled off-chip from v: Lava's part is v
        expected = readout_scores(out, engine.readout_input, [steps], state_bounds(net, out),
                                  "potential")[0][steps]
    if not np.array_equal(expected.cpu().numpy(), lava.readout):
        bad.append(net.output_name)
    return bad


def choose_graph(args: argparse.Namespace, net: Network) -> bool:
    """Whether to deploy the graph of stock Lava processes (:mod:`lavaconv.lava.stock`):
    ``--graph stock``, or ``auto`` where the options allow it; refuses (one line naming the
    option and the stock alternative) what ``--target loihi2`` or ``--graph stock`` cannot
    build."""
    reasons = stock.obstacles(net, args.weights)
    graph = getattr(args, "graph", "auto")
    if graph == "ours":
        if args.target == "loihi2":
            raise LavaconvError("--target loihi2 with --graph ours: lavaconv's processes have no "
                                "Loihi 2 model; use --graph stock (or auto)")
        return False
    if reasons and (graph == "stock" or args.target == "loihi2"):
        raise LavaconvError(f"--target {args.target} --graph {graph}: {reasons[0]}")
    return not reasons


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
        "process_classes": lava.process_classes,
        "hardware": lava.hardware,
    }


def _snn_profiles(profile: Profile) -> list[Profile]:
    """The default neuromorphic profiles, plus the deploy profile where it is another one (a
    user's copy of loihi2 with energy figures, say)."""
    chosen = energy.profiles_of(energy.DEFAULT_SNN_PROFILES, "neuromorphic")
    return chosen + ([profile] if profile.name not in energy.DEFAULT_SNN_PROFILES else [])


def _energy(prep: Prepared, net_int: Network, profile: Profile,
            int_eval: pipeline.SnnEval) -> dict:
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
    use_stock = choose_graph(args, prep.net)
    net_int, quant = integer_network(prep, profile, steps, args.weights, stock=use_stock)
    calib = pipeline.evaluate(net_int, data.x_calib[:256], data.y_calib[:256], [steps],
                              seed=args.seed, device=device, progress=progress)
    for q in quant:
        q.saturated = calib.saturated.get(q.name, 0.0)
    float_eval = pipeline.evaluate(prep.net, data.x_eval, data.y_eval, checkpoints,
                                   seed=args.seed, device=device, progress=progress)
    int_eval = pipeline.evaluate(net_int, data.x_eval, data.y_eval, checkpoints,
                                 seed=args.seed, device=device, progress=progress,
                                 per_neuron=True)
    resources = estimate(net_int, profile)
    energy_section = _energy(prep, net_int, profile, int_eval)
    report = {
        "model": str(args.model), "data": args.data, "items": len(data.y_eval),
        "options": prep.options.describe(),
        "profile": profile.name, "weights": args.weights, "target": args.target,
        "graph": "stock" if use_stock else "ours",
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
    with atomic_dir(args.out) as tmp:
        (tmp / "network").mkdir()
        net_int.save(tmp / "network")
        (tmp / "network_float").mkdir()
        prep.net.save(tmp / "network_float")
        k = min(args.lava_samples, len(data.x_eval))
        # without lava-loihi the same graph runs on the CPU with Lava's bit-accurate models
        report["lava"] = _lava_check(net_int, data.x_eval[:k], steps, args.seed,
                                     "sim" if hardware_missing else args.target, progress)
        report["hardware"] = report["lava"]["hardware"]
        write_json(tmp / "report.json", report)
        (tmp / "report.md").write_text(deploy_markdown(report))
        (tmp / "report.html").write_text(deploy_html(report))
    print(deploy_summary(report, args.out))
    if hardware_missing:
        raise LavaconvError(f"--target loihi2: {LOIHI2_MISSING}; the graph ran on the CPU "
                            f"(Lava's bit-accurate models) and everything is in {args.out}: on "
                            "an INRC system with lava-loihi run the same command there")
    if not report["lava"]["bit_exact"]:
        print(f"lavaconv: error: Lava and the engine differ in {report['lava']['mismatched']} "
              f"(see {args.out}/report.json)")
        return 1
    return 0
