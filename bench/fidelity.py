"""Fidelity benchmark (issue 4): the seed papers' methods on the bundled Fashion-MNIST models.

    .venv/bin/python bench/fidelity.py [--items 2000] [--claim-items 500] [--only KEY,...]
                                       [--models vgg,resnet] [--out docs] [--resume]
                                       [--skip N]

Each configuration is calibrated on the calibration items, converted with
:func:`lavaconv.conversion.build_network` (a bias or potential correction counts the spikes of the
quantized network), quantized to the loihi2 profile and run once through the integer engine to
T = 256; the checkpoints give the accuracy at T = 8 .. 256 for the three
readouts (potential, spike count, spiking softmax) and the spike rate R (RMP eq. 8). Seeds are
fixed. The goal configurations run on ``--items`` test items, the ones behind the papers'
claims on the first ``--claim-items`` (the engine runs about 4 item-steps per ms on one core).
Writes ``fidelity.json`` (after every configuration; ``--resume`` skips the ones done),
``fidelity.png`` and ``fidelity-run.md`` (tables and the claims checked) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lavaconv.ann import probe  # noqa: E402
from lavaconv.ann.data import load_dataset  # noqa: E402
from lavaconv.ann.probe import activations  # noqa: E402
from lavaconv.ann.stats import activation_stats  # noqa: E402
from lavaconv.conversion import ConvertOptions, NormSpec, convert  # noqa: E402
from lavaconv.conversion.build import build_network  # noqa: E402
from lavaconv.conversion.diagnostics import (  # noqa: E402
    clipped_ann_accuracy,
    information_loss,
    neuron_lambda,
    propagation_error,
)
from lavaconv.cost.profiles import load_profile  # noqa: E402
from lavaconv.errors import LavaconvError  # noqa: E402
from lavaconv.frontend import load_model  # noqa: E402
from lavaconv.ir.network import IF, READOUTS, Network  # noqa: E402
from lavaconv.quantize.integer import quantize  # noqa: E402
from lavaconv.sim import evaluation  # noqa: E402
from lavaconv.sim.engine import encode_input, readout_scores, simulate  # noqa: E402

STEPS = [8, 16, 32, 64, 128, 256]
MODELS = {"vgg": "examples/vgg_fmnist.pt2", "resnet": "examples/resnet_fmnist.pt2"}
SEED = 0


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    models: tuple[str, ...]
    options: ConvertOptions
    goal: bool = False  # run on --items (else --claim-items)
    weights: str = "layer"  # integer weight scale: per layer or per output channel


def _opts(norm: str, neuron: str = "rmp", encoding: str = "analog", **kw) -> ConvertOptions:
    """A row's options; v_init 0 (the seed papers') unless the row says otherwise."""
    return ConvertOptions(NormSpec.parse(norm), neuron, encoding, **{"v_init": 0.0, **kw})


BOTH = ("vgg", "resnet")
CONFIGS = [
    # Rueckauer Fig. 2a (a plain CNN): each step adds one mechanism (v_init 0, as the seeds)
    Config("R1", "no norm, Poisson input, reset to zero", ("vgg",),
           _opts("none", "if", "poisson")),
    Config("R2", "+ max-norm", ("vgg",), _opts("max", "if", "poisson")),
    Config("R3", "+ reset by subtraction", ("vgg",), _opts("max", "rmp", "poisson")),
    Config("R4", "+ analog input", BOTH, _opts("max")),
    Config("R5", "+ p99.9 norm", BOTH, _opts("p99.9")),
    # RMP sec. 4.1 / Fig. 5: threshold balancing from SNN statistics (ResNet, Poisson, soft)
    Config("B1", "RMP balancing alpha 1.0", ("resnet",), _opts("max", "rmp", "poisson",
                                                                 balance=1.0)),
    Config("B06", "RMP balancing alpha 0.6", ("resnet",), _opts("max", "rmp", "poisson",
                                                                  balance=0.6)),
    Config("B02", "RMP balancing alpha 0.2", ("resnet",), _opts("max", "rmp", "poisson",
                                                                  balance=0.2)),
    # S-ResNet: shortcut normalisation (Table 2) and the zeta compensation (eq. 12-14)
    Config("S0", "p99.9, shortcuts not normalised", ("resnet",), _opts("p99.9",
                                                                         shortcut_norm=False)),
    Config("SZ", "p99.9, zeta searched", ("resnet",), _opts("p99.9", zeta="auto")),
    # SNM Fig. 4: baseline layer-wise max with soft reset = R4
    Config("M1", "max, SNM neuron", BOTH, _opts("max", "snm")),
    Config("M2", "neuron-wise max", BOTH, _opts("max:neuron")),
    Config("M3", "neuron-wise max + SNM", BOTH, _opts("max:neuron", "snm")),
    # the goal: the CLI default, and combinations with the post-2021 additions (v_init 0.5:
    # Bu et al. 2022; bias / potential correction: Li et al. 2021, counted on the integer SNN)
    Config("G0", "p99.9, v_init 0.5 (CLI default)", BOTH, _opts("p99.9", v_init=0.5)),
    Config("G1", "p99.9 + SNM + v_init 0.5", BOTH, _opts("p99.9", "snm", v_init=0.5), True),
    Config("G2", "p99.9 + v_init 0.5 + potential correction", BOTH,
           _opts("p99.9", v_init=0.5, correction="potential"), True),
    Config("G3", "p99.9 + SNM + v_init 0.5 + bias correction", BOTH,
           _opts("p99.9", "snm", v_init=0.5, correction="bias"), True),
    # burst spikes (Li & Zeng, IJCAI 2022): threshold lambda / K, up to K spikes a step
    Config("G4", "p99.9 + SNM + v_init 0.5 + burst 2", BOTH,
           _opts("p99.9", "snm", v_init=0.5, burst=2), True),
    Config("G5", "max + SNM + v_init 0.5 + burst 4", BOTH,
           _opts("max", "snm", v_init=0.5, burst=4), True),
    Config("G6", "p99.9 + v_init 0.5 + burst 2 (soft reset)", BOTH,
           _opts("p99.9", v_init=0.5, burst=2), True),
    # max-pool by the increase of the running maximum (lavaconv), on the model with max-pools
    Config("G7", "max + SNM + v_init 0.5 + burst 4 + running max-pool", ("vgg",),
           _opts("max", "snm", v_init=0.5, burst=4, maxpool="running"), True),
    # and integer weights scaled per output channel (lavaconv's --weights channel)
    Config("G8", "p99.9 + SNM + v_init 0.5 + burst 2, per-channel weights", ("resnet",),
           _opts("p99.9", "snm", v_init=0.5, burst=2), True, "channel"),
    Config("G9", "max + SNM + v_init 0.5 + burst 4 + running max-pool, per-channel weights",
           BOTH, _opts("max", "snm", v_init=0.5, burst=4, maxpool="running"), True,
           "channel"),
    Config("G10", "neuron-wise max + SNM + v_init 0.5 + burst 2, per-channel weights",
           ("resnet",), _opts("max:neuron", "snm", v_init=0.5, burst=2), True, "channel"),
    Config("G11", "channel-wise p99.9 + SNM + v_init 0.5 + burst 2, per-channel weights",
           ("resnet",), _opts("p99.9:channel", "snm", v_init=0.5, burst=2), True, "channel"),
    # every population's inputs (shortcut and main path) and its bias start at the same step
    Config("G12", "G8 + aligned inputs", ("resnet",),
           _opts("p99.9", "snm", v_init=0.5, burst=2, align=True), True, "channel"),
]


def evaluate(net: Network, x: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy per readout and T, and the spike rate R (RMP eq. 8) per T, in one run."""
    steps = STEPS[-1]
    out = net.nodes[net.output_name]
    bounds = (-(2 ** (out.state_bits - 1)), 2 ** (out.state_bits - 1) - 1)
    correct = {mode: dict.fromkeys(STEPS, 0) for mode in READOUTS}
    pops = [n for n, v in net.nodes.items() if isinstance(v, IF)]
    neurons = sum(int(np.prod(net.nodes[n].shape)) for n in pops)
    spikes = dict.fromkeys(STEPS, 0.0)
    batch = evaluation.auto_batch(net, steps)
    for start in range(0, len(x), batch):
        xb, yb = x[start:start + batch], torch.as_tensor(y[start:start + batch])
        res = simulate(net, encode_input(net, xb, steps, seed=SEED + start), STEPS,
                       seed=SEED + start)
        for mode in READOUTS:
            scores = res.readout if mode == out.mode else readout_scores(
                out, res.readout_input, STEPS, bounds if net.numeric == "int" else None, mode,
                seed=SEED + start)[0]
            for t in STEPS:
                correct[mode][t] += int((scores[t].argmax(1) == yb).sum())
        for t in STEPS:
            spikes[t] += sum(res.spikes_at[t][n] for n in pops)
    n = len(x)
    return {"accuracy": {m: {t: c / n for t, c in v.items()} for m, v in correct.items()},
            "spike_rate": {t: 100 * s / (neurons * t * n) for t, s in spikes.items()}}


