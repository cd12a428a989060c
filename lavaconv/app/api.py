"""Python API for notebooks: the same steps as the CLI, as objects.

    import lavaconv
    snn = lavaconv.convert("examples/resnet_fmnist.pt2", data="fashion-mnist")
    acc = snn.simulate(timesteps=[32, 64])            # float engine: {T: accuracy}
    q = snn.quantize("loihi2", timesteps=64)           # integer network for a profile
    q.simulate(timesteps=[64])                         # integer engine
    graph = q.to_lava(items=2, timesteps=64)           # Lava processes (graph.top is the network)
    e = q.energy(timesteps=[64], items=100)            # ANN and SNN joules per inference
    q.report()                                         # dict: accuracy, rates, quantization, energy
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch.fx

from lavaconv.ann.data import Dataset
from lavaconv.ann.stats import ActivationStats
from lavaconv.app.session import RunConfig, integer_network, prepare
from lavaconv.conversion import ConvertOptions, NormSpec
from lavaconv.cost.counting import ann_macs
from lavaconv.cost.energy import DEFAULT_ANN_PROFILES, DEFAULT_SNN_PROFILES, profiles_of, summarize
from lavaconv.ir.network import Network
from lavaconv.quantize.integer import LayerQuant
from lavaconv.sim import evaluation
from lavaconv.sim.engine import encode_input


@dataclass
class Converted:
    """A converted network with the ANN, data and statistics it came from."""

    network: Network
    model: torch.fx.GraphModule  # the ANN's canonical graph
    dataset: Dataset
    stats: dict[str, ActivationStats]
    ann_accuracy: float
    quantization: list[LayerQuant] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def simulate(self, timesteps=(32, 64, 128), *, items: int | None = None, seed: int = 0,
                 device: str = "cpu") -> dict[int, float]:
        """Accuracy of the fast engine on the first ``items`` evaluation items at each T."""
        x, y = self.dataset.x_eval[:items], self.dataset.y_eval[:items]
        ev = evaluation.evaluate(self.network, x, y, list(timesteps), seed=seed, device=device,
                               progress=False)
        self.results["simulate"] = ev
        return ev.accuracy

    def quantize(self, profile: str = "loihi2", *, timesteps: int = 64,
                 weight_scale: str = "layer", stock: bool = False) -> Converted:
        """The integer network on ``profile``'s fixed-point formats (a new object);
        ``weight_scale='channel'``: one weight scale (threshold) per output channel;
        ``stock``: for the graph of stock Lava processes (reset 'lif', docs/design.md
        section 7). A sigma-delta network gets its own quantizer's formats."""
        net, report = integer_network(self.network, profile, timesteps, self.dataset.x_calib,
                                      weight_scale, stock)
        return Converted(net, self.model, self.dataset, self.stats, self.ann_accuracy, report)

    def payload(self, items: int, timesteps: int, seed: int = 0) -> np.ndarray:
        """What the input process sends, ``(T, items, *shape)``."""
        return encode_input(self.network, self.dataset.x_eval[:items], timesteps,
                            seed=seed).numpy()

    def to_lava(self, *, items: int = 1, timesteps: int = 64, seed: int = 0):
        """The Lava process graph (``lavaconv.lava.LavaGraph``) for the first ``items`` items."""
        from lavaconv.lava import build

        return build(self.network, self.payload(items, timesteps, seed))

    def run_lava(self, *, items: int = 1, timesteps: int = 64, seed: int = 0,
                 tag: str | None = None):
        """Run on Lava's CPU simulator; returns ``lavaconv.lava.LavaResult``."""
        from lavaconv.lava import run_lava

        tag = tag or ("fixed_pt" if self.network.numeric == "int" else "floating_pt")
        return run_lava(self.network, self.payload(items, timesteps, seed), tag=tag)

    def energy(self, timesteps: Sequence[int] = (32, 64, 128), *, items: int = 100,
               ann_profiles: Sequence[str] = DEFAULT_ANN_PROFILES,
               snn_profiles: Sequence[str] = DEFAULT_SNN_PROFILES, seed: int = 0,
               device: str = "cpu") -> dict:
        """Energy per inference of the ANN (its MACs) and of the SNN (its spikes on the first
        ``items`` evaluation items at each T) on named or YAML profiles; the dict of
        ``lavaconv energy --json`` (``per_profile``, ``ratios``, ``assumptions``, counts)."""
        shape = tuple(self.network.nodes[self.network.input_name].shape)
        activity = evaluation.measure_activity(self.network, self.dataset.x_eval[:items],
                                               list(timesteps), seed=seed, device=device,
                                               progress=False)
        out = summarize(ann_macs(self.model, shape), profiles_of(ann_profiles, "ann"),
                        self.network, activity, profiles_of(snn_profiles, "neuromorphic"))
        self.results["energy"] = out
        return out

    def report(self) -> dict:
        """What is known so far, as plain data."""
        out: dict[str, Any] = {"ann_accuracy": self.ann_accuracy, "numeric": self.network.numeric,
                               "options": dict(self.network.meta)}
        if "simulate" in self.results:
            ev = self.results["simulate"]
            out.update(snn_accuracy=ev.accuracy, spike_rate=ev.spike_rate)
        if self.quantization:
            out["quantization"] = [vars(q) for q in self.quantization]
        if "energy" in self.results:
            out["energy"] = self.results["energy"]
        return out

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.network.save(directory)


def convert(model: str | Path, *, data: str, norm: str | None = None,
            samples: int | None = 2000, calib_samples: int = 2000, arch: str | None = None,
            trust_pickle: bool = False, seed: int = 0, device: str = "cpu",
            **methods: Any) -> Converted:
    """Load ``model``, compute activation statistics on ``data``'s calibration items and
    convert (float).

    ``norm`` is a ``--norm`` spelling (default p99.9); ``methods`` are the other fields of
    :class:`~lavaconv.conversion.ConvertOptions` with their defaults, as on the command line:
    ``neuron``, ``input``, ``v_init``, ``readout``, ``shortcut_norm``, ``balance``, ``zeta``,
    ``correction``, ``calib_steps``, ``calib_items``, ``burst``, ``maxpool``, ``align``."""
    options = ConvertOptions(NormSpec.parse(norm) if norm else NormSpec(), **methods)
    prep = prepare(RunConfig(model, data, options, arch=arch, trust_pickle=trust_pickle,
                             samples=samples, calib_samples=calib_samples, seed=seed,
                             device=device, progress=False))
    return Converted(prep.net, prep.model.graph_module, prep.dataset, prep.stats,
                     prep.ann_accuracy)
