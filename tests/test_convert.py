"""Conversion core: normalisation modes, shortcut scaling, and the SNN matching the ANN."""

import numpy as np
import pytest
import torch
from nets import ResidualBlock, calibrated
from torch import nn

from lavaconv.conversion import ConvertOptions, NormSpec, convert
from lavaconv.errors import LavaconvError
from lavaconv.ir.network import IF, Conv, Dense, MaxPool
from lavaconv.sim.engine import encode_input, simulate


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    model = ResidualBlock()
    x = torch.rand(64, 1, 8, 8)
    gm, stats = calibrated(model, x, batches=2)
    return model, x, gm, stats


def test_norm_spec_parsing():
    assert NormSpec.parse("p99.9") == NormSpec("percentile", 99.9, False)
    assert NormSpec.parse("max:channel") == NormSpec("max", 100.0, True)
    assert str(NormSpec.parse("p99.99:channel")) == "p99.99:channel"
    for bad in ("p0", "p101", "median", "max:layer"):
        with pytest.raises(LavaconvError, match="--norm"):
            NormSpec.parse(bad)


def test_identity_shortcut_is_scaled_by_lambda_in_over_lambda_out(block):
    # S-ResNet eq. 6: the shortcut weight becomes max_in / max_out
    _, _, gm, stats = block
    net = convert(gm, (1, 8, 8), stats, ConvertOptions(NormSpec("max"), v_init=0.0))
    pops = [n for n, v in net.nodes.items() if isinstance(v, IF)]
    stem, _, out1 = pops[0], pops[1], pops[2]
    identity = [s for s in net.inputs_of(out1) if s.source == stem]
    assert len(identity) == 1 and identity[0].groups == 4
    expected = float(stats[stem].max(False)) / float(stats[out1].max(False))
    np.testing.assert_allclose(identity[0].weight.ravel(), expected, rtol=1e-6)


@pytest.mark.parametrize("spec", ["none", "max", "p99", "max:channel", "p99.9:channel"])
def test_normalised_rates_approach_ann_activations(block, spec):
    model, x, gm, stats = block
    net = convert(gm, (1, 8, 8), stats, ConvertOptions(NormSpec.parse(spec), v_init=0.0))
    lam = net.nodes["output"].scale
    with torch.no_grad():
        ann = model(x[:16]).numpy()
    steps = 2000
    res = simulate(net, encode_input(net, x[:16].numpy(), steps))
    snn = res.readout[steps].numpy() * lam / (steps - net.depth())
    # the readout potential divided by the integration time estimates the ANN output
    err = np.abs(snn - ann).max() / np.abs(ann).max()
    assert err < (0.05 if spec != "p99" else 0.15)
    if spec.endswith("channel"):
        assert net.nodes[next(iter(n for n, v in net.nodes.items() if isinstance(v, IF)))
                         ].scale.shape == (4,)


def test_max_norm_thresholds_bound_rates(block):
    _, x, gm, stats = block
    net = convert(gm, (1, 8, 8), stats, ConvertOptions(NormSpec("max"), v_init=0.0))
    res = simulate(net, encode_input(net, x[:8].numpy(), 200))
    for name, node in net.nodes.items():
        if isinstance(node, IF):
            assert float(res.spike_counts[name].max()) <= 200


def test_vgg_pieces_maxpool_gate_avgpool_dense():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 3, 3, padding=1)
            self.fc = nn.Linear(3 * 2 * 2, 2)

        def forward(self, x):
            x = nn.functional.max_pool2d(self.c(x), 2)  # max-pool before ReLU: swapped
            x = torch.relu(x)
            x = nn.functional.avg_pool2d(x, 2)
            return self.fc(torch.flatten(x, 1))

    torch.manual_seed(1)
    gm, stats = calibrated(Net(), torch.rand(64, 1, 8, 8))
    net = convert(gm, (1, 8, 8), stats, ConvertOptions(v_init=0.0))
    kinds = [type(v).__name__ for v in net.nodes.values()]
    assert kinds == ["Input", "IF", "MaxPool", "Readout"]
    dense = net.inputs_of("output")
    assert len(dense) == 1 and isinstance(dense[0], Dense) and dense[0].weight.shape == (2, 48)
    pool = next(v for v in net.nodes.values() if isinstance(v, MaxPool))
    assert pool.kernel == (2, 2) and pool.shape == (3, 4, 4) and pool.mode == "gate"
    assert isinstance(net.synapses[0], Conv)
    running = convert(gm, (1, 8, 8), stats, ConvertOptions(maxpool="running", v_init=0.0))
    assert next(v for v in running.nodes.values() if isinstance(v, MaxPool)).mode == "running"