def run_config(cfg: Config, gm, data, stats, n_items: int) -> dict:
    """Build, quantize (loihi2) and evaluate one configuration on the first ``n_items``."""
    formats = load_profile("loihi2").formats

    def to_int(net: Network) -> Network:
        return quantize(net, formats, timesteps=STEPS[-1], weight_scale=cfg.weights)[0]

    start = time.perf_counter()
    net = build_network(gm, data.x_calib, stats, cfg.options, measure_on=to_int)
    built = time.perf_counter()
    net_int = to_int(net)
    result = evaluate(net_int, data.x_eval[:n_items], data.y_eval[:n_items])
    return {"label": cfg.label, "options": {**cfg.options.describe(), "weights": cfg.weights},
            "items": n_items,
            "build_s": built - start, "run_s": time.perf_counter() - built,
            "calibration": net.meta.get("calibration"), **result}


def diagnostics(gm, data, stats) -> dict:
    """SNM eq. 12-13 information loss of the first IF layer (layer-wise max for several alpha
    vs neuron-wise max at alpha 1), and the S-ResNet propagation error per layer at T = 256."""
    x = data.x_calib[:500]
    layer = convert(gm, tuple(x.shape[1:]), stats, _opts("max"))
    neuron = build_network(gm, data.x_calib, stats, _opts("max:neuron"))
    first = next(n for n, v in layer.nodes.items() if isinstance(v, IF))
    act = np.concatenate([a[first].numpy() for a in activations(gm, x)])
    loss = {"layer": {str(alpha): {t: information_loss(act, layer.nodes[first].scale, alpha, t)
                                   for t in STEPS} for alpha in (0.2, 0.4, 0.6, 0.8, 1.0)},
            "neuron": {t: information_loss(act, neuron_lambda(neuron.nodes[first]), 1.0, t)
                       for t in STEPS}}
    err = propagation_error(convert(gm, tuple(x.shape[1:]), stats, _opts("p99.9")), gm,
                            data.x_calib[:256], STEPS[-1])
    return {"information_loss": {"population": first, **loss},
            "propagation_error": {"p": err.p, "q": err.q, "layers": [vars(ly) for ly in
                                                                     err.layers]}}


