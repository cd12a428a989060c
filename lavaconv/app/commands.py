"""The work behind each CLI command (argument parsing lives in :mod:`lavaconv.app.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lavaconv import distributed
from lavaconv.ann.data import load_dataset
from lavaconv.app.deploy import DeployConfig, run_deploy
from lavaconv.app.outputs import atomic_dir, atomic_file, json_text, write_text
from lavaconv.app.session import RunConfig, prepare
from lavaconv.conversion import ConvertOptions, NormSpec
from lavaconv.cost.profiles import list_profiles, load_profile
from lavaconv.errors import LavaconvError, shown
from lavaconv.frontend import LoadedModel, load_model
from lavaconv.ir.network import Network
from lavaconv.ir.stock import maxpool_obstacle, option_obstacles
from lavaconv.sim import evaluation


def convert_options(args: argparse.Namespace) -> ConvertOptions:
    """The conversion methods the command line asked for."""
    return ConvertOptions(
        NormSpec.parse(args.norm), args.neuron, args.input, args.v_init, readout=args.readout,
        shortcut_norm=not args.no_shortcut_norm, balance=args.balance, zeta=args.zeta,
        correction=args.correction, calib_steps=args.calib_steps,
        calib_items=args.calib_items, burst=args.burst, maxpool=args.maxpool,
        align=args.align, sd_threshold=args.sd_threshold)


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run the command line asked for."""
    return RunConfig(args.model, args.data, convert_options(args), arch=args.arch,
                     trust_pickle=args.trust_pickle, samples=args.samples,
                     calib_samples=args.calib_samples, seed=args.seed, device=args.device,
                     progress=not args.quiet)


def deploy_config(args: argparse.Namespace) -> DeployConfig:
    return DeployConfig(args.target, args.timesteps, args.profile, args.weights,
                        args.lava_samples, args.out, args.graph, args.compare_rate)


def convert(args: argparse.Namespace) -> int:
    prep = prepare(run_config(args))
    if not distributed.is_main():
        return 0
    with atomic_dir(args.out, inputs=(args.model, args.data)) as tmp:
        prep.net.save(tmp)
    print(f"ANN accuracy {100 * prep.ann_accuracy:.2f} % on {len(prep.dataset.y_eval)} items; "
          f"{len(prep.net.nodes) - 1} populations, {len(prep.net.synapses)} synapses "
          f"written to {args.out}")
    return 0


def _table(ann: float, runs: dict[str, evaluation.SnnEval]) -> str:
    names = list(runs)
    steps = sorted(next(iter(runs.values())).accuracy)
    head = f"{'T':>6} " + " ".join(f"{n + ' acc %':>14} {n + ' R %':>10}" for n in names)
    lines = [head, f"{'ANN':>6} " + " ".join(f"{100 * ann:>14.2f} {'':>10}" for _ in names)]
    for t in steps:
        cells = []
        for ev in runs.values():
            rate = np.mean(list(ev.spike_rate[t].values())) if ev.spike_rate[t] else 0.0
            cells.append(f"{100 * ev.accuracy[t]:>14.2f} {rate:>10.2f}")
        lines.append(f"{t:>6} " + " ".join(cells))
    return "\n".join(lines)


def eval(args: argparse.Namespace) -> int:  # noqa: A001 - the command's name
    prep = prepare(run_config(args))
    data = prep.dataset
    device = distributed.device(args.device)
    progress = prep.config.progress and distributed.is_main()
    runs = {"float": evaluation.evaluate(prep.net, data.x_eval, data.y_eval, args.timesteps,
                                         seed=args.seed, progress=progress, device=device)}
    if args.profile:
        net_int, _ = prep.integer(args.profile, max(args.timesteps), args.weights,
                                  stock=args.graph == "stock")
        runs["int"] = evaluation.evaluate(net_int, data.x_eval, data.y_eval, args.timesteps,
                                          seed=args.seed, progress=progress, device=device)
    if not distributed.is_main():
        return 0
    print(_table(prep.ann_accuracy, runs))
    if args.json:
        write_text(args.json, json_text({
            "ann_accuracy": prep.ann_accuracy,
            "items": len(data.y_eval),
            "options": prep.net.meta,
            **{f"snn_{k}": {"accuracy": v.accuracy, "spike_rate": v.spike_rate,
                            "seconds_per_step": v.seconds_per_step} for k, v in runs.items()},
        }), inputs=(args.model, args.data))
    return 0


def export(args: argparse.Namespace) -> int:
    from lavaconv.export import export_netx, export_nir

    source = Path(args.network)
    if not (source / "network.json").is_file():
        raise LavaconvError(f"{source}: no network.json (give a directory written by convert "
                            "or deploy)")
    net = Network.load(source)
    out = Path(args.out)
    with atomic_file(out, inputs=(source / "network.json", source / "arrays.npz")) as tmp:
        if args.format == "nir":
            export_nir(net, tmp)
            notes = []
        else:
            if net.numeric == "float":
                net = netx_network(net, args.profile, args.timesteps, args.data)
                print(f"quantized on netx's grid ({args.profile}, "
                      f"{'sigma-delta' if net.is_sigma_delta else 'stock soft reset'})")
            notes = export_netx(net, tmp, approximate=args.approximate)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out} ({args.format})")
    return 0


