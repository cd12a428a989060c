"""NIR and netx exports: read back, re-simulated, against the engine.

Float networks here hold dyadic values (multiples of 2**-8, inputs of 2**-4): every sum is exact
in float32 whatever the order, so re-simulations must match the engine exactly, and membrane
potentials land exactly on the threshold often (the v >= threshold case is exercised).
"""

import math

import nir
import numpy as np
import pytest
import torch
from nets import ResidualBlock, calibrated

import lavaconv.lava  # noqa: F401  (first: Lava sets the fork start method on import)
from lavaconv.conversion import ConvertOptions, NormSpec, convert
from lavaconv.errors import LavaconvError
from lavaconv.export.netx import export_netx
from lavaconv.export.nir import below, export_nir, nir_graph, output_node, spike_node
from lavaconv.export.nir_sim import run_nir
from lavaconv.ir.network import IF, Conv, Dense, Input, MaxPool, Network, Readout, Sigma, SigmaDelta
from lavaconv.sim.engine import encode_input, simulate

STEPS = 40


def dyadic(rng, shape, lo: int, hi: int, den: int) -> np.ndarray:
    return rng.integers(lo, hi + 1, size=shape) / den


def chain(reset: str, seed: int = 0) -> Network:
    """conv → IF → 2x2 avg-pool (depthwise conv) → IF → flatten → dense → IF → dense → readout."""
    rng = np.random.default_rng(seed)
    nodes = {"x": Input((1, 6, 6)),
             "a": IF((3, 4, 4), dyadic(rng, (3, 1, 1), -2, 4, 32), reset=reset, t_start=1),
             "b": IF((3, 2, 2), np.zeros(()), reset=reset, t_start=2),
             "c": IF((5,), dyadic(rng, (5,), -2, 4, 32), reset=reset, t_start=3),
             "output": Readout((4,), dyadic(rng, (4,), -4, 4, 32), t_start=4)}
    syns = [Conv("x", "a", dyadic(rng, (3, 1, 3, 3), -8, 12, 16)),
            Conv("a", "b", np.full((3, 1, 2, 2), 0.25), (2, 2), groups=3),
            Dense("b", "c", dyadic(rng, (5, 12), -8, 12, 16)),
            Dense("c", "output", dyadic(rng, (4, 5), -8, 8, 16))]
    return Network(nodes, syns)


def residual(reset: str, encoding: str = "analog", seed: int = 1) -> Network:
    """a → conv → b → conv → c, plus the identity shortcut a → c: paths of 1 and 2 synapses."""
    rng = np.random.default_rng(seed)
    nodes = {"x": Input((2, 5, 5), encoding, 1.0 if encoding == "analog" else 2.0),
             "a": IF((3, 5, 5), dyadic(rng, (3, 1, 1), -2, 4, 32), reset=reset, t_start=1),
             "b": IF((3, 5, 5), np.zeros(()), reset=reset, t_start=2),
             "c": IF((3, 5, 5), dyadic(rng, (3, 1, 1), -2, 4, 32), reset=reset, t_start=2),
             "output": Readout((4,), dyadic(rng, (4,), -4, 4, 32), t_start=3)}
    syns = [Conv("x", "a", dyadic(rng, (3, 2, 3, 3), -8, 12, 16), padding=(1, 1)),
            Conv("a", "b", dyadic(rng, (3, 3, 3, 3), -8, 12, 16), padding=(1, 1)),
            Conv("b", "c", dyadic(rng, (3, 3, 3, 3), -8, 12, 16), padding=(1, 1)),
            Conv("a", "c", np.ones((3, 1, 1, 1)), groups=3),
            Dense("c", "output", dyadic(rng, (4, 75), -8, 8, 16))]
    return Network(nodes, syns)


def payload(net: Network, items: int = 3, seed: int = 2) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = dyadic(rng, (items, *net.nodes[net.input_name].shape), 0, 16, 16)
    return encode_input(net, x, STEPS, seed=seed)


def populations(net: Network) -> list[str]:
    return [n for n, v in net.nodes.items() if isinstance(v, IF)]


def assert_nir_matches_engine(net: Network, graph: nir.NIRGraph, p: torch.Tensor) -> None:
    """NIR node n runs t_start(n) steps ahead: spike counts over T - t_start NIR steps and the
    readout at NIR step t - 1 - depth equal the engine's counts over T and readout at t."""
    marks = list(range(net.depth() + 1, STEPS + 1))
    res = simulate(net, p, marks)
    out = run_nir(graph, p, [spike_node(n, net) for n in populations(net)])
    for name in populations(net):
        ahead = net.nodes[name].t_start
        counts = out[spike_node(name, net)][: STEPS - ahead].sum(0)
        assert torch.equal(counts, res.spike_counts[name]), name
        assert res.spike_counts[name].sum() > 0, name
    readout = out[output_node(net)]
    for t in marks:
        assert torch.equal(readout[t - 1 - net.depth()], res.readout[t]), t


