"""Sigma-delta networks (issue 19): conversion, closed forms, and the integer engine against
Lava's own stock fixed-point models (real Lava runtime)."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lavaconv.conversion import ConvertOptions
from lavaconv.conversion.sigma_delta import sigma_delta_network
from lavaconv.errors import LavaconvError
from lavaconv.ir.fixedpoint import Formats
from lavaconv.ir.network import IF, Conv, Dense, Input, MaxPool, Network, Readout, SigmaDelta
from lavaconv.quantize.sigma_delta import quantize_sigma_delta
from lavaconv.sim.engine import encode_input, simulate


def _pool_net(rng, bias=0.1) -> Network:
    """input (2,6,6) -> conv 3x3 -> ReLU -> 2x2 max-pool -> dense -> ReLU -> readout, plus a
    shortcut from the conv population straight to the readout (a fan-in join)."""
    nodes = {"x": Input((2, 6, 6), x_max=1.0),
             "c1": IF((3, 6, 6), rng.normal(0, bias, (3, 1, 1))),
             "p": MaxPool((3, 3, 3), "c1", (2, 2), (2, 2)),
             "d": IF((5,), rng.normal(0, bias, 5)),
             "out": Readout((4,), rng.normal(0, bias, 4))}
    syns = [Conv("x", "c1", rng.normal(0, 0.5, (3, 2, 3, 3)), (1, 1), (1, 1)),
            Dense("p", "d", rng.normal(0, 0.4, (5, 27))),
            Dense("d", "out", rng.normal(0, 0.5, (4, 5))),
            Dense("c1", "out", rng.normal(0, 0.05, (4, 108)))]
    return Network(nodes, syns)


def _ann(net: Network, x: np.ndarray) -> np.ndarray:
    """The ANN the float IF network stands for (max-pool exact, no spikes)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    syn = {(s.source, s.target): torch.as_tensor(s.weight, dtype=torch.float64)
           for s in net.synapses}
    b = {n: torch.as_tensor(np.asarray(v.bias), dtype=torch.float64)
         for n, v in net.nodes.items() if hasattr(v, "bias")}
    c1 = torch.relu(F.conv2d(x, syn["x", "c1"], padding=1) + b["c1"])
    p = F.max_pool2d(c1, 2)
    d = torch.relu(p.flatten(1) @ syn["p", "d"].T + b["d"])
    return (d @ syn["d", "out"].T + c1.flatten(1) @ syn["c1", "out"].T + b["out"]).numpy()


def test_constant_input_settles_to_the_ann_within_the_threshold():
    """One hidden layer: after settling, every unit has sent its activation up to a residue
    below theta, so the readout is off by at most sum_j |W_oj| * theta (closed form)."""
    rng = np.random.default_rng(1)
    theta = 0.05
    nodes = {"x": Input((6,), x_max=1.0), "h": IF((8,), rng.normal(0, 0.2, 8)),
             "out": Readout((3,), rng.normal(0, 0.2, 3))}
    w1, w2 = rng.normal(0, 0.6, (8, 6)), rng.normal(0, 0.6, (3, 8))
    net = sigma_delta_network(Network(nodes, [Dense("x", "h", w1), Dense("h", "out", w2)]),
                              theta)
    x = rng.random((50, 6))
    res = simulate(net, encode_input(net, x, 12))
    ann = np.maximum(x @ w1.T + nodes["h"].bias, 0) @ w2.T + nodes["out"].bias
    err = np.abs(res.readout[12].numpy() - ann)
    assert np.all(err <= np.abs(w2).sum(axis=1) * theta + 1e-5)
    assert err.max() > 0  # the threshold does cut (not a vacuous bound)
    # before the input can reach the readout (2 synapses), the readout holds only nothing
    assert np.all(simulate(net, encode_input(net, x, 12), [1]).readout[1].numpy() == 0)


def test_max_pool_construction_is_exact_and_residual_fans_in():
    """With a vanishing threshold every unit sends its exact activation: the two ReLU layers
    of the max-pool give max(a, b, c, d) exactly and the readout equals the ANN."""
    rng = np.random.default_rng(2)
    net = _pool_net(rng)
    sd = sigma_delta_network(net, 1e-9)
    assert [type(sd.nodes[n]).__name__ for n in ("p.diff", "p.max")] == ["SigmaDelta"] * 2
    assert sd.nodes["p.diff"].shape == (12, 3, 3) and sd.nodes["p.max"].shape == (6, 3, 3)
    assert sd.meta["depth"] == 5  # x->c1->diff->max->d->out
    x = rng.random((20, 2, 6, 6))
    res = simulate(sd, encode_input(sd, x, 8))
    np.testing.assert_allclose(res.readout[8].numpy(), _ann(net, x), atol=2e-4)


