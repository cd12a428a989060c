"""``lavaconv deploy``: quantize, evaluate, run on Lava, prove bit-exactness, measure energy,
write the report (HTML, Markdown, JSON)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lavaconv import distributed
from lavaconv.app.outputs import atomic_dir, write_json
from lavaconv.app.report import deploy_html, deploy_markdown, deploy_summary
from lavaconv.app.session import Prepared, integer_network
from lavaconv.conversion import ConvertOptions, build_network
from lavaconv.cost import energy
from lavaconv.cost.counting import ann_macs
from lavaconv.cost.profiles import Profile, load_profile
from lavaconv.cost.resources import estimate
from lavaconv.errors import LavaconvError, check_int
from lavaconv.ir.network import Network
from lavaconv.ir.stock import obstacles
from lavaconv.quantize.integer import WEIGHT_SCALES
from lavaconv.sim import evaluation

CHECKPOINTS = (8, 16, 32, 64, 128, 256)
TARGETS = ("sim", "loihi2")
GRAPHS = ("auto", "stock", "ours")
LOIHI2_MISSING = "Intel's Loihi 2 extension (lava-loihi, for INRC members) is not importable"


@dataclass(frozen=True)
class DeployConfig:
    """What ``deploy`` does with a prepared network."""

    target: str = "sim"  # sim: Lava's CPU simulator; loihi2: Loihi 2 through lava-loihi
    timesteps: int = 64
    profile: str = "loihi2"  # profile name or YAML path
    weights: str = "layer"  # integer weight scale: layer | channel
    lava_samples: int = 2  # items run through Lava and compared with the engine
    out: str | Path = "out/deploy"
    graph: str = "auto"  # stock: stock Lava processes only; ours: lavaconv's; auto: stock if able
    compare_rate: bool = False  # sigma-delta: also the rate-coded stock graph on the same items

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise LavaconvError(f"target {self.target!r}: expected one of {', '.join(TARGETS)}")
        if self.weights not in WEIGHT_SCALES:
            raise LavaconvError(f"weights {self.weights!r}: expected one of "
                                f"{', '.join(WEIGHT_SCALES)}")
        if self.graph not in GRAPHS:
            raise LavaconvError(f"graph {self.graph!r}: expected one of {', '.join(GRAPHS)}")
        if self.target == "loihi2" and self.graph == "ours":
            raise LavaconvError("--target loihi2 with --graph ours: lavaconv's processes have no "
                                "Loihi 2 model; use --graph stock (or auto)")
        check_int("timesteps", self.timesteps, 1)
        check_int("lava_samples", self.lava_samples, 1)


def choose_graph(net: Network, config: DeployConfig) -> bool:
    """Whether to deploy the graph of stock Lava processes (:mod:`lavaconv.lava.stock`):
    ``--graph stock``, or ``auto`` where the options allow it; refuses (one line naming the
    option and the stock alternative) what ``--target loihi2`` or ``--graph stock`` cannot
    build."""
    if config.graph == "ours" or net.is_sigma_delta:  # sigma-delta: stock SigmaDelta already
        return False
    reasons = obstacles(net, config.weights)
    if reasons and (config.graph == "stock" or config.target == "loihi2"):
        raise LavaconvError(f"--target {config.target} --graph {config.graph}: {reasons[0]}")
    return not reasons


def _loihi2_available() -> bool:
    from lavaconv.lava import loihi2_available

    return loihi2_available()


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
    return energy.summarize(layers, ann, net_int, int_eval.activity, _snn_profiles(profile))


def build_report(prep: Prepared, config: DeployConfig) -> tuple[dict, Network]:
    """Quantize, evaluate, estimate resources and energy: the report but its Lava check, and
    the integer network. The integer SNN runs once, on the evaluation items: its accuracy, the
    activity energy counts, and how often each layer's state saturated all come from that run.
    ``seconds``: the wall time of each part (``prepare`` from :func:`prepare`)."""
    profile = load_profile(config.profile)
    clock = time.perf_counter()
    seconds = dict(prep.seconds)

    def lap(part: str) -> None:
        nonlocal clock
        seconds[part] = time.perf_counter() - clock
        clock = time.perf_counter()

    steps = config.timesteps
    data, run = prep.dataset, prep.config
    progress, device = run.progress, distributed.device(run.device)
    if steps < prep.net.depth():
        raise LavaconvError(f"--timesteps {steps} is shorter than the network's depth "
                            f"{prep.net.depth()}")
    checkpoints = sorted({t for t in CHECKPOINTS if prep.net.depth() <= t < steps} | {steps})
    use_stock = choose_graph(prep.net, config)
    net_int, quant = prep.integer(profile, steps, config.weights, stock=use_stock)
    lap("quantize")
    float_eval = evaluation.evaluate(prep.net, data.x_eval, data.y_eval, checkpoints,
                                     seed=run.seed, device=device, progress=progress)
    lap("float_snn")
    int_eval = evaluation.evaluate(net_int, data.x_eval, data.y_eval, checkpoints,
                                   seed=run.seed, device=device, progress=progress,
                                   per_neuron=True)
    lap("integer_snn")
    for q in quant:
        q.saturated = int_eval.saturated.get(q.name, 0.0)
    energy_section = _energy(prep, net_int, profile, int_eval)
    lap("energy")
    rate = _rate_coded(prep, profile, steps, checkpoints) if config.compare_rate else None
    if rate:
        lap("rate_coded")
    report = {
        "model": str(run.model), "data": run.data, "items": len(data.y_eval),
        "options": prep.options.describe(),
        "profile": profile.name, "weights": config.weights, "target": config.target,
        "graph": "stock" if use_stock else "ours",
        "ann_accuracy": prep.ann_accuracy,
        "snn_accuracy": int_eval.accuracy, "snn_accuracy_float": float_eval.accuracy,
        "spike_rate": int_eval.spike_rate,
        "engine": {"seconds_per_step": int_eval.seconds_per_step},
        "quantization": [asdict(q) for q in quant],
        "resources": estimate(net_int, profile),
        "energy": energy_section,
        **({"rate_coded": rate} if rate else {}),
        "seconds": seconds,
    }
    return report, net_int


#: what --compare-rate runs next to a sigma-delta network: the CLI's rate-coded defaults on the
#: stock LIF graph (max-pools from IF units)
RATE_CODED = ConvertOptions(maxpool="relu")


def _rate_coded(prep: Prepared, profile: Profile, steps: int, checkpoints: list[int]) -> dict:
    """The rate-coded network (:data:`RATE_CODED`) from the same statistics, quantized for the
    stock graph, on the same items: accuracy and energy, for the report's comparison."""
    if not prep.net.is_sigma_delta:
        raise LavaconvError("--compare-rate compares a sigma-delta network with rate coding; "
                            "use it with --neuron sigma-delta")
    data, run = prep.dataset, prep.config
    net = build_network(prep.model.graph_module, data.x_calib, prep.stats, RATE_CODED,
                        seed=run.seed)
    if steps < net.depth():
        raise LavaconvError(f"--compare-rate: --timesteps {steps} is shorter than the "
                            f"rate-coded network's depth {net.depth()}")
    q, _ = integer_network(net, profile, steps, data.x_calib, stock=True)
    ev = evaluation.evaluate(q, data.x_eval, data.y_eval, checkpoints, seed=run.seed,
                             device=distributed.device(run.device), progress=run.progress,
                             per_neuron=True)
    return {"options": RATE_CODED.describe(), "graph": "stock", "snn_accuracy": ev.accuracy,
            "energy": _energy(prep, q, profile, ev)}