@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("make", [chain, residual])
def test_nir_file_read_back_resimulates_to_the_engine(tmp_path, make, reset):
    net = make(reset)
    export_nir(net, tmp_path / "net.nir")
    assert_nir_matches_engine(net, nir.read(tmp_path / "net.nir"), payload(net))


def test_nir_poisson_input_and_residual_delay(tmp_path):
    net = residual("subtract", "poisson")
    graph = nir_graph(net)
    delays = [n for n, v in graph.nodes.items() if isinstance(v, nir.Delay) and "syn" in n]
    assert delays == ["c.syn0.delay"]  # the long branch b → c waits one step for a → c
    assert graph.nodes["c.syn0.delay"].delay.max() == 1
    assert_nir_matches_engine(net, graph, payload(net))


@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("z", [0.25, 0.5, 1.0])
def test_nir_neuron_fires_on_reaching_the_threshold(reset, z):
    # a constant drive z = 1/n reaches v = 1 exactly every n steps: one spike per n steps
    # from step 1 (one synapse of delay); NIR's strict v > v_threshold must fire there too
    nodes = {"x": Input((1,)), "n": IF((1,), np.zeros(1), reset=reset, t_start=1),
             "output": Readout((1,), np.zeros(1), t_start=2)}
    net = Network(nodes, [Dense("x", "n", np.array([[z]])), Dense("n", "output", np.ones((1, 1)))])
    p = encode_input(net, [[1.0]], STEPS)
    out = run_nir(nir_graph(net), p, [spike_node("n", net)])
    expected = math.floor((STEPS - 1) * z)
    assert int(simulate(net, p).spike_counts["n"]) == expected
    assert int(out[spike_node("n", net)][: STEPS - 1].sum()) == expected


def test_nir_graph_holds_our_parameters_and_meaning():
    assert "v_reset" in nir.IF.__dataclass_fields__  # NIR >= 1.0.6: IF resets to v_reset
    net = chain("zero")
    graph = nir_graph(net)
    neuron = graph.nodes["a"]
    assert isinstance(neuron, nir.IF)
    assert np.all(neuron.v_reset == 0) and np.all(neuron.r == 1)
    assert np.all(neuron.v_threshold == below(1.0))
    assert np.all(neuron.v_threshold == np.float32(1 - 2**-24))  # the float32 just below 1
    conv = graph.nodes["a.syn0"]
    np.testing.assert_array_equal(conv.weight, net.synapses[0].weight.astype(np.float32))
    np.testing.assert_array_equal(conv.bias, net.nodes["a"].bias.ravel())
    pool = graph.nodes["b.syn0"]  # grouped conv written block-diagonal
    assert pool.groups == 1 and pool.weight.shape == (3, 3, 2, 2)
    np.testing.assert_array_equal(pool.weight[[0, 1, 2], [0, 1, 2]], np.full((3, 2, 2), 0.25))
    assert pool.weight.sum() == 3.0
    assert isinstance(graph.nodes["b.flat"], nir.Flatten) and ("b", "b.flat") in graph.edges
    np.testing.assert_array_equal(graph.nodes["c.syn0"].weight, net.synapses[2].weight)
    assert isinstance(graph.nodes["output"], nir.I)
    assert graph.metadata["lavaconv_reset"] == "zero" and graph.metadata["nir_version"]
    soft = nir_graph(chain("subtract"))
    assert {type(soft.nodes[n]).__name__ for n in ("a", "a.spike", "a.reset", "a.reset.delay")} \
        == {"I", "Threshold", "Scale", "Delay"}
    assert np.all(soft.nodes["a.reset"].scale == -1)


def test_nir_refuses_what_it_cannot_express():
    net = chain("zero")
    net.nodes = {**net.nodes, "pool": MaxPool((3, 2, 2), "a", (2, 2), (2, 2))}
    with pytest.raises(LavaconvError, match="node pool .*max-pool"):
        nir_graph(net)
    net = chain("zero")
    net.numeric = "int"
    with pytest.raises(LavaconvError, match="integer network"):
        nir_graph(net)
    net = chain("zero")
    net.nodes["a"].bias = np.arange(48.0).reshape(3, 4, 4)
    with pytest.raises(LavaconvError, match="node a .*varies over space"):
        nir_graph(net)


