"""Python API: ``lavaconv.convert(...).energy(...)`` on the bundled ResNet against MACs counted
with forward hooks on the plain ``nn.Module`` and the figures read from the profile YAML files,
and the notebook example run end to end with small sizes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import lavaconv
from examples.models import ResNetStyle

ROOT = Path(__file__).resolve().parents[1]
PJ = 1e-12
STEPS = [8, 16]


def _hook_macs(model: nn.Module, shape: tuple[int, ...]) -> float:
    """MACs of one item: every conv's outputs x (in-channels / groups x kernel area), every
    linear layer's weights, counted while the module runs."""
    total = [0.0]

    def hook(module: nn.Module, _inputs, out: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * int(np.prod(module.kernel_size))
            total[0] += out[0].numel() * k
        else:
            total[0] += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total[0]


def _figure_j(profile: str, term: str) -> float:
    """A profile's energy figure in joules, read from its YAML file."""
    path = ROOT / "lavaconv" / "hw_profiles" / f"{profile}.yaml"
    q = yaml.safe_load(path.read_text())["energy"][term]
    return q["value"] * {"pJ": 1e-12, "fJ": 1e-15, "nJ": 1e-9}[q["unit"]]


@pytest.fixture(scope="module")
def resnet() -> lavaconv.Converted:
    return lavaconv.convert(ROOT / "examples/resnet_fmnist.pt2", data="fashion-mnist",
                            samples=12, calib_samples=200)


def test_energy_prices_hook_counted_macs_and_measured_synops(resnet):
    ann = ResNetStyle()
    ann.load_state_dict(torch.load(ROOT / "examples/resnet_state_dict.pt", weights_only=True))
    macs = _hook_macs(ann, (1, 28, 28))
    q = resnet.quantize("loihi2", timesteps=16)
    e = q.energy(STEPS, items=6, ann_profiles=["horowitz-45nm", "stratix10tx-fpga"],
                 snn_profiles=["truenorth", "loihi1"])
    assert e["ann_macs"] == macs
    assert e["per_profile"]["horowitz-45nm"]["total_j"] == pytest.approx(
        macs * _figure_j("horowitz-45nm", "mac_fp32"))
    assert e["per_profile"]["stratix10tx-fpga"]["total_j"] == pytest.approx(
        2 * macs * _figure_j("stratix10tx-fpga", "flop"))  # a MAC is two FLOPs
    assert e["items"] == 6 and e["timesteps"] == STEPS
    for t in STEPS:
        truenorth = e["per_profile"]["truenorth"]["by_t"][t]  # all-in: SOPs alone
        assert truenorth["total_j"] == pytest.approx(
            e["snn_synops"][t] * _figure_j("truenorth", "synaptic_op"))
        loihi = e["per_profile"]["loihi1"]["by_t"][t]
        assert loihi["synaptic_j"] == pytest.approx(
            e["snn_synops"][t] * _figure_j("loihi1", "synaptic_op"))
    assert e["snn_synops"][16] > e["snn_synops"][8] > 0  # more steps, more spikes
    assert q.report()["energy"] is e


def test_notebook_runs_with_small_sizes(tmp_path):
    env = {**os.environ, "LAVACONV_NOTEBOOK_ITEMS": "16", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "examples.notebook"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "identical spikes: True" in out.stdout


def test_every_method_reaches_the_network_and_lava():
    from lavaconv.ir.network import IF
    from lavaconv.lava import compare
    from lavaconv.sim.engine import simulate

    snn = lavaconv.convert(ROOT / "examples/vgg_fmnist.pt2", data="fashion-mnist", samples=4,
                           calib_samples=200, norm="max:neuron", neuron="snm", readout="count")
    hidden = [n for n in snn.network.nodes.values() if isinstance(n, IF)]
    assert {n.reset for n in hidden} == {"snm"}
    assert all(len(np.unique(n.payload)) > 1 for n in hidden)  # a payload per neuron
    q = snn.quantize("loihi2", timesteps=16)
    engine = simulate(q.network, torch.as_tensor(q.payload(2, 16)))
    assert compare(q.network, engine, q.run_lava(items=2, timesteps=16)) == []