def netx_network(net: Network, profile: str, timesteps: int, data: str | None = None,
                 calib_samples: int = 2000, seed: int = 0) -> Network:
    """The integer network ``export --format netx`` writes for a float one: the stock soft-reset
    form on netx's grid (``quantize(netx=True)``, the input's payload bits chosen on
    calibration items), or a sigma-delta network with netx's ``state_exp`` and weight
    exponents (calibrated); calibration items from ``data``, default the data set recorded
    in the network."""
    from lavaconv.quantize.integer import quantize
    from lavaconv.quantize.sigma_delta import quantize_sigma_delta

    formats = load_profile(profile).formats
    spec = data or net.meta.get("data")
    if not isinstance(spec, str) or not spec:
        raise LavaconvError("export --format netx: the network records no data set to "
                            "calibrate netx's grid on: give --data")
    x_calib = load_dataset(spec, n_eval=1, n_calib=calib_samples, seed=seed).x_calib
    if not net.is_sigma_delta:
        return quantize(net, formats, timesteps=timesteps, netx=True, x_calib=x_calib)[0]
    return quantize_sigma_delta(net, formats, x_calib, netx=True)[0]


def profiles(args: argparse.Namespace) -> int:
    if args.name:
        print(load_profile(args.name).describe())
    else:
        for name in list_profiles():
            print(name)
    return 0


def deploy(args: argparse.Namespace) -> int:
    if distributed.world()[1] > 1:
        raise LavaconvError("deploy runs in one process (Lava starts its own); use torchrun "
                            "for eval and convert")
    config = deploy_config(args)  # checked before the long work
    if config.compare_rate and args.neuron != "sigma-delta":
        raise LavaconvError("--compare-rate compares a sigma-delta network with rate coding; "
                            "use it with --neuron sigma-delta")
    check = None
    if config.target == "loihi2" or config.graph == "stock":
        found = option_obstacles(args.neuron, args.burst, args.readout, args.align,
                                 args.weights, args.norm)
        if found:
            raise LavaconvError(f"--target {config.target} --graph {config.graph}: {found[0]}")
        if args.maxpool != "relu" and args.neuron != "sigma-delta":
            def check(model: LoadedModel) -> None:
                pool = next((n for n in model.graph_module.graph.nodes
                             if n.target == torch.ops.aten.max_pool2d.default), None)
                if pool is not None:
                    raise LavaconvError(f"--target {config.target} --graph {config.graph}: "
                                        f"{maxpool_obstacle(pool.name)}")
    return run_deploy(prepare(run_config(args), check), config)


def energy(args: argparse.Namespace) -> int:
    """Operation counts and energy per inference: the ANN of a model file, or a network
    directory's ANN and its SNN measured on ``--data``."""
    import json

    from lavaconv.app.report import energy_page, energy_text
    from lavaconv.cost.counting import ann_macs
    from lavaconv.cost.energy import (
        DEFAULT_ANN_PROFILES,
        DEFAULT_SNN_PROFILES,
        profiles_of,
        summarize,
    )

    target = Path(args.target)
    ann_profiles = profiles_of(args.ann_profiles or DEFAULT_ANN_PROFILES, "ann")
    if not target.is_dir():
        if args.data:
            raise LavaconvError(f"--data needs a converted network: run lavaconv convert "
                                f"{target} ... --out DIR, then lavaconv energy DIR --data ...")
        if not args.input_shape:
            raise LavaconvError(f"{target}: a model file needs --input-shape C,H,W")
        model = load_model(target, args.input_shape, arch=args.arch,
                           trust_pickle=args.trust_pickle)
        summary = summarize(ann_macs(model.graph_module, args.input_shape), ann_profiles)
    else:
        net, model_path = _network_dir(target, args)
        shape = tuple(net.nodes[net.input_name].shape)
        # a path read from the directory is untrusted: --trust-pickle covers --model only
        model = load_model(model_path, shape, arch=args.arch,
                           trust_pickle=args.trust_pickle and args.model is not None)
        data = load_dataset(args.data, n_eval=args.samples, n_calib=1, seed=args.seed)
        if tuple(data.x_eval.shape[1:]) != shape:
            raise LavaconvError(f"--data {args.data}: items of shape {data.x_eval.shape[1:]}, "
                                f"but {target} takes {shape}")
        activity = evaluation.measure_activity(net, data.x_eval, args.timesteps,
                                               seed=args.seed, progress=not args.quiet,
                                               device=distributed.device(args.device))
        summary = summarize(ann_macs(model.graph_module, shape), ann_profiles, net, activity,
                            profiles_of(args.snn_profiles or DEFAULT_SNN_PROFILES,
                                        "neuromorphic"))
    if args.html:
        write_text(args.html, energy_page(summary, f"lavaconv energy: {target}").html(),
                   inputs=(target,))
    print(json.dumps(summary, indent=2) if args.json else energy_text(summary))
    return 0


def _network_dir(directory: Path, args: argparse.Namespace) -> tuple[Network, str]:
    """The network in ``directory`` and the model file of its ANN."""
    if not (directory / "network.json").is_file():
        hint = " (a deploy output: give DIR/network)" if (directory / "network").is_dir() else ""
        raise LavaconvError(f"{directory}: no network.json{hint}")
    if not args.data:
        raise LavaconvError(f"{directory}: give --data to measure the network's spikes")
    if args.input_shape:
        raise LavaconvError("--input-shape is for a model file; a network directory has its own")
    net = Network.load(directory)
    model = args.model or net.meta.get("model")
    if not isinstance(model, str) or not model or not Path(model).is_file():
        raise LavaconvError(f"{directory}: its ANN {shown(model)} (recorded in network.json) is "
                            "not a file here: give --model PATH")
    return net, model