@pytest.mark.parametrize("neuron,align", [("rmp", False), ("if", False), ("rmp", True)])
def test_nir_of_a_converted_residual_model(tmp_path, neuron, align):
    # unaligned, the shortcut needs a NIR Delay; aligned (--align), our own delays line the
    # branches up, so in NIR (where node n runs t_start(n) ahead) none is needed
    torch.manual_seed(0)
    x = torch.rand(32, 1, 8, 8)
    gm, stats = calibrated(ResidualBlock(pool=True), x)
    net = convert(gm, (1, 8, 8), stats,
                  ConvertOptions(NormSpec("max"), neuron, align=align, v_init=0.0))
    assert any(s.delay for s in net.synapses) == align
    for syn in net.synapses:  # onto the dyadic grid, so that every float32 sum is exact
        syn.weight = np.round(syn.weight * 256) / 256
    for node in net.nodes.values():
        if isinstance(node, (IF, Readout)):
            node.bias = np.round(node.bias * 256) / 256
    export_nir(net, tmp_path / "block.nir")
    graph = nir.read(tmp_path / "block.nir")
    assert any(isinstance(v, nir.Delay) and "syn" in n for n, v in graph.nodes.items()) != align
    p = encode_input(net, np.round(x[:3].numpy() * 16) / 16, STEPS)
    assert_nir_matches_engine(net, graph, p)


def test_snntorch_under_nirtorch_reproduces_our_spikes(tmp_path):
    """snnTorch 1.0.0's ``import_from_nir`` cannot take the graph as a whole: it has no mapping
    for ``nir.I`` (our readout) and maps ``nir.IF`` to ``snn.Leaky(beta=0.9)``, a leaky neuron
    (snnTorch issue #416, fixed after 1.0.0 by PR #452: beta = 1). So the graph runs on nirtorch
    (the NIR → torch executor snnTorch's import uses) with snnTorch's own modules for the
    synapses and flatten, and ``snn.Leaky`` set to NIR's IF (beta 1, reset to v_reset = 0,
    threshold from the file) and to NIR's I (beta 1, no reset, no spikes)."""
    snn = pytest.importorskip("snntorch", reason="snntorch not installed")
    nirtorch = pytest.importorskip("nirtorch", reason="nirtorch not installed")
    from snntorch.import_nir import _nir_to_snntorch_module

    net = chain("zero", seed=5)
    export_nir(net, tmp_path / "net.nir")
    graph = nir.read(tmp_path / "net.nir")
    node_map = {t: _nir_to_snntorch_module for t in (nir.Affine, nir.Linear, nir.Conv2d,
                                                      nir.Flatten)}
    node_map[nir.IF] = lambda n: snn.Leaky(
        beta=1.0, threshold=torch.as_tensor(n.v_threshold), reset_mechanism="zero",
        init_hidden=True, reset_delay=False)
    node_map[nir.I] = lambda n: snn.Leaky(beta=1.0, threshold=math.inf, reset_mechanism="none",
                                          init_hidden=True)
    p = payload(net)
    res = simulate(net, p)
    for item in range(p.shape[1]):  # NIR shapes carry no batch: one item at a time
        model = nirtorch.nir_to_torch(graph, node_map)
        trains = {n: [] for n in populations(net)}
        for name, train in trains.items():
            model.get_submodule(name).register_forward_hook(
                lambda mod, args, out, train=train: train.append(out))
        state, readout = None, []
        for t in range(STEPS):
            _, state = model(p[t, item], state)
            readout.append(model.get_submodule("output").mem.clone())
        for name, train in trains.items():
            counts = torch.stack(train)[: STEPS - net.nodes[name].t_start].sum(0)
            assert torch.equal(counts, res.spike_counts[name][item]), name
        assert torch.equal(readout[STEPS - 1 - net.depth()], res.readout[STEPS][item])


# ---------------------------------------------------------------- netx


