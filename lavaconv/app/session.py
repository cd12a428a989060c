"""A conversion session: the settings of a run (:class:`RunConfig`) and what preparing it gives
(:class:`Prepared`: data, the ANN's canonical graph and accuracy, its activation statistics and
the float spiking network), shared by the commands, deploy and the Python API."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lavaconv import distributed
from lavaconv.ann import probe
from lavaconv.ann.data import Dataset, load_dataset
from lavaconv.ann.stats import ActivationStats
from lavaconv.conversion import ConvertOptions, build
from lavaconv.cost.profiles import Profile, load_profile
from lavaconv.errors import LavaconvError, check_int
from lavaconv.frontend import LoadedModel, load_model
from lavaconv.ir.network import Network
from lavaconv.quantize.integer import LayerQuant, quantize
from lavaconv.quantize.sigma_delta import quantize_sigma_delta

DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class RunConfig:
    """What converting a model takes: the model file, the data, the conversion methods, and
    how the run goes (items, seed, device, progress bars)."""

    model: str | Path
    data: str
    options: ConvertOptions = field(default_factory=ConvertOptions)
    arch: str | None = None  # "module:callable" building the model of a state_dict
    trust_pickle: bool = False  # allow unpickling a whole nn.Module (runs code from the file)
    samples: int | None = 2000  # evaluation items (None: all)
    calib_samples: int = 2000  # calibration items (never evaluation items)
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | auto
    progress: bool = True

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise LavaconvError(f"device {self.device!r}: expected one of {', '.join(DEVICES)}")
        if self.samples is not None:
            check_int("samples", self.samples, 1)
        check_int("calib_samples", self.calib_samples, 1)
        check_int("seed", self.seed, 0, 2**32 - 1)


@dataclass
class Prepared:
    """A prepared run: the data, the loaded ANN, its accuracy and statistics, the float SNN."""

    config: RunConfig
    dataset: Dataset
    model: LoadedModel
    net: Network
    stats: dict[str, ActivationStats]
    ann_accuracy: float
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each part of prepare

    @property
    def options(self) -> ConvertOptions:
        return self.config.options

    def integer(self, profile: str | Profile, timesteps: int, weight_scale: str = "layer",
                stock: bool = False) -> tuple[Network, list[LayerQuant]]:
        """The integer network on ``profile``'s formats (and what quantization cost); ``stock``:
        for the graph of stock Lava processes (reset 'lif', :mod:`lavaconv.ir.stock`)."""
        return integer_network(self.net, profile, timesteps, self.dataset.x_calib,
                               weight_scale, stock)


def integer_network(net: Network, profile: str | Profile, timesteps: int, x_calib: np.ndarray,
                    weight_scale: str = "layer", stock: bool = False
                    ) -> tuple[Network, list[LayerQuant]]:
    """Float ``net`` on ``profile``'s formats: a sigma-delta network by its quantizer (which
    picks exponents on the calibration items ``x_calib``), any other by
    :func:`~lavaconv.quantize.integer.quantize`."""
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    if net.is_sigma_delta:
        return quantize_sigma_delta(net, prof.formats, x_calib)
    return quantize(net, prof.formats, timesteps=timesteps, weight_scale=weight_scale,
                    stock=stock)


def prepare(config: RunConfig, check: Callable[[LoadedModel], None] | None = None) -> Prepared:
    """Load data and model, measure the ANN, compute activation statistics and convert;
    ``check`` sees the loaded model first (a refusal there costs no calibration)."""
    start = time.perf_counter()
    dataset = load_dataset(config.data, n_eval=config.samples, n_calib=config.calib_samples,
                           seed=config.seed)
    model = load_model(config.model, tuple(dataset.x_eval.shape[1:]), arch=config.arch,
                       trust_pickle=config.trust_pickle)
    if check is not None:
        check(model)
    device = distributed.device(config.device)
    ann = probe.accuracy(model.graph_module, dataset.x_eval, dataset.y_eval, device=device)
    loaded = time.perf_counter()
    progress = config.progress and distributed.is_main()
    net, stats = build(model.graph_module, dataset, config.options, progress=progress,
                       device=device, seed=config.seed)
    net.meta.update(model=str(config.model), data=config.data, ann_accuracy=ann)
    seconds = {"load_and_ann": loaded - start, "convert": time.perf_counter() - loaded}
    return Prepared(config, dataset, model, net, stats, ann, seconds)