def run_deploy(prep: Prepared, config: DeployConfig) -> int:
    """The whole deploy: the report, both networks and the Lava check, written to
    ``config.out`` as one directory; 0 when Lava and the engine agree spike for spike."""
    from lavaconv.lava import check

    report, net_int = build_report(prep, config)
    data, out = prep.dataset, config.out
    hardware_missing = config.target == "loihi2" and not _loihi2_available()
    with atomic_dir(out, inputs=(prep.config.model, prep.config.data)) as tmp:
        (tmp / "network").mkdir()
        net_int.save(tmp / "network")
        (tmp / "network_float").mkdir()
        prep.net.save(tmp / "network_float")
        k = min(config.lava_samples, len(data.x_eval))
        # without lava-loihi the same graph runs on the CPU (the fused model of Lava's
        # bit-accurate models, as on --target sim)
        start = time.perf_counter()
        report["lava"] = check(net_int, data.x_eval[:k], config.timesteps,
                               seed=prep.config.seed,
                               target="sim" if hardware_missing else config.target,
                               progress=prep.config.progress)
        report["seconds"]["lava"] = time.perf_counter() - start
        report["hardware"] = report["lava"]["hardware"]
        write_json(tmp / "report.json", report)
        (tmp / "report.md").write_text(deploy_markdown(report))
        (tmp / "report.html").write_text(deploy_html(report))
    print(deploy_summary(report, str(out)))
    if hardware_missing:
        raise LavaconvError(f"--target loihi2: {LOIHI2_MISSING}; the graph ran on the CPU "
                            "(the fused model of Lava's bit-accurate models) and everything is "
                            f"in {out}: on an INRC system with lava-loihi run the same command "
                            "there")
    if not report["lava"]["bit_exact"]:
        print(f"lavaconv: error: Lava and the engine differ in {report['lava']['mismatched']} "
              f"(see {out}/report.json)")
        return 1
    return 0