def int_chain(bias: bool = False, reset: str = "zero") -> Network:
    """Hard-reset integer chain: conv (a_exp 1) → avg-pool conv (a_exp 0) → flatten → dense
    (a_exp -2) → dense readout (a_exp 2)."""
    rng = np.random.default_rng(3)

    def even(shape, limit):
        return 2 * rng.integers(-limit // 2, limit // 2 + 1, size=shape)

    b = (lambda shape: 64 * 4 * rng.integers(-3, 4, size=shape)) if bias else \
        (lambda shape: np.zeros(shape, dtype=np.int64))
    nodes = {"x": Input((1, 6, 6), payload_bits=8, gain=10.0),
             "a": IF((3, 4, 4), b((3, 1, 1)), np.array(64 * 40), reset, 1, a_exp=1),
             "b": IF((3, 2, 2), b(()), np.array(64 * 30), reset, 2, a_exp=0),
             "c": IF((5,), b((5,)), np.array(64 * 20 + 3), reset, 3, a_exp=-2),
             "output": Readout((4,), b((4,)), 4, a_exp=2)}
    syns = [Conv("x", "a", even((3, 1, 3, 3), 120)),
            Conv("a", "b", np.full((3, 1, 2, 2), 8), (2, 2), groups=3),
            Dense("b", "c", even((5, 12), 254)),
            Dense("c", "output", even((4, 5), 254))]
    return Network(nodes, syns, "int")


def load_netx(path):
    import h5py
    from lava.lib.dl.netx import hdf5

    with h5py.File(path, "r") as f:
        bits, spike_exp = int(f.attrs["input_message_bits"]), int(f.attrs["spike_exp"])
    return hdf5.Network(str(path), input_message_bits=bits, spike_exp=spike_exp)


def torch_conv_weight(lava_weight: np.ndarray) -> np.ndarray:
    """Lava's (O, kW, kH, I) true-convolution kernel → torch's (O, I, kH, kW) correlation."""
    return lava_weight[:, ::-1, ::-1, :].transpose(0, 3, 2, 1)


def test_netx_loads_with_our_layers_weights_and_thresholds(tmp_path):
    net = int_chain()
    assert export_netx(net, tmp_path / "net.h5") == []
    lava_net = load_netx(tmp_path / "net.h5")
    kinds = [type(layer).__name__ for layer in lava_net.layers]
    assert kinds == ["Conv", "Conv", "Dense", "Dense"]
    assert [tuple(layer.shape) for layer in lava_net.layers] == [(4, 4, 3), (2, 2, 3), (5,), (4,)]
    for layer, syn in zip(lava_net.layers, net.synapses, strict=True):
        if isinstance(syn, Conv):
            np.testing.assert_array_equal(torch_conv_weight(layer.synapse.weight.init),
                                          syn.weight)
        else:
            exp = layer.synapse.proc_params["weight_exp"]
            np.testing.assert_array_equal(layer.synapse.weights.init * 2.0**exp, syn.weight)
    pops = [v for v in net.nodes.values() if not isinstance(v, Input)]
    for layer, node in zip(lava_net.layers, pops, strict=True):
        assert int(layer.neuron.du.init) == 4095 and int(layer.neuron.dv.init) == 0
        if isinstance(node, IF):  # netx fires on v > vth << 6, at k = 2**-a_exp times our v
            k = 2.0 ** -node.a_exp
            assert int(layer.neuron.vth.init) == math.ceil(int(node.v_threshold) * k / 64) - 1


def run_netx(path, item: np.ndarray):
    """Each netx layer's output at every step, (T, *torch shape), and the last layer's neuron
    state after the run (its ``v``, or ``sigma`` for a netx Sigma), for one item's payload
    ``(T, *input shape)``, on Lava's CPU fixed-point models. Lava holds (W, H, C) maps and puts
    time last: ``.T`` turns one layout into the other."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    lava_net = load_netx(path)
    source = Source(data=np.ascontiguousarray(item.T).astype(np.int32))
    source.s_out.connect(lava_net.inp)
    sinks = [Sink(shape=layer.out.shape, buffer=len(item)) for layer in lava_net.layers]
    for layer, sink in zip(lava_net.layers, sinks, strict=True):
        layer.out.connect(sink.a_in)
    lava_net.run(condition=RunSteps(num_steps=len(item)),
                 run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    try:
        outs = [sink.data.get().T for sink in sinks]
        top = lava_net.layers[-1].neuron
        state = (top.v if hasattr(top, "v") else top.sigma).get().T
    finally:
        lava_net.stop()
    return outs, state


@pytest.mark.usefixtures("single_thread_torch")
def test_netx_runs_in_lava_exactly_like_the_engine(tmp_path):
    net = int_chain()
    export_netx(net, tmp_path / "net.h5")
    rng = np.random.default_rng(4)
    p = encode_input(net, rng.integers(0, 17, size=(1, 1, 6, 6)) / 16, STEPS)
    res = simulate(net, p)
    outs, v_out = run_netx(tmp_path / "net.h5", p[:, 0].numpy())
    for name, out in zip(["a", "b", "c"], outs[:3], strict=True):
        ours = res.spike_counts[name][0].numpy()
        np.testing.assert_array_equal(out.sum(0), ours, err_msg=name)
        assert ours.sum() > 0
    np.testing.assert_array_equal(v_out, res.readout[STEPS][0].numpy() / 4)  # k = 2**-2


def test_netx_refuses_the_first_inexpressible_layer(tmp_path):
    path = tmp_path / "net.h5"
    with pytest.raises(LavaconvError, match="layer a: resets by subtraction"):
        export_netx(int_chain(reset="subtract"), path)
    with pytest.raises(LavaconvError, match="float network"):
        export_netx(chain("zero"), path)
    with pytest.raises(LavaconvError, match="layer a: has a bias;.*approximate=True"):
        export_netx(int_chain(bias=True), path)
    net = int_chain()
    net.nodes = {"x": net.nodes["x"], "a": net.nodes["a"],
                 "pool": MaxPool((3, 2, 2), "a", (2, 2), (2, 2)),
                 **{k: v for k, v in net.nodes.items() if k not in ("x", "a")}}
    with pytest.raises(LavaconvError, match="layer pool: rate-gated max-pool"):
        export_netx(net, path)
    net = int_chain()
    net.synapses.append(Conv("a", "b", np.full((3, 1, 2, 2), 2), (2, 2), groups=3))
    with pytest.raises(LavaconvError, match="layer b: 2 inputs"):
        export_netx(net, path)
    net = int_chain()
    net.nodes["c"].a_exp = -7
    with pytest.raises(LavaconvError, match="layer c: a_exp -7"):
        export_netx(net, path)


def test_netx_approximate_bias_is_stated_and_loaded(tmp_path):
    net = int_chain(bias=True)
    net.nodes["c"].bias = net.nodes["c"].bias + 1  # x k = 4: off netx's grid of 64
    notes = export_netx(net, tmp_path / "net.h5", approximate=True)
    assert any(n.startswith("a: bias flows from step 0") for n in notes)
    assert [n for n in notes if "rounded" in n] == [
        "c: bias rounded to netx's grid (error up to 1 of c's integer state units)"]
    lava_net = load_netx(tmp_path / "net.h5")
    layer_a = lava_net.layers[0]
    bias_a = np.asarray(net.nodes["a"].bias).ravel() * 2.0 ** -1 / 64
    np.testing.assert_array_equal(layer_a.neuron.bias_mant.init[0, 0, :], bias_a)


# ------------------------------------------------ netx: stock soft reset, sigma-delta


def stock_chain(bias: bool = False) -> Network:
    """Dense chain in the stock soft-reset form (quantize(stock=True), docs/design.md
    section 7): 10 → 16 → 12 → 8 → LIF readout 4; thresholds M = vth / 64 of 200, 240 and 120,
    a_exp 0 and 1; mixed-sign even weights, mostly excitatory (neurons fire 0.4-0.7 of the
    steps, and u stays above -4 vth: the floor neuron, which netx has no place for, never
    fires); ``bias``: mixed-sign biases on the stock grid (multiples of 128 here), the
    readout's too."""
    rng = np.random.default_rng(10)

    def w(shape, lo, hi):
        return 2 * rng.integers(lo, hi + 1, size=shape)

    def b(n):
        return 128 * rng.integers(-20, 30, size=n) if bias else np.zeros(n)

    nodes = {"x": Input((10,), payload_bits=8, gain=10.0),
             "a": IF((16,), b(16), np.array(64 * 200), "lif", 1, a_exp=0),
             "b": IF((12,), b(12), np.array(64 * 240), "lif", 2, a_exp=1),
             "c": IF((8,), b(8), np.array(64 * 120), "lif", 3, a_exp=0),
             "output": Readout((4,), 2 * b(4), 4, a_exp=0, lif=True)}
    syns = [Dense("x", "a", w((16, 10), -1, 4)), Dense("a", "b", w((12, 16), -4, 12)),
            Dense("b", "c", w((8, 12), -10, 20)), Dense("c", "output", w((4, 8), -127, 127))]
    return Network(nodes, syns, "int")


def per_step(res, name: str) -> np.ndarray:
    """The engine's events of ``name`` at every step (T, *shape), from its running counts."""
    counts = np.stack([np.zeros_like(res.counts_at[1][name][0].numpy())] +
                      [res.counts_at[t][name][0].numpy() for t in sorted(res.counts_at)])
    return np.diff(counts, axis=0)


def lowest_u(net: Network, p: torch.Tensor) -> dict[str, float]:
    """Per stock population the lowest u over the run, in thresholds, of the neuron without
    its floor (u[t] = L(u[t-1]) + x[t] - vth s[t-1], x from the engine's probe). Above -2 vth
    the floor neuron (its u = -u, threshold 4 vth, v within 1/4095 of u) cannot fire, so the
    engine's run is the floorless one."""
    from lavaconv.sim.lif import leak

    lowest = {}

    def probe(name, current, train):
        vth = int(net.nodes[name].v_threshold)
        u = s = torch.zeros_like(current[0])
        low = 0
        for t in range(len(current)):
            u = leak(u) + current[t] - vth * s
            s = train[t].to(torch.int64)
            low = min(low, int(u.min()))
        lowest[name] = low / vth

    simulate(net, p, probe=probe)
    return lowest


@pytest.mark.usefixtures("single_thread_torch")
@pytest.mark.parametrize("bias", [False, True])
def test_netx_stock_soft_reset_runs_in_lava_spike_for_spike(tmp_path, bias):
    net = stock_chain(bias)
    notes = export_netx(net, tmp_path / "net.h5")
    assert sum("no floor neuron" in n for n in notes) == 3
    assert sum("clock units" in n for n in notes) == (3 if bias else 0)
    p = encode_input(net, np.random.default_rng(7).integers(0, 17, size=(1, 10)) / 16, STEPS)
    assert min(lowest_u(net, p).values()) > -2
    res = simulate(net, p, range(1, STEPS + 1), counts_at=True)
    outs, v_out = run_netx(tmp_path / "net.h5", p[:, 0].numpy())
    for name, out in zip("abc", outs[:3], strict=True):
        ours = per_step(res, name)
        np.testing.assert_array_equal(out[:, :ours.shape[1]], ours, err_msg=name)
        assert ours.mean() > 0.3, name  # busy: the soft reset's residue carries over often
        for j, clock in enumerate(out[:, ours.shape[1]:].T):  # from a step before t_start
            start = net.nodes[name].t_start - 1 + j  # (c's second: before the readout's)
            assert clock[start:].all() and not clock[:start].any(), (name, j)
        assert out.shape[1] - ours.shape[1] == (bias and 1 + (name == "c"))
    assert outs[-1].sum() == 0  # the readout integrates below its threshold
    np.testing.assert_array_equal(v_out, res.readout[STEPS][0].numpy())


def test_netx_stock_file_holds_the_self_connection(tmp_path):
    from lava.lib.dl.netx import hdf5

    export_netx(stock_chain(), tmp_path / "net.h5")
    lava_net = hdf5.Network(str(tmp_path / "net.h5"), input_message_bits=8)
    assert [type(layer).__name__ for layer in lava_net.layers] == [
        "RecurrentDense", "RecurrentDense", "RecurrentDense", "Dense"]
    b = lava_net.layers[1]
    exp = b.synapse_rec.proc_params["weight_exp"]
    np.testing.assert_array_equal(b.synapse_rec.weights.init * 2.0**exp, -240 * np.eye(12))
    assert int(b.neuron.du.init) == 0 and int(b.neuron.dv.init) == 4095
    assert int(b.neuron.vth.init) == 240


def _bias_scaled(net: Network) -> None:
    net.nodes["c"].bias = net.nodes["c"].bias * 8  # bias >> 6 beyond the 8-bit grid


STOCK_REFUSALS = [  # (chain with biases, change, the refusal)
    (True, lambda n: setattr(n.nodes["c"], "t_start", 4),
     "layer c: its bias starts at t_start = 4"),
    (True, lambda n: setattr(n.nodes["a"], "reset", "zero"),
     "layer a: not in the stock form, but the chain's biases need a clock unit"),
    (True, lambda n: setattr(n.nodes["output"], "t_start", 5),
     "layer output: its bias starts at t_start = 5"),
    (True, _bias_scaled, r"layer c: .*the recurrent ones .*, 4\d\d\]"),
    (False, lambda n: setattr(n.nodes["b"], "v_threshold", np.array(64 * 256)),  # inhibitory-
     "layer b: .*self-connection -256"),  # only weights stop at -255
    (False, lambda n: setattr(n.nodes["output"], "a_exp", -1),
     "layer output: a_exp -1 the stock readout's Dense"),
]


@pytest.mark.parametrize("bias,change,refusal", STOCK_REFUSALS)
def test_netx_stock_refuses_what_netx_cannot_hold(tmp_path, bias, change, refusal):
    net = stock_chain(bias=bias)
    change(net)
    with pytest.raises(LavaconvError, match=refusal):
        export_netx(net, tmp_path / "net.h5")


def test_netx_stock_form_of_a_conv_layer_is_refused(tmp_path):
    with pytest.raises(LavaconvError, match="layer a: .*dense layers only"):
        export_netx(int_chain(reset="lif"), tmp_path / "net.h5")


def sd_chain(bias: bool = False) -> Network:
    """Integer sigma-delta chain as netx holds it (state_exp 6, spike_exp 0, Dense weight_exp
    0): delta input (1, 6, 6) → conv 3x3 → SigmaDelta (3, 4, 4) → flatten → dense →
    SigmaDelta (8,) → dense → Sigma readout (4,)."""
    rng = np.random.default_rng(11)
    nodes = {"x": Input((1, 6, 6), "delta", payload_bits=8, gain=100.0, delta_threshold=1.0),
             "a": SigmaDelta((3, 4, 4), np.zeros((3, 1, 1)), 64.0 * 6, 1, state_exp=6,
                             message_bits=12),
             "b": SigmaDelta((8,), 64 * np.ones(8) if bias else np.zeros(8), 64.0 * 12, 2,
                             state_exp=6, message_bits=12),
             "output": Sigma((4,), np.zeros(4), 3)}
    syns = [Conv("x", "a", rng.integers(-40, 60, size=(3, 1, 3, 3))),
            Dense("a", "b", 2 * rng.integers(-20, 30, size=(8, 48))),
            Dense("b", "output", 2 * rng.integers(-127, 128, size=(4, 8)))]
    return Network(nodes, syns, "int")


@pytest.mark.usefixtures("single_thread_torch")
def test_netx_sdnn_runs_in_lava_message_for_message(tmp_path):
    net = sd_chain()
    assert export_netx(net, tmp_path / "net.h5") == []
    steps = 12  # a payload that keeps changing: messages at most steps, residues carried
    walk = np.cumsum(np.random.default_rng(12).integers(-8, 9, size=(steps, 1, 1, 6, 6)), 0)
    p = torch.as_tensor(np.clip(walk + 50, 0, 127))
    res = simulate(net, p, range(1, steps + 1), counts_at=True)
    change = np.diff(p[:, 0].numpy(), axis=0, prepend=0)  # what our input Delta sends
    outs, sigma = run_netx(tmp_path / "net.h5", change)
    for name, out in zip("ab", outs[:2], strict=True):
        ours = per_step(res, name)
        np.testing.assert_array_equal(out != 0, ours, err_msg=name)
        assert ours.mean() > 0.3, name
    readout = np.stack([res.readout[t][0].numpy() for t in range(1, steps + 1)])
    np.testing.assert_array_equal(outs[2], readout)  # sigma at every step
    np.testing.assert_array_equal(sigma, readout[-1])
    assert np.abs(readout).max() > 2**16


def test_netx_sdnn_file_and_refusals(tmp_path):
    from lava.lib.dl.netx import hdf5

    path = tmp_path / "net.h5"
    export_netx(sd_chain(), path)
    lava_net = hdf5.Network(str(path), input_message_bits=9, spike_exp=0)
    assert [type(layer.neuron).__name__ for layer in lava_net.layers] == [
        "SigmaDelta", "SigmaDelta", "Sigma"]
    a = lava_net.layers[0].neuron
    assert int(a.vth.init) == 64 * 6 and int(a.state_exp.init) == 6
    with pytest.raises(LavaconvError, match="layer b: has a bias from t_start = 2; netx's "
                                            "SDNN bias flows from step 0"):
        export_netx(sd_chain(bias=True), path)
    net = sd_chain()
    net.nodes["a"].state_exp = 7
    with pytest.raises(LavaconvError, match="layer a: state_exp 7"):
        export_netx(net, path)
    net = sd_chain()
    net.synapses[1].weight_exp = -2
    with pytest.raises(LavaconvError, match="layer b: weight_exp -2 floors"):
        export_netx(net, path)


# ------------------------------------------------ netx: a converted digits MLP end to end


@pytest.fixture(scope="module")
def digits_mlp(tmp_path_factory):
    """A ReLU MLP 64-48-32-10 with biases, trained on digits' calibration split (Adam, 60
    epochs, one thread: under a second), saved with torch.export; and its accuracy on the
    evaluation split."""
    from torch import nn

    from lavaconv.ann.data import load_dataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_dataset("digits")
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32),
                              nn.ReLU(), nn.Linear(32, 10))
        x, y = torch.as_tensor(data.x_calib), torch.as_tensor(data.y_calib)
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(60):
            for idx in torch.randperm(len(x)).split(64):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            ann = float((model(torch.as_tensor(data.x_eval)).argmax(1).numpy()
                         == data.y_eval).mean())
        root = tmp_path_factory.mktemp("digits")
        torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)),
                          root / "mlp.pt2")
    finally:
        torch.set_num_threads(threads)
    return root, data, ann