def test_two_padded_convs_without_relu_are_refused():
    # the zero padding between them makes the pair no single convolution
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(72, 2))
    gm, stats = calibrated(model, torch.rand(64, 1, 6, 6))
    with pytest.raises(LavaconvError, match="no single convolution.*put a ReLU"):
        convert(gm, (1, 6, 6), stats)


def test_network_roundtrip(tmp_path, block):
    _, _, gm, stats = block
    net = convert(gm, (1, 8, 8), stats, ConvertOptions(NormSpec.parse("p99.9:channel"), "if",
                                                       align=True, v_init=0.0))
    net.save(tmp_path)
    back = type(net).load(tmp_path)
    assert list(back.nodes) == list(net.nodes) and back.meta == net.meta
    for a, b in zip(net.synapses, back.synapses, strict=True):
        assert type(a) is type(b) and np.array_equal(a.weight, b.weight) and a.delay == b.delay
    assert any(s.delay for s in back.synapses)
    for name in net.nodes:
        for field, value in vars(net.nodes[name]).items():
            other = getattr(back.nodes[name], field)
            assert np.array_equal(np.asarray(value), np.asarray(other)), (name, field)


def test_burst_divides_lambda_and_sharpens_short_runs(block):
    # burst spikes (Li & Zeng 2022): threshold lambda / K, up to K spikes a step; the same
    # clip, K-fold resolution, so a short run is closer to the ANN
    model, x, gm, stats = block
    nets = {k: convert(gm, (1, 8, 8), stats, ConvertOptions(NormSpec.parse("p99.9"), v_init=0.5,
                                                             burst=k)) for k in (1, 4)}
    for name, node in nets[4].nodes.items():
        if isinstance(node, IF):
            assert node.burst == 4
            np.testing.assert_allclose(node.scale * 4, nets[1].nodes[name].scale)
    with torch.no_grad():
        ann = model(x[:32]).numpy()
    steps, err = 12, {}
    for k, net in nets.items():
        res = simulate(net, encode_input(net, x[:32].numpy(), steps))
        snn = res.readout[steps].numpy() * net.nodes["output"].scale / (steps - net.depth())
        err[k] = np.abs(snn - ann).mean() / np.abs(ann).mean()
    assert err[4] < 0.5 * err[1]


def test_align_delays_early_inputs_to_the_last_arrival(block):
    # arrival of synapse s at its target: (first step its source can send) + 1 + s.delay; the
    # input sends from step 0, a population from its t_start, a max-pool with its source
    _, _, gm, stats = block

    def arrivals(net):
        ready = {net.input_name: 0}
        found = {}
        for name, node in net.nodes.items():
            if isinstance(node, MaxPool):
                ready[name] = ready[node.source]
            elif name != net.input_name:
                found[name] = [ready[s.source] + 1 + s.delay for s in net.inputs_of(name)]
                ready[name] = node.t_start
        return found

    plain_net = convert(gm, (1, 8, 8), stats, ConvertOptions(v_init=0.0))
    plain = arrivals(plain_net)
    aligned = convert(gm, (1, 8, 8), stats, ConvertOptions(align=True, v_init=0.0))
    assert not any(s.delay for s in plain_net.synapses)
    assert any(len(set(a)) > 1 for a in plain.values())  # the shortcut arrives a step early
    for name, steps in arrivals(aligned).items():
        assert set(steps) == {aligned.nodes[name].t_start}, name
    # stem, c1, c2 + shortcut, c3 + 1x1 shortcut, readout: the longest path, 5 synapses
    assert (plain_net.depth(), aligned.depth()) == (4, 5)


@pytest.mark.parametrize("kw,match", [({"burst": 0}, "--burst"), ({"burst": 17}, "--burst"),
                                      ({"burst": 2, "neuron": "if"}, "hard reset"),
                                      ({"maxpool": "avg"}, "--maxpool")])
def test_burst_and_maxpool_options_are_checked(kw, match):
    with pytest.raises(LavaconvError, match=match):
        ConvertOptions(**kw)


def test_binary_profile_refuses_burst_spikes(block):
    from lavaconv.cost.profiles import load_profile
    from lavaconv.quantize.integer import quantize

    _, x, gm, stats = block
    net = convert(gm, (1, 8, 8), stats, ConvertOptions(burst=2, v_init=0.0))
    with pytest.raises(LavaconvError, match="layer .*binary spikes only"):
        quantize(net, load_profile("loihi1").formats, input_max=1.0, timesteps=32)