def _acc(results: dict, model: str, key: str, t: int, mode: str = "potential") -> float | None:
    entry = results["models"][model]["configs"].get(key)
    return None if entry is None else 100 * entry["accuracy"][mode][str(t)]


def _se(acc: float, n: int) -> float:
    return 100 * math.sqrt(max(acc / 100 * (1 - acc / 100), 1e-12) / n)


def claims(results: dict) -> list[dict]:
    """The papers' claims on our data, each with the numbers behind the verdict."""
    out = []
    for model in results["models"]:
        chain = [_acc(results, model, k, 256) for k in ("R1", "R2", "R3", "R4", "R5")]
        if None not in chain:
            steps = [round(b - a, 2) for a, b in zip(chain, chain[1:], strict=False)]
            out.append({"claim": "Rueckauer Fig. 2a: each mechanism improves accuracy (T=256)",
                        "model": model, "ours": f"{' → '.join(f'{a:.1f}' for a in chain)} %",
                        "holds": all(d > 0 for d in steps)})
        hard = {t: _acc(results, model, "R2", t) for t in STEPS}
        soft = {t: _acc(results, model, "R3", t) for t in STEPS}
        if None not in hard.values() and None not in soft.values():
            best = max(hard.values())
            t_hard = min(t for t in STEPS if hard[t] >= best)
            t_soft = min((t for t in STEPS if soft[t] >= best), default=None)
            out.append({"claim": "RMP: soft reset reaches hard reset's best accuracy in at "
                        "least 2x fewer steps", "model": model,
                        "ours": f"hard best {best:.1f} % at T={t_hard}; soft reaches it at "
                        f"T={t_soft}", "holds": t_soft is not None and 2 * t_soft <= t_hard})
        alphas = {k: _acc(results, model, k, 256) for k in ("B1", "B06", "B02")}
        if None not in alphas.values():
            keeps = alphas["B06"] >= alphas["B1"] - 1.0
            breaks = alphas["B02"] <= alphas["B1"] - 5.0
            out.append({"claim": "RMP Fig. 5: alpha 0.6 keeps the accuracy of alpha 1 (within 1 "
                        "point), alpha 0.2 breaks it (5+ points lower), T=256", "model": model,
                        "ours": ", ".join(f"{k}: {v:.1f} %" for k, v in alphas.items()),
                        "holds": keeps and breaks})
        ann = 100 * results["models"][model]["ann_accuracy"]
        ann_claims = 100 * results["models"][model].get("ann_accuracy_claims", ann / 100)
        short = (_acc(results, model, "S0", 256), _acc(results, model, "R5", 256))
        if None not in short:
            out.append({"claim": "S-ResNet Table 2: without shortcut normalisation the loss is "
                        "clearly larger (1+ point)", "model": model,
                        "ours": f"loss {ann_claims - short[0]:.1f} without vs "
                        f"{ann_claims - short[1]:.1f} "
                        "with (T=256)", "holds": short[1] - short[0] >= 1.0})
        snm = (_acc(results, model, "M3", 32), _acc(results, model, "R4", 32))
        if None not in snm:
            n = results["models"][model]["configs"]["M3"]["items"]
            out.append({"claim": "SNM Fig. 4: neuron-wise norm + SNM beats layer-wise max at "
                        "T=32", "model": model, "ours": f"{snm[0]:.1f} vs {snm[1]:.1f} % "
                        f"(± {_se(snm[1], n):.1f})", "holds": snm[0] > snm[1]})
        loss = results["models"][model].get("diagnostics", {}).get("information_loss")
        if loss:
            below = [loss["neuron"][str(t)] < min(row[str(t)] for row in loss["layer"].values())
                     for t in STEPS]
            out.append({"claim": "SNM Fig. 3: neuron-wise max (alpha 1) loses less information "
                        "than layer-wise max with any alpha, at every T", "model": model,
                        "ours": f"below at {sum(below)} of {len(STEPS)} T values",
                        "holds": all(below)})
        for key in [c.key for c in CONFIGS if c.goal]:
            goal = (_acc(results, model, key, 32), _acc(results, model, key, 128))
            if None not in goal:
                out.append({"claim": f"Goal: conversion loss <= 0.5 point at T=32 and <= 0.1 "
                            f"at T=128 ({key})", "model": model,
                            "ours": f"ANN {ann:.2f} %, loss {ann - goal[0]:.2f} at T=32, "
                            f"{ann - goal[1]:.2f} at T=128",
                            "holds": ann - goal[0] <= 0.5 and ann - goal[1] <= 0.1})
    return out