def test_messages_only_while_the_wave_passes():
    """A constant input: the input sends once at t = 0 and every layer falls silent after its
    input does (no traffic after depth + 1 steps)."""
    rng = np.random.default_rng(3)
    sd = sigma_delta_network(_pool_net(rng), 0.02)
    x = rng.random((10, 2, 6, 6))
    early = simulate(sd, encode_input(sd, x, 7), [7], counts_at=True)
    late = simulate(sd, encode_input(sd, x, 40), [40], counts_at=True)
    for name, counts in late.spike_counts.items():
        assert torch.equal(counts, early.counts_at[7][name]), name
    assert int(late.input_counts[40].sum()) == int((x != 0).sum())


@pytest.fixture(scope="module", params=[False, True], ids=["lava", "netx"])
def integer_net(request):
    """The pool network quantized for Lava, and on netx's grid (state_exp 6, weight_exp 0,
    biases from step 0, the readout's from step 1)."""
    rng = np.random.default_rng(4)
    sd = sigma_delta_network(_pool_net(rng, bias=0.3), 0.02)
    x = rng.random((48, 2, 6, 6))
    net, report = quantize_sigma_delta(sd, Formats(), x, items=48, netx=request.param)
    if request.param:
        assert {n.state_exp for n in net.nodes.values() if isinstance(n, SigmaDelta)} == {6}
        assert all(s.weight_exp == 0 for s in net.synapses if isinstance(s, Dense))
        assert {n.t_start for n in net.nodes.values() if isinstance(n, SigmaDelta)} == {0}
        assert net.nodes["out"].t_start == 2  # two inputs: no pulse unit (export refuses)
    return net, report, x


def test_quantized_fields_follow_lavas_formats(integer_net):
    net, report, _ = integer_net
    for syn in net.synapses:
        w = syn.weight
        assert np.array_equal(w, np.round(w)) and w.min() >= -256 and w.max() <= 254
        assert not np.any(w % 2)  # Lava's 8-bit mixed-sign grid keeps even values
    for node in net.nodes.values():
        if isinstance(node, SigmaDelta):
            assert 0 <= node.state_exp <= 7
            assert int(node.v_threshold) % (1 << node.state_exp) == 0  # vth << state_exp
            assert 2 <= node.message_bits <= 24
    assert not any(r.saturated for r in report)


def test_integer_engine_is_bit_exact_with_lavas_stock_models(integer_net):
    """The stock graph (Delta, SigmaDelta, Sigma, Dense, Conv, RingBuffer bias pulses) under
    Loihi2SimCfg fixed_pt: every message count and the readout equal the engine's, for three
    items run back to back (state reset between them)."""
    from lavaconv.lava import run_lava
    from lavaconv.lava.verify import compare

    net, _, x = integer_net
    torch.set_num_threads(1)
    payload = encode_input(net, x[:3], 9)
    engine = simulate(net, payload)
    lava = run_lava(net, payload.numpy())
    assert compare(net, engine, lava) == []
    assert sum(int(c.sum()) for c in engine.spike_counts.values()) > 0
    assert np.any(lava.readout != 0)


def test_integer_close_to_float(integer_net):
    net, _, x = integer_net
    sd = sigma_delta_network(_pool_net(np.random.default_rng(4), bias=0.3), 0.02)
    f = simulate(sd, encode_input(sd, x, 8)).readout[8].numpy()
    scale = net.meta["sd_scales"][net.output_name]
    i = simulate(net, encode_input(net, x, 8)).readout[8].numpy() / scale
    assert np.abs(f - i).max() < 0.05 * np.abs(f).max()


def test_half_unit_offset_rounds_the_first_message():
    """Lava 0.10 floors a message (``s >> state_exp``) and drops the bits; with half a message
    unit in the bias pulse a unit's first message (its whole activation) is rounded instead."""
    from lavaconv.sim.sigma_delta import sigma_delta as sd_dynamics

    st = 7
    act = torch.arange(0, 5000, 37, dtype=torch.float64)[None, None]  # (1 step, 1 item, n)
    out = {}
    for offset in (0, 2 ** (st - 1)):
        node = SigmaDelta((act.shape[-1],), np.full(act.shape[-1], float(offset)), 2.0**st, 0,
                          1.0)
        node.state_exp = st
        out[offset] = sd_dynamics(node, act, True)[0][0, 0] * 2**st
    sent = act[0, 0] >= 2**st - 2 ** (st - 1)  # what reaches the threshold with the offset
    err_floor, err_round = out[0] - act[0, 0], out[2 ** (st - 1)] - act[0, 0]
    assert torch.all(err_round[sent].abs() <= 2 ** (st - 1))
    assert torch.all(err_floor[act[0, 0] >= 2**st] <= 0) and err_floor.min() > -(2**st)
    assert abs(float(err_round[sent].mean())) < abs(float(err_floor[sent].mean())) / 4