@pytest.mark.usefixtures("single_thread_torch")
def test_netx_export_of_a_converted_digits_mlp_runs_like_the_engine(digits_mlp, capsys):
    """convert, then export --format netx of the float network: quantized on netx's grid
    (stock soft reset, no floor neuron), loaded by netx and run on Lava's CPU models spike for
    spike like the engine, as does lavaconv's own stock graph; the engine's accuracy close to
    the ANN's (measured: ANN 96.49 %, netx grid 95.66 % at 32 steps on the 1198 evaluation
    items, 4-bit input)."""
    from lavaconv.app import cli
    from lavaconv.app.commands import netx_network
    from lavaconv.sim import evaluation

    root, data, ann = digits_mlp
    net_dir, path = root / "net", root / "mlp.h5"
    assert cli.main(["convert", str(root / "mlp.pt2"), "--data", "digits", "--v-init", "0",
                     "--quiet", "--out", str(net_dir)]) == 0
    assert cli.main(["export", str(net_dir), "--format", "netx", "--out", str(path),
                     "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "quantized on netx's grid" in printed and "no floor neuron" not in printed
    net = netx_network(Network.load(net_dir), "loihi2", 64)  # what export quantized
    hidden = populations(net)
    assert [net.nodes[n].floor for n in hidden] == [False, False]
    assert all(int(net.nodes[n].v_threshold) >> 6 <= 252 for n in hidden)
    steps = 32
    acc = evaluation.evaluate(net, data.x_eval, data.y_eval, [steps], progress=False)
    assert ann > 0.95 and acc.accuracy[steps] > ann - 0.02, (ann, acc.accuracy)
    assert net.nodes[net.input_name].payload_bits == 4  # chosen on calibration items
    lowest = 0.0
    for i in range(3):
        p = encode_input(net, data.x_eval[i:i + 1], steps)
        lowest = min(lowest, *lowest_u(net, p).values())
        res = simulate(net, p, range(1, steps + 1), counts_at=True)
        outs, v_out = run_netx(path, p[:, 0].numpy().reshape(steps, -1))  # netx: flattened
        for name, out in zip(hidden, outs, strict=False):
            ours = per_step(res, name)
            np.testing.assert_array_equal(out[:, :ours.shape[1]], ours, err_msg=name)
            assert ours.sum() > 0, name
        assert outs[-1].sum() == 0
        np.testing.assert_array_equal(v_out, res.readout[steps][0].numpy())
        assert int(res.readout[steps][0].argmax()) == data.y_eval[i]
    assert lowest < -4  # a floor neuron would have fired: netx matches only without it
    from lavaconv.lava import run_stock

    payload = encode_input(net, data.x_eval[:2], steps)  # and lavaconv's own stock graph
    eng, ours = simulate(net, payload), run_stock(net, payload.numpy())
    for name in hidden:
        np.testing.assert_array_equal(eng.spike_counts[name].numpy(), ours.spike_counts[name])
    np.testing.assert_array_equal(eng.readout[steps].numpy(), ours.readout)


@pytest.mark.usefixtures("single_thread_torch")
def test_netx_export_of_a_converted_digits_sigma_delta_mlp(digits_mlp, capsys):
    """The same MLP converted with --neuron sigma-delta, export --format netx: state_exp 6,
    weight_exp 0, biases from step 0 (netx's SDNN bias), the readout's through a pulse unit;
    netx's messages and readout equal the engine's at every step, as do lavaconv's own stock
    sigma-delta graph's (measured: ANN 96.49 %, netx grid 96.74 % at 12 steps)."""
    from lavaconv.app import cli
    from lavaconv.app.commands import netx_network
    from lavaconv.lava import run_lava
    from lavaconv.lava.verify import compare
    from lavaconv.sim import evaluation

    root, data, ann = digits_mlp
    net_dir, path = root / "sd", root / "sd.h5"
    assert cli.main(["convert", str(root / "mlp.pt2"), "--data", "digits", "--neuron",
                     "sigma-delta", "--quiet", "--out", str(net_dir)]) == 0
    assert cli.main(["export", str(net_dir), "--format", "netx", "--out", str(path),
                     "--quiet"]) == 0
    assert "pulse unit carrying output's bias" in capsys.readouterr().out
    net = netx_network(Network.load(net_dir), "loihi2", 64)
    steps = 12
    acc = evaluation.evaluate(net, data.x_eval, data.y_eval, [steps], progress=False)
    assert acc.accuracy[steps] > ann - 0.01, (ann, acc.accuracy)
    names = [n for n, v in net.nodes.items() if isinstance(v, SigmaDelta)]
    for i in range(2):
        p = encode_input(net, data.x_eval[i:i + 1], steps)
        res = simulate(net, p, range(1, steps + 1), counts_at=True)
        change = np.diff(p[:, 0].numpy(), axis=0, prepend=0).reshape(steps, -1)
        outs, sigma = run_netx(path, change)
        for name, out in zip(names, outs, strict=False):
            ours = per_step(res, name)
            np.testing.assert_array_equal(out[:, :ours.shape[1]] != 0, ours, err_msg=name)
            assert ours.sum() > 0, name
        pulse = outs[len(names) - 1][:, -1]  # the pulse unit: one message, at step 0
        assert pulse[0] != 0 and not pulse[1:].any()
        readout = np.stack([res.readout[t][0].numpy() for t in range(1, steps + 1)])
        np.testing.assert_array_equal(outs[-1], readout)
        np.testing.assert_array_equal(sigma, readout[-1])
    payload = encode_input(net, data.x_eval[:2], steps)
    assert compare(net, simulate(net, payload), run_lava(net, payload.numpy())) == []
