"""The stock LIF soft-reset graph (issue 18) against Lava's own bit-accurate models."""

from pathlib import Path

import numpy as np
import pytest
import torch

from lavaconv.app import cli
from lavaconv.errors import LavaconvError
from lavaconv.ir import stock
from lavaconv.ir.network import IF, Conv, Dense, Input, Network, Readout
from lavaconv.lava import run_stock
from lavaconv.lava.fused import FusedNetwork
from lavaconv.lava.graph import lava_shape, to_lava
from lavaconv.lava.stock import build_stock, describe
from lavaconv.sim import kernels, lif
from lavaconv.sim.engine import encode_input, simulate

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


pytestmark = pytest.mark.usefixtures("single_thread_torch")


def _even(rng, shape, lo, hi):
    return 2 * rng.integers(lo // 2, hi // 2 + 1, size=shape)


def _bias(rng, shape, top):
    return stock.round_bias(64.0 * rng.integers(-top, top, shape))


def stock_net(seed: int = 0) -> Network:
    """Conv with padding → conv with a residual input shortcut → Dense → readout with a second
    Dense from the first map; biases (two Sparse terms), v_init, a_exp 0..3, negative readout
    exponent (floored per synapse), potentials large enough to wrap u and saturate v."""
    rng = np.random.default_rng(seed)
    c = 3
    nodes = {
        "x": Input((2, 6, 6), "analog", payload_bits=8, gain=16.0),
        "a": IF((c, 6, 6), _bias(rng, (c, 1, 1), 400), np.array(200 << 6), "lif", 1, a_exp=2,
                v_init=rng.integers(-2**14, 2**14, (c, 6, 6))),
        "r": IF((c, 6, 6), _bias(rng, (c, 6, 6), 3000), np.array(4096 << 6), "lif", 2, a_exp=3),
        "h": IF((7,), _bias(rng, 7, 100), np.array(254 << 6), "lif", 3, a_exp=0,
                v_init=np.full(7, 254 << 5)),
        "output": Readout((4,), rng.integers(-4000, 4000, 4) * 4, 4, a_exp=-2, lif=True),
    }
    syn = [Conv("x", "a", _even(rng, (c, 2, 3, 3), -100, 200), (1, 1), (1, 1)),
           Conv("a", "r", _even(rng, (c, c, 3, 3), -80, 200), (1, 1), (1, 1)),
           Conv("x", "r", _even(rng, (c, 2, 1, 1), -80, 200)),  # residual join
           Dense("r", "h", _even(rng, (7, c * 36), -200, 254)),
           Dense("h", "output", _even(rng, (4, 7), -256, 254)),
           Dense("a", "output", _even(rng, (4, c * 36), -60, 60))]
    return Network(nodes, syn, numeric="int")


def _inputs(net: Network, items: int) -> np.ndarray:
    x = np.random.default_rng(1).uniform(-0.5, 1, (items, *net.nodes[net.input_name].shape))
    return np.round(x * 16) / 16


def _fused_trains(net: Network, payload: np.ndarray) -> dict[str, np.ndarray]:
    """The fused model stepped directly (no Lava): every population's and floor neuron's
    spikes, (K, T, *shape) in torch layout."""
    graph = build_stock(net, payload, monitors=False)
    fused = FusedNetwork(graph.processes, [graph.neurons[n] for n in graph.floors], graph.top,
                         restart=graph.steps)
    procs = {**graph.neurons, **{f"{n}.floor": p for n, p in graph.floors.items()}}
    sent = {name: [] for name in procs}
    for time_step in range(1, graph.items * graph.steps + 1):
        out = fused.step(time_step)
        for name, proc in procs.items():
            sent[name].append(out[proc].copy())
    trains = {}
    for name, x in sent.items():
        shape = net.nodes[name.removesuffix(".floor")].shape
        x = np.stack(x).reshape(graph.items, graph.steps, *lava_shape(shape))
        trains[name] = to_lava(x, shape)
    return trains


@pytest.mark.parametrize("seed", [0, 1])
def test_stock_graph_stock_and_fused_models_are_bit_exact_with_the_engine(seed):
    """Lava's stock bit-accurate models (one OS process each) and the fused model of them:
    each equals the engine spike for spike (trains), count for count and v for v; three
    items back to back."""
    net = stock_net(seed)
    payload = encode_input(net, _inputs(net, 3), 48)
    sent = {}
    eng = simulate(net, payload, probe=lambda name, u, train: sent.setdefault(name, train))
    res = run_stock(net, payload.numpy(), fast=False)
    fast = run_stock(net, payload.numpy())  # the default on sim: fused
    trains = _fused_trains(net, payload.numpy())
    for name, counts in eng.spike_counts.items():
        expected = sent[name].numpy().swapaxes(0, 1) != 0  # (K, T, *shape)
        assert np.array_equal(res.spike_trains[name], expected), name
        assert np.array_equal(trains[name], expected), name
        assert np.array_equal(counts.numpy(), res.spike_counts[name]), name
        assert np.array_equal(counts.numpy(), fast.spike_counts[name]), name
        assert 0 < counts.sum() < counts.numel() * 48, f"{name} idle or saturated"
    assert sum(int(trains[f"{n}.floor"].sum()) for n in eng.spike_counts) > 100  # floors fire
    assert np.array_equal(eng.readout[48].numpy(), res.readout)
    assert np.array_equal(eng.readout[48].numpy(), fast.readout)
    assert not np.array_equal(res.readout[0], res.readout[1])  # items differ: resets worked
    assert sum(eng.saturated.values()) > 0  # wrap and clip paths were exercised
    assert not fast.spike_trains  # the fused model counts; only monitors record trains
    for r in (res, fast):
        assert all(c.startswith("lava.proc.") for c in r.process_classes)
        # per population: self, mirror, floor self, lift; every bias term twice (main, floor)
        assert r.process_classes["lava.proc.sparse.process.Sparse"] == 3 * 4 + 2 * 5
        assert not r.hardware["ready"]
    assert res.process_classes["lava.proc.monitor.process.Monitor"] == 3
    assert "lava.proc.monitor.process.Monitor" not in fast.process_classes


def test_stock_graph_without_floor_is_bit_exact_with_the_engine():
    """``IF.floor`` off (netx's grid): no floor neuron, its mirrors or bias copies in the
    graph; u falls freely (wraps in both) and the engine still equals Lava spike for spike."""
    net = stock_net(0)
    for node in net.nodes.values():
        if isinstance(node, IF):
            node.floor = False
    payload = encode_input(net, _inputs(net, 2), 48)
    eng = simulate(net, payload)
    res = run_stock(net, payload.numpy())
    for name, counts in eng.spike_counts.items():
        assert np.array_equal(counts.numpy(), res.spike_counts[name]), name
        assert counts.sum() > 0, name
    assert np.array_equal(eng.readout[48].numpy(), res.readout)
    assert res.process_classes["lava.proc.sparse.process.Sparse"] == 3 + 5  # self, bias terms
    assert res.process_classes["lava.proc.lif.process.LIF"] == 3 + 1 + 3  # + readout, clocks


def test_stock_neuron_is_not_the_ideal_one():
    """The construction's leak and carry are real (what the engine models): a neuron held
    just below threshold by its initial potential drifts, the ideal IF neuron does not."""
    theta = 128 << 6
    node = IF((1,), np.zeros(1), np.array(theta), "lif", 1)
    u0 = torch.tensor([theta - 64 * 8], dtype=torch.int64)
    out = torch.zeros(500, 1)
    lif.lif_integrate_and_fire(lambda t: torch.zeros(1, dtype=torch.int64), 500,
                                 torch.tensor(theta), u0, out)
    assert out.sum() == 0 and node.reset == "lif"
    u = u0.clone()
    for _ in range(10):
        u = lif.leak(u)
    assert int(u) == int(u0) - 10 * 2  # ceil(8128 / 4096) = 2 per step


def test_grids_round_trip():
    for m in [1, 2, 127, 128, 129, 255, 1000, 8625, 16384, 12392]:
        r = stock.round_threshold(m)
        w, e = stock.self_weight(r)
        assert w % 2 == 0 and 2 <= w <= 254 and w * 2.0**e == r and r <= m < 2 * r
    b = np.random.default_rng(0).normal(0, 3e5, 50)
    grid = stock.round_bias(b)
    assert np.all(grid % 64 == 0) and np.max(np.abs(grid - b)) < 64 * 2
    terms = stock.bias_terms(grid >> 6)
    assert np.array_equal(stock.terms_value(terms, grid.shape), grid >> 6)
    assert all(np.all(w % 2 == 0) and np.abs(w).max() <= 254 for w, _ in terms)


def _prepared(model: str):
    from lavaconv.app.session import RunConfig, prepare

    return prepare(RunConfig(ROOT / "examples" / model, "fashion-mnist", samples=8,
                             calib_samples=64, progress=False))


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not installed")
def test_bundled_examples_deploy_stock_processes_only():
    from lavaconv.app.deploy import DeployConfig, choose_graph

    prep = _prepared("resnet_fmnist.pt2")
    assert choose_graph(prep.net, DeployConfig(target="loihi2"))
    net, _ = prep.integer("loihi2", 64, stock=True)
    found = describe(net)
    assert found["process_classes"]["lava.proc.lif.process.LIF"] >= 16  # 7 x 2 + readout + clock
    assert all(c.startswith(("lava.proc.", "lava.lib.dl.")) for c in found["process_classes"])
    prep = _prepared("vgg_fmnist.pt2")  # max-pool: our gate on sim, refused on loihi2
    assert not choose_graph(prep.net, DeployConfig())
    with pytest.raises(LavaconvError, match="max-pool needs lavaconv's MaxPoolGate"):
        choose_graph(prep.net, DeployConfig(target="loihi2"))


@pytest.mark.parametrize("option,named", [
    (["--neuron", "snm"], "--neuron snm"), (["--burst", "2"], "--burst"),
    (["--readout", "count"], "--readout count"), (["--align"], "--align"),
    (["--weights", "channel"], "--weights channel"), (["--graph", "ours"], "--graph ours")])
def test_loihi2_target_refuses_our_processes_in_one_line(option, named, capsys):
    argv = ["deploy", str(ROOT / "examples" / "resnet_fmnist.pt2"), "--data", "/nonexistent",
            "--target", "loihi2", *option]
    assert cli.main(argv) == 2  # before the data is even read
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and "use " in err


def test_stock_graph_refuses_what_it_cannot_build():
    net = stock_net()
    net.nodes["a"].v_threshold = np.array(201 << 6)
    with pytest.raises(LavaconvError, match="layer a: .* not an even 8-bit weight"):
        build_stock(net, np.zeros((1, 1, 2, 6, 6)))
    net = stock_net()
    net.nodes["r"].bias = net.nodes["r"].bias + 32
    with pytest.raises(LavaconvError, match="layer r: bias is not on the stock grid"):
        build_stock(net, np.zeros((1, 1, 2, 6, 6)))


def test_resource_estimate_counts_the_construction():
    from lavaconv.cost.profiles import load_profile
    from lavaconv.cost.resources import estimate

    net = stock_net()
    layers = {x["name"]: x for x in estimate(net, load_profile("loihi2"))["layers"]}
    a = layers["a"]  # 108 neurons, 18 synapses each
    terms = len(stock.bias_terms(np.broadcast_to(net.nodes["a"].bias, (3, 6, 6)).ravel() >> 6))
    assert a["neurons"] == 2 * 108 and terms == 2  # and their floor neurons
    assert a["stock_synapses"] == 108 * 18 + 108 * (4 + 2 * terms)
    assert layers["output"]["stock_synapses"] == 0
    net.nodes["a"].floor = False  # netx's grid: the self-connection and bias terms only
    a = {x["name"]: x for x in estimate(net, load_profile("loihi2"))["layers"]}["a"]
    assert a["neurons"] == 108 and a["stock_synapses"] == 108 * (1 + terms)


class Tiny(torch.nn.Module):
    """conv-ReLU-conv-ReLU-linear on 1x8x8: what the stock graph deploys."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(torch.flatten(x, 1))


def test_loihi2_deploy_without_lava_loihi_runs_the_stock_graph_on_cpu(tmp_path, capsys):
    import json

    from lavaconv.lava import loihi2_available

    if loihi2_available():
        pytest.skip("lava-loihi is installed: the graph would run on the chip")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((40, 1, 8, 8)).astype(np.float32),
             y=rng.integers(0, 3, 40))
    torch.export.save(torch.export.export(Tiny().eval(), (torch.zeros(1, 1, 8, 8),)),
                      tmp_path / "tiny.pt2")
    code = cli.main(["deploy", str(tmp_path / "tiny.pt2"), "--data", str(tmp_path / "d.npz"),
                     "--target", "loihi2", "--timesteps", "24", "--samples", "8",
                     "--lava-samples", "2", "--quiet", "--out", str(tmp_path / "out")])
    assert code == 2 and "lava-loihi" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["graph"] == "stock" and report["lava"]["bit_exact"]
    assert all(c.startswith("lava.proc.") for c in report["lava"]["process_classes"])
    assert not report["hardware"]["ready"] and "lava-loihi" in report["hardware"]["missing"][0]


def test_stock_network_saves_and_loads(tmp_path):
    net = stock_net()
    net.nodes["h"].floor = False
    net.save(tmp_path)
    back = Network.load(tmp_path)
    assert back.nodes["output"].lif and back.nodes["a"].reset == "lif"
    assert back.nodes["a"].floor and not back.nodes["h"].floor
    assert np.array_equal(back.nodes["r"].bias, net.nodes["r"].bias)


def _lava_lif_step(u, v, a_in_shifted):
    """One PyLifModelBitAcc update (du = 0, dv = 4095, no bias), transcribed from Lava 0.10's
    ``lava/proc/lif/models.py`` in numpy int64."""
    decayed = np.sign(u * 4095) * np.right_shift(np.abs(u * 4095), 12) + a_in_shifted
    u = np.where(decayed > 2**23, decayed - 2**24, decayed)
    u = np.where(u <= -2**23, decayed + 2**24, u)
    v = np.clip(np.sign(v) * np.right_shift(np.abs(v), 12) + u, -(2**23) + 1, 2**23 - 1)
    return u, v


def test_lif_loop_matches_lavas_update_at_the_wrap_edges():
    """The engine's float64 loop (floor neuron kept as -u while that is exact) against Lava's
    LIF update in int64, with currents that put u exactly on +-2**23 (the one asymmetric
    wrap), wrap it past them, and drive the floor neuron."""
    rng = np.random.default_rng(3)
    theta, steps, n = 300 << 6, 40, 64
    cur = (rng.integers(-2**17, 2**17, (steps, n)) << 6).astype(np.int64)
    cur[0, :4] = [2**23, -(2**23), 2**23 + 64, -(2**23) - 64]
    cur[1:, :4] = 0  # then whether the floor fired at step 0 decides u's spikes
    cur[5:9, 4:8] = 2**22  # u climbs through 2**23 and wraps
    u0 = rng.integers(-theta, theta, n)
    u0[:4] = 0
    u, uf, v, vf = u0.copy(), -u0, np.zeros(n, np.int64), np.zeros(n, np.int64)
    s = sf = np.zeros(n, np.int64)
    want, mirrored = [], []
    for t in range(steps):
        x = cur[t] - theta * s + stock.FLOOR * theta * sf
        u, v = _lava_lif_step(u, v, x)
        uf, vf = _lava_lif_step(uf, vf, -x)
        mirrored.append(np.array_equal(u, -uf))
        s, sf = (v > theta).astype(np.int64), (vf > stock.FLOOR * theta).astype(np.int64)
        v, vf = np.where(s > 0, 0, v), np.where(sf > 0, 0, vf)
        want.append(s)
    out = torch.zeros(steps, n)
    lif.lif_integrate_and_fire(lambda t: torch.as_tensor(cur[t]), steps, torch.tensor(theta),
                               torch.as_tensor(u0), out)
    assert np.array_equal(out.numpy(), np.array(want))
    assert not mirrored[0] and np.array(want)[:, 4:8].sum() > 0  # the edges were reached
    # the CPU kernel, items of 4 neurons: it steps an item's floor neurons as the mirror of its
    # neurons until one u lands on 2**23 (item 0 at step 0), then in full
    m = 4
    keep = np.ones(n // m, dtype=np.bool_)
    spikes = np.zeros((steps, n), dtype=np.uint8)
    tally = (np.zeros(steps, np.int64), np.zeros(steps), np.zeros((1, n), np.float32))
    kernels.lif_chunk((cur >> 6).astype(np.float32), steps, 0, 0, 0, np.zeros(m, np.int64),
                      np.full(m, theta), np.stack([u0, -u0]).astype(np.int32),
                      np.zeros((2, n), np.int32), np.zeros(n, np.uint8), keep, spikes, tally,
                      None)
    assert np.array_equal(spikes, np.array(want))
    assert not keep[0] and keep[2:].all()


def test_fused_model_matches_the_stock_models_beyond_what_build_stock_emits():
    """Hand-built stock graphs through Lava's bit-accurate models and the fused model, v for v
    and spike for spike: LIF with any du, dv, bias_mant << bias_exp, u wrapping and v
    clipping; Sparse with weights clipped to 8 bits and truncated to 6, weight_exp -1 and +2,
    graded (8 message bits) and binary input; a Dense and a Sparse into one LIF."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import Dense as LavaDense
    from lava.proc.io.source import RingBuffer
    from lava.proc.lif.process import LIF
    from lava.proc.monitor.process import Monitor
    from lava.proc.sparse.process import Sparse
    from scipy.sparse import random as sparse_random

    from lavaconv.lava import dynamics
    from lavaconv.lava import stock as lava_stock
    from lavaconv.lava.procs import models
    from lavaconv.lava.procs.process import SpikingNetwork

    steps = 24

    def graph():
        rng = np.random.default_rng(3)
        src = RingBuffer(data=rng.integers(-127, 128, (40, steps)).astype(np.int32))
        a = LIF(shape=(30,), du=int(rng.integers(0, 4096)), dv=int(rng.integers(0, 4096)),
                bias_mant=rng.integers(-4096, 4096, 30), bias_exp=rng.integers(0, 8, 30),
                vth=int(rng.integers(1000, 20000)), u=rng.integers(-2**22, 2**22, 30),
                v=rng.integers(-2**22, 2**22, 30))
        b = LIF(shape=(5,), du=17, dv=4000, bias_mant=3, bias_exp=7, vth=2**16, u=0, v=0)
        w = sparse_random(30, 40, density=0.4, random_state=4, data_rvs=lambda n: rng.integers(
            -400, 400, n)).astype(np.int64)
        synapses = [
            (src, LavaDense(weights=rng.integers(-255, 256, (30, 40)), num_message_bits=8), a),
            (src, Sparse(weights=w, num_message_bits=8, num_weight_bits=6, weight_exp=-1), a),
            (a, Sparse(weights=-np.diag(rng.integers(0, 120, 30)), weight_exp=2), a),
            (a, Sparse(weights=rng.integers(-90, 90, (5, 30)), weight_exp=-1), b)]
        for sender, syn, receiver in synapses:
            sender.s_out.connect(syn.s_in)
            syn.a_out.connect(receiver.a_in)
        return [src, a, b, *(s for _, s, _ in synapses)], a, b

    procs, a, b = graph()
    mon = Monitor()
    mon.probe(a.s_out, steps)
    chosen = {p: lava_stock.MODELS[type(p)] for p in procs}
    try:
        b.run(RunSteps(num_steps=steps), Loihi2SimCfg(select_tag="fixed_pt",
                                                      exception_proc_model_map=chosen))
        spikes = np.asarray(mon.get_data()[a.name][a.s_out.name]) != 0
        v_stock, u_stock = b.v.get(), a.u.get()
    finally:
        b.stop()
    procs, a, b = graph()
    fused = FusedNetwork(procs, [a], b, restart=steps)
    trains = np.stack([fused.step(t)[a].copy() for t in range(1, steps + 1)])
    assert np.array_equal(trains, spikes)
    assert np.array_equal(fused.score, v_stock)
    assert np.array_equal(fused.nodes[a].state["u"], u_stock)
    assert 0 < spikes.sum() < spikes.size and np.abs(u_stock).max() > 2**20
    procs, a, b = graph()  # and the same through Lava as one process
    top = SpikingNetwork(procs=procs, counted=[a], readout=b, restart=steps)
    try:
        chosen = {top: models.PySpikingNetworkModelFused}
        top.run(RunSteps(num_steps=steps),
                Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map=chosen))
        assert np.array_equal(top.score.get(), v_stock)
        counts = dynamics.unpack_counts(top.count.get(), 30, steps)  # packed for Lava's get
        assert np.array_equal(counts, spikes.sum(axis=0))
    finally:
        top.stop()