def test_round_messages_adds_half_a_unit_to_every_pulse():
    """The same scales, weights and thresholds; every sigma-delta unit's bias pulse (the
    max-pool's too, which has no bias of its own) carries ``2**(state_exp - 1)`` more."""
    rng = np.random.default_rng(4)
    sd = sigma_delta_network(_pool_net(rng, bias=0.3), 0.02)
    x = rng.random((48, 2, 6, 6))
    nets = {r: quantize_sigma_delta(sd, Formats(), x, items=48, round_messages=r)[0]
            for r in (False, True)}
    assert nets[True].meta["sd_scales"] == nets[False].meta["sd_scales"]
    for a, b in zip(nets[True].synapses, nets[False].synapses, strict=True):
        np.testing.assert_array_equal(a.weight, b.weight)
    units = [k for k, n in nets[True].nodes.items() if isinstance(n, SigmaDelta)]
    assert {"p.diff", "p.max"} <= set(units)
    for name in units:
        on, off = nets[True].nodes[name], nets[False].nodes[name]
        assert on.v_threshold == off.v_threshold
        np.testing.assert_array_equal(np.asarray(on.bias) - np.asarray(off.bias),
                                      2.0 ** (on.state_exp - 1))


def test_save_load_round_trip(integer_net, tmp_path):
    net, _, x = integer_net
    net.save(tmp_path)
    back = Network.load(tmp_path)
    assert back.is_sigma_delta and type(back.nodes["out"]).__name__ == "Sigma"
    p = encode_input(net, x[:4], 8)
    assert torch.equal(simulate(net, p).readout[8], simulate(back, p).readout[8])


@pytest.mark.parametrize("bad", [dict(burst=2), dict(input="poisson"), dict(readout="count"),
                                 dict(correction="bias"), dict(align=True)])
def test_options_that_do_not_combine(bad):
    with pytest.raises(LavaconvError, match="sigma-delta"):
        ConvertOptions(neuron="sigma-delta", **bad)
    with pytest.raises(LavaconvError, match="sd-threshold"):
        ConvertOptions(neuron="sigma-delta", sd_threshold=0)


def test_only_2x2_max_pools():
    rng = np.random.default_rng(5)
    net = _pool_net(rng)
    net.nodes["p"] = MaxPool((3, 2, 2), "c1", (3, 3), (3, 3))
    with pytest.raises(LavaconvError, match="2x2"):
        sigma_delta_network(net, 0.02)


def test_cli_deploy_vgg_sigma_delta(tmp_path, capsys):
    """``deploy --neuron sigma-delta`` on the bundled VGG (two exact max-pools): Lava's stock
    models agree with the engine on every message, and the report says so."""
    import json
    from pathlib import Path

    from lavaconv.app.cli import main

    root = Path(__file__).resolve().parents[1]
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((60, 1, 28, 28), np.float32),
             y=np.arange(60) % 10)
    code = main(["deploy", str(root / "examples" / "vgg_fmnist.pt2"), "--data",
                 str(tmp_path / "d.npz"), "--neuron", "sigma-delta", "--timesteps", "14",
                 "--lava-samples", "1", "--compare-rate", "--out", str(tmp_path / "out"),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["lava"]["bit_exact"] is True
    # --compare-rate: the rate-coded stock graph on the same items, as the API builds it
    import lavaconv

    rate = report["rate_coded"]
    snn = lavaconv.convert(root / "examples" / "vgg_fmnist.pt2", data=str(tmp_path / "d.npz"),
                           maxpool="relu").quantize("loihi2", timesteps=14, stock=True)
    assert rate["snn_accuracy"]["14"] == snn.simulate([14])[14]
    assert rate["energy"]["snn_synops"]["14"] > report["energy"]["snn_synops"]["14"] > 0
    assert "Sigma-delta against rate coding" in (tmp_path / "out" / "report.md").read_text()
    assert main(["deploy", str(root / "examples" / "vgg_fmnist.pt2"), "--data",
                 str(tmp_path / "d.npz"), "--compare-rate", "--out", str(tmp_path / "o2")]) == 2
    assert "--compare-rate compares a sigma-delta" in capsys.readouterr().err


def test_netx_export_refuses_in_one_line(integer_net, tmp_path):
    """A join, lavaconv's own grid (state_exp 7), and a bias pulse at t_start (netx's SDNN bias
    flows from step 0) are each refused naming the layer."""
    from lavaconv.export.netx import export_netx

    net = copy.deepcopy(integer_net[0])
    with pytest.raises(LavaconvError, match="layer out: 2 inputs"):
        export_netx(net, tmp_path / "x.net")
    net.synapses = [s for s in net.synapses if (s.source, s.target) != ("c1", "out")]
    if net.meta.get("grid") != "netx":
        with pytest.raises(LavaconvError, match="layer c1: state_exp 7, spike_exp 0"):
            export_netx(net, tmp_path / "x.net")
        return
    net.nodes["c1"].t_start = 1
    with pytest.raises(LavaconvError, match="layer c1: has a bias from t_start = 1"):
        export_netx(net, tmp_path / "x.net")