def markdown(results: dict) -> str:
    lines = ["# Fidelity run (generated by bench/fidelity.py)", ""]
    for model, entry in results["models"].items():
        lines += [f"## {model}: ANN {100 * entry['ann_accuracy']:.2f} % on {entry['ann_items']} "
                  f"items, {100 * entry.get('ann_accuracy_claims', 0):.2f} % on the first "
                  f"{entry.get('claim_items')}; with every ReLU clipped at its scale "
                  + ", ".join(f"{k} {100 * v:.2f} %" for k, v in entry.get("ann_clipped",
                                                                          {}).items()), "",
                  "| config | items | " + " | ".join(f"T={t}" for t in STEPS) + " | R % (T=256) |",
                  "|---" * (len(STEPS) + 3) + "|"]
        for key, cfg in entry["configs"].items():
            accs = " | ".join(f"{100 * cfg['accuracy']['potential'][str(t)]:.2f}" for t in STEPS)
            lines.append(f"| {key} {cfg['label']} | {cfg['items']} | {accs} | "
                         f"{cfg['spike_rate'][str(STEPS[-1])]:.2f} |")
        lines += ["", "Readouts (spike count / spiking softmax) of the goal configurations:", "",
                  "| config | readout | " + " | ".join(f"T={t}" for t in STEPS) + " |",
                  "|---" * (len(STEPS) + 2) + "|"]
        for key, cfg in entry["configs"].items():
            if key.startswith("G"):
                for mode in READOUTS:
                    accs = " | ".join(f"{100 * cfg['accuracy'][mode][str(t)]:.2f}"
                                      for t in STEPS)
                    lines.append(f"| {key} | {mode} | {accs} |")
        lines.append("")
    for model, entry in results["models"].items():
        lines += [f"Not run on {model}: {e}" for e in entry.get("errors", {}).values()]
    lines += ["", "## Claims", "", "| claim | model | ours | holds |", "|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['model']} | {c['ours']} | {'yes' if c['holds'] else 'NO'} |"
              for c in results["claims"]]
    for model, entry in results["models"].items():
        diag = entry.get("diagnostics")
        if not diag:
            continue
        loss = diag["information_loss"]
        lines += ["", f"## {model}: information loss of `{loss['population']}` "
                  "(SNM eq. 12-13, mean over 500 calibration items)", "",
                  "| scales | " + " | ".join(f"T={t}" for t in STEPS) + " |",
                  "|---" * (len(STEPS) + 1) + "|"]
        for alpha, row in loss["layer"].items():
            lines.append(f"| layer max, alpha {alpha} | "
                         + " | ".join(f"{row[str(t)]:.3g}" for t in STEPS) + " |")
        lines.append("| neuron-wise max, alpha 1 | "
                     + " | ".join(f"{loss['neuron'][str(t)]:.3g}" for t in STEPS) + " |")
        err = diag["propagation_error"]
        lines += ["", f"## {model}: propagation error at T={STEPS[-1]} (S-ResNet eq. 9-12), "
                  f"fit p = {err['p']:.3g}, q = {err['q']:.3g}", "",
                  "| layer | l | E at the most active neuron | mean E | mean abs E |",
                  "|---|---|---|---|---|"]
        lines += [f"| {ly['name']} | {ly['depth']} | {ly['at_max']:.4f} | {ly['mean']:.4f} | "
                  f"{ly['mean_abs']:.4f} |" for ly in err["layers"]]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7), tight_layout=True)
    axes = fig.subplots(2, len(results["models"]), squeeze=False)
    for col, (model, entry) in enumerate(results["models"].items()):
        for key, cfg in entry["configs"].items():
            if key not in ("R2", "R3", "R4", "R5", "G0", "G1", "G4", "G7", "G8", "G9", "G12"):
                continue
            acc = [100 * cfg["accuracy"]["potential"][str(t)] for t in STEPS]
            rate = [cfg["spike_rate"][str(t)] for t in STEPS]
            axes[0][col].plot(STEPS, acc, marker="o", label=f"{key} {cfg['label']}")
            axes[1][col].plot(STEPS, rate, marker="o", label=key)
        axes[0][col].axhline(100 * entry["ann_accuracy"], color="k", ls=":", label="ANN")
        axes[0][col].set(title=f"{model}: accuracy (integer engine, loihi2)", xscale="log",
                         xlabel="T", ylabel="%", ylim=(50, 100))
        axes[1][col].set(title=f"{model}: spike rate R (RMP eq. 8)", xscale="log", xlabel="T",
                         ylabel="% of neurons per step")
        for ax in axes[:, col]:
            ax.set_xticks(STEPS, [str(t) for t in STEPS])
        axes[0][col].legend(fontsize=7)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=2000, help="test items, goal configurations")
    ap.add_argument("--claim-items", type=int, default=500, help="test items, the others")
    ap.add_argument("--models", default="vgg,resnet")
    ap.add_argument("--only", help="comma-separated configuration keys (default: all)")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--resume", action="store_true", help="keep configurations already done")
    ap.add_argument("--skip", type=int, default=0,
                    help="start at this t10k item (e.g. 2000: check a choice on fresh items)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "fidelity.json"
    results = (json.loads(json_path.read_text()) if args.resume and json_path.exists()
               else {"models": {}})
    results.update(steps=STEPS, profile="loihi2", seed=SEED, first_item=args.skip)
    only = set(args.only.split(",")) if args.only else None
    data = load_dataset("fashion-mnist", n_eval=args.skip + max(args.items, args.claim_items),
                        n_calib=2000, seed=SEED)
    data = replace(data, x_eval=data.x_eval[args.skip:], y_eval=data.y_eval[args.skip:])
    for model in args.models.split(","):
        gm = load_model(ROOT / MODELS[model], tuple(data.x_eval.shape[1:])).graph_module
        stats = activation_stats(gm, data.x_calib, progress=False)
        entry = results["models"].setdefault(model, {"configs": {}})
        entry["ann_accuracy"] = probe.accuracy(gm, data.x_eval[:args.items],
                                                      data.y_eval[:args.items])
        entry["ann_items"] = args.items
        entry["ann_clipped"] = {  # each ReLU clipped at its scale: the SNN's limit as T grows
            norm: clipped_ann_accuracy(convert(gm, tuple(data.x_eval.shape[1:]), stats,
                                               _opts(norm)), gm, data.x_eval[:args.items],
                                       data.y_eval[:args.items]) for norm in ("max", "p99.9")}
        entry["ann_accuracy_claims"] = probe.accuracy(gm, data.x_eval[:args.claim_items],
                                                             data.y_eval[:args.claim_items])
        entry["claim_items"] = args.claim_items
        if "diagnostics" not in entry:
            entry["diagnostics"] = json.loads(json.dumps(diagnostics(gm, data, stats)))
        for cfg in sorted(CONFIGS, key=lambda c: not c.goal):  # the goal first
            if model not in cfg.models or (only and cfg.key not in only) or (
                    args.resume and cfg.key in entry["configs"]):
                continue
            n = args.items if cfg.goal else args.claim_items
            try:
                done = run_config(cfg, gm, data, stats, n)
            except LavaconvError as err:  # e.g. no norm: biases beyond the profile's range
                entry.setdefault("errors", {})[cfg.key] = f"{cfg.label}: {err}"
                print(f"{model} {cfg.key}: {err}", flush=True)
                continue
            entry["configs"][cfg.key] = json.loads(json.dumps(done))  # int keys → str
            print(f"{model} {cfg.key} ({cfg.label}): " + " ".join(
                f"T={t} {100 * done['accuracy']['potential'][t]:.2f}" for t in STEPS)
                  + f"  [{done['build_s']:.0f} s + {done['run_s']:.0f} s]", flush=True)
            results["claims"] = claims(results)
            json_path.write_text(json.dumps(results, indent=1))
    results["claims"] = claims(results)
    json_path.write_text(json.dumps(results, indent=1))
    (out / "fidelity-run.md").write_text(markdown(results))
    plot(results, out / "fidelity.png")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
