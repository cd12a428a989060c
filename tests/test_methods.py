"""The seed papers' methods against their definitions and closed forms, on small nets."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lavaconv.ann.probe import population_nodes
from lavaconv.ann.stats import collect, neuron_scales
from lavaconv.conversion import ConvertOptions, NormSpec, convert
from lavaconv.conversion.balance import balance_thresholds
from lavaconv.conversion.build import build_network
from lavaconv.conversion.correction import correct
from lavaconv.conversion.diagnostics import (
    clipped_ann_accuracy,
    information_loss,
    propagation_error,
)
from lavaconv.conversion.zeta import compensate, search_zeta
from lavaconv.errors import LavaconvError
from lavaconv.frontend import canonicalize
from lavaconv.ir.fixedpoint import Formats
from lavaconv.ir.network import IF, Dense, Input, MaxPool, Network, Readout
from lavaconv.quantize.integer import quantize
from lavaconv.sim.engine import encode_input, maxpool_gate, readout_scores, simulate


def calibrated(model: nn.Module, x: torch.Tensor):
    gm = canonicalize(model.eval(), tuple(x.shape[1:]))
    names = population_nodes(gm)
    by_node = collect(gm, [x], sorted(set(names.values())))
    return gm, {pop: by_node[node] for pop, node in names.items()}


class Small(nn.Module):
    """conv - ReLU - conv - ReLU - maxpool - linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(nn.functional.max_pool2d(x, 2).flatten(1))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = Small()
    x = torch.rand(48, 1, 6, 6)
    gm, stats = calibrated(model, x)
    return model, x, gm, stats


def two_inputs(weights, reset: str, threshold: float = 1.0) -> Network:
    """Two signed-spike inputs → one neuron (weights) → readout."""
    nodes = {"x": Input((2,), "poisson"),
             "n": IF((1,), np.zeros(1), np.array(threshold), reset, t_start=1),
             "output": Readout((1,), np.zeros(1), t_start=2)}
    syn = [Dense("x", "n", np.array([weights], dtype=float)),
           Dense("n", "output", np.array([[1.0]]))]
    return Network(nodes, syn)


def spikes_of(net: Network, seq) -> torch.Tensor:
    """Payload train of neuron ``n`` for the input spike sequence ``seq`` (T, 2)."""
    payload = torch.tensor(seq, dtype=torch.float32)[:, None, :]
    sent = {}
    simulate(net, payload, probe=lambda n, _u, train: sent.__setitem__(n, train[:, 0, 0]))
    return sent["n"]


def test_snm_figure_1_and_2_examples():
    # SNM Fig. 1/2: x1 = 3 spikes, x2 = 2 spikes; the output must be ReLU(w1*3 + w2*2)
    pos_first = [[1, 0]] * 3 + [[0, 1]] * 2 + [[0, 0]] * 2
    neg_first = [[0, 1]] * 2 + [[1, 0]] * 3 + [[0, 0]] * 2
    for weights, ann in (([1, -1], 1), ([-1, 1], 0)):
        for seq in (pos_first, neg_first):
            snm = spikes_of(two_inputs(weights, "snm"), seq)
            assert float(snm.sum()) == ann, (weights, seq)
            assert float(torch.cumsum(snm, 0).min()) >= 0  # the memory never goes negative
    # a reset-by-subtraction neuron over-fires when the positive spikes come first (Fig. 1)
    assert float(spikes_of(two_inputs([1, -1], "subtract"), pos_first).sum()) == 3


@pytest.mark.parametrize("seed", range(5))
def test_snm_rate_is_relu_of_the_input_sum_in_any_order(seed):
    # SNM eq. 7-11 telescoped: v[T] = sum(u) - theta * m[T], m >= 0, and with |u| <= theta
    # one spike per step keeps v in (-theta, theta) while m > 0, so m[T] = ReLU(sum u)/theta
    # up to rounding; int mode makes every quantity exact
    rng = np.random.default_rng(seed)
    theta, steps = 64, 300
    u = rng.integers(-theta, theta + 1, size=(steps, 16, 1))
    nodes = {"x": Input((1,), "poisson"),
             "n": IF((1,), np.zeros(1, dtype=np.int64), np.array(theta), "snm", t_start=1,
                     a_exp=-6),
             "output": Readout((1,), np.zeros(1, dtype=np.int64), t_start=2, a_exp=-6)}
    net = Network(nodes, [Dense("x", "n", np.ones((1, 1), dtype=np.int64)),
                          Dense("n", "output", np.ones((1, 1), dtype=np.int64))], numeric="int")
    sent = {}
    simulate(net, torch.as_tensor(u), probe=lambda n, _u, train: sent.__setitem__(n, train))
    m = torch.cumsum(sent["n"][:, :, 0].double(), 0)
    assert float(m.min()) >= 0
    total = u[:-1, :, 0].sum(axis=0)  # the last payload is still in the synapse at T
    v_end = total - theta * m[-1].numpy()
    assert np.all(v_end < theta)
    assert np.all((m[-1].numpy() == 0) | (v_end > -theta))
    expected = np.maximum(total, 0) / theta
    assert np.all(np.abs(m[-1].numpy() - expected) < 1)


def test_graded_payload_is_what_a_spike_carries():
    net = two_inputs([0.5, 0.0], "subtract")
    net.nodes["n"].payload = np.array([0.25])
    res = simulate(net, torch.tensor([[[1.0, 0]]] * 41))
    n_spikes = int(res.spike_counts["n"][0, 0])
    assert n_spikes == 20  # 40 steps of 0.5: the payload does not change the count
    # the readout sees 0.25 per spike, one step later
    assert float(res.readout[41][0, 0]) == pytest.approx(0.25 * (n_spikes - 1))


def _window_reference(counts: np.ndarray, s: np.ndarray, node: MaxPool) -> np.ndarray:
    """Naive loop: for each window, the payload of the first input with the largest sum."""
    (kh, kw), (sh, sw), (ph, pw) = node.kernel, node.stride, node.padding
    steps, batch, ch, h, w = s.shape
    ho, wo = node.shape[1:]
    out = np.zeros((steps, batch, ch, ho, wo))
    for t, b, c, i, j in np.ndindex(steps, batch, ch, ho, wo):
        best, sent = -np.inf, 0.0
        for di in range(kh):
            for dj in range(kw):
                y, x = i * sh + di - ph, j * sw + dj - pw
                if 0 <= y < h and 0 <= x < w and counts[t, b, c, y, x] > best:
                    best, sent = counts[t, b, c, y, x], s[t, b, c, y, x]
        out[t, b, c, i, j] = sent
    return out


@pytest.mark.parametrize("kernel,stride,padding", [((2, 2), (2, 2), (0, 0)),
                                                   ((3, 3), (2, 2), (1, 1)),
                                                   ((3, 2), (1, 2), (1, 0))])
def test_maxpool_gate_matches_a_naive_loop_for_signed_graded_payloads(kernel, stride, padding):
    rng = np.random.default_rng(1)
    s = rng.choice([-0.5, 0.0, 0.0, 0.75, 1.0], size=(9, 2, 2, 5, 6)).astype(np.float32)
    h, w = s.shape[-2:]
    ho = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
    wo = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
    node = MaxPool((2, ho, wo), "src", kernel, stride, padding)
    got = maxpool_gate(node, torch.as_tensor(s)).numpy()
    np.testing.assert_array_equal(got, _window_reference(np.cumsum(s, 0), s, node))


def _window_max_reference(sums: np.ndarray, node: MaxPool) -> np.ndarray:
    """Naive loop: the largest running sum of each window."""
    (kh, kw), (sh, sw), (ph, pw) = node.kernel, node.stride, node.padding
    h, w = sums.shape[-2:]
    out = np.zeros((*sums.shape[:3], *node.shape[1:]))
    for t, b, c, i, j in np.ndindex(out.shape):
        out[t, b, c, i, j] = max(sums[t, b, c, i * sh + di - ph, j * sw + dj - pw]
                                 for di in range(kh) for dj in range(kw)
                                 if 0 <= i * sh + di - ph < h and 0 <= j * sw + dj - pw < w)
    return out


@pytest.mark.parametrize("kernel,stride,padding", [((2, 2), (2, 2), (0, 0)),
                                                   ((3, 3), (2, 2), (1, 1))])
def test_running_maxpool_sends_the_largest_running_sum(kernel, stride, padding):
    # what the pool has sent up to t equals the largest input's running sum at t: binary
    # spikes stay binary, signed graded payloads are tracked exactly
    rng = np.random.default_rng(2)
    binary = (rng.random((12, 2, 2, 5, 6)) < 0.4).astype(np.float32)
    signed = rng.choice([-0.5, 0.0, 0.0, 0.75, 1.0], size=(12, 2, 2, 5, 6)).astype(np.float32)
    h, w = binary.shape[-2:]
    ho = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
    wo = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
    node = MaxPool((2, ho, wo), "src", kernel, stride, padding, mode="running")
    for s in (binary, signed):
        got = maxpool_gate(node, torch.as_tensor(s)).numpy()
        np.testing.assert_array_equal(np.cumsum(got, 0),
                                      _window_max_reference(np.cumsum(s, 0), node))
    assert set(np.unique(maxpool_gate(node, torch.as_tensor(binary)).numpy())) == {0.0, 1.0}


def test_readout_modes():
    node = Readout((3,), np.zeros(3), t_start=0, v_threshold=np.array(2.0))
    u = torch.tensor([0.5, 1.5, 1.0]).expand(40, 1, 3).clone()
    pot, _ = readout_scores(node, u, [10, 40], mode="potential")
    assert pot[40][0].tolist() == [20.0, 60.0, 40.0]
    count, _ = readout_scores(node, u, [10, 40], mode="count")
    # reset by subtraction at threshold 2: floor(cumulative input / 2) spikes
    assert count[40][0].tolist() == [10.0, 30.0, 20.0] and count[10][0].tolist() == [2, 7, 5]
    soft, _ = readout_scores(node, u, [40], mode="softmax", seed=3)
    assert int(soft[40].sum()) == 40 and int(soft[40].argmax()) == 1
    flat = Readout((4,), np.zeros(4), t_start=0, v_threshold=np.array(1e9))
    uniform, _ = readout_scores(flat, torch.zeros(4000, 1, 4), [4000], mode="softmax")
    np.testing.assert_allclose(uniform[4000][0].numpy() / 4000, 0.25, atol=0.03)


def test_norm_spec_neuron():
    assert NormSpec.parse("max:neuron") == NormSpec("max", 100.0, False, True)
    assert str(NormSpec.parse("p99:neuron")) == "p99:neuron"
    with pytest.raises(LavaconvError, match="--norm"):
        NormSpec.parse("none:neuron")


@pytest.mark.parametrize("spec", ["max:neuron", "p90:neuron"])
def test_neuron_scales_are_per_neuron_order_statistics(small, spec):
    model, x, gm, _ = small
    norm = NormSpec.parse(spec)
    scales = neuron_scales(gm, x.numpy(), norm, batch_size=20)
    act = torch.relu(model.c1(x)).detach().numpy().reshape(len(x), -1)
    pop = next(iter(scales))
    got = scales[pop].reshape(-1)
    for j in range(act.shape[1]):
        nz = act[:, j][act[:, j] > 0]
        want = 0.0 if not len(nz) else (nz.max() if norm.method == "max" else np.percentile(
            nz, norm.percentile, method="inverted_cdf"))
        assert got[j] == pytest.approx(want, rel=1e-6), j


def test_neuron_wise_thresholds_and_payloads(small):
    model, x, gm, stats = small
    opts = ConvertOptions(NormSpec.parse("max:neuron"), "snm", v_init=0.5)
    net = build_network(gm, x.numpy(), stats, opts)
    first = next(v for v in net.nodes.values() if isinstance(v, IF))
    lam = torch.relu(model.c1(x)).detach().amax(0).numpy()
    # SNM eq. 14: threshold lambda_j in activation units; a spike is worth its threshold
    np.testing.assert_allclose(first.scale * first.v_threshold, np.where(lam > 0, lam,
                                                                         first.scale), rtol=1e-6)
    np.testing.assert_array_equal(first.payload, first.v_threshold)
    np.testing.assert_allclose(first.v_init, 0.5 * first.v_threshold)
    assert first.reset == "snm"
    steps = 3000
    res = simulate(net, encode_input(net, x[:8].numpy(), steps))
    with torch.no_grad():
        ann = model(x[:8]).numpy()
    snn = res.readout[steps].numpy() * net.nodes["output"].scale / (steps - net.depth())
    assert np.abs(snn - ann).max() / np.abs(ann).max() < 0.03


def test_quantized_graded_spikes_subtract_what_they_send(small):
    _, x, gm, stats = small
    net = build_network(gm, x.numpy(), stats,
                        ConvertOptions(NormSpec.parse("max:neuron"), v_init=0.0))
    formats = Formats()
    q, _ = quantize(net, formats, input_max=float(x.max()), timesteps=64)
    grid = 2 ** (formats.input_payload_bits - 1) - 1
    for name, node in q.nodes.items():
        if isinstance(node, IF):
            assert node.payload.dtype == np.int64 and node.payload.max() == grid
            mant = node.v_threshold >> 6
            unit = mant[node.payload == grid].max()  # the mantissa of relative threshold 1
            # threshold mantissa = round(vth_mant * payload / grid): on the payload grid
            assert np.all(np.abs(mant - unit * node.payload / grid) <= 0.5), name
    steps = 64
    fp = simulate(net, encode_input(net, x.numpy(), steps)).predictions(steps)
    ip = simulate(q, encode_input(q, x.numpy(), steps)).predictions(steps)
    assert float((fp == ip).float().mean()) >= 0.9


def test_shortcut_without_normalisation_keeps_weight_one():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 2, 3, padding=1)
            self.b = nn.Conv2d(2, 2, 3, padding=1)
            self.fc = nn.Linear(2 * 4 * 4, 2)

        def forward(self, x):
            x = torch.relu(self.a(x))
            return self.fc(torch.relu(self.b(x) + x).flatten(1))

    torch.manual_seed(2)
    gm, stats = calibrated(Res(), torch.rand(32, 1, 4, 4))
    on = convert(gm, (1, 4, 4), stats, ConvertOptions(NormSpec("max"), v_init=0.0))
    off = convert(gm, (1, 4, 4), stats,
                  ConvertOptions(NormSpec("max"), shortcut_norm=False, v_init=0.0))
    pops = [n for n, v in on.nodes.items() if isinstance(v, IF)]
    identity = [i for i, s in enumerate(on.synapses) if s.source == pops[0]
                and s.target == pops[1] and s.weight.shape[2:] == (1, 1)]
    assert len(identity) == 1
    ratio = float(stats[pops[0]].max(False) / stats[pops[1]].max(False))
    np.testing.assert_allclose(on.synapses[identity[0]].weight, ratio)  # S-ResNet eq. 6
    np.testing.assert_array_equal(off.synapses[identity[0]].weight, 1.0)
    others = [i for i in range(len(on.synapses)) if i != identity[0]]
    for i in others:
        np.testing.assert_array_equal(on.synapses[i].weight, off.synapses[i].weight)


def test_zeta_multiplies_every_weight(small):
    _, _, gm, stats = small
    base = convert(gm, (1, 6, 6), stats, ConvertOptions(NormSpec("max"), v_init=0.0))
    scaled = convert(gm, (1, 6, 6), stats, ConvertOptions(NormSpec("max"), zeta=1.25, v_init=0.0))
    compensate(base, 1.25)  # S-ResNet eq. 14
    for a, b in zip(base.synapses, scaled.synapses, strict=True):
        np.testing.assert_allclose(a.weight, b.weight)


def one_layer(z: float):
    """x → Linear(1, 1, weight z) → ReLU → Linear(1, 1, weight 1)."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU(), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(z)
        model[2].weight.fill_(1.0)
    return calibrated(model, torch.ones(4, 1))


@pytest.mark.parametrize("steps", [8, 33, 100])
def test_propagation_error_closed_form(steps):
    # max-norm makes the normalised activation 1; the neuron fires every step from t = 1
    # (one step of synaptic delay), so r(T) = (T - 1) / T and E = 1 / T (S-ResNet eq. 9)
    gm, stats = one_layer(0.7)
    net = convert(gm, (1,), stats, ConvertOptions(NormSpec("max"), v_init=0.0))
    err = propagation_error(net, gm, np.ones((3, 1), dtype=np.float32), steps)
    assert err.layers[0].at_max == pytest.approx(1 / steps)
    assert err.total_abs == pytest.approx(1 / steps)
    assert err.max_rate_last == pytest.approx((steps - 1) / steps)


def test_information_loss_closed_form():
    # SNM eq. 13 with lambda = 2, alpha = 0.5, T = 10: below 0.1 lost, above 1 clipped
    act = np.array([[0.05, 0.0, 0.5, 1.5], [0.2, 3.0, 0.09, 1.0]])
    assert information_loss(act, np.array(2.0), 0.5, 10) == pytest.approx(
        ((0.05 + 0.5) + (2.0 + 0.09)) / 2)


def test_clipped_ann_clips_each_relu_at_its_rate_ceiling(small):
    # by hand: Small with each ReLU clipped at its p50 scale (burst 2: half the scale, two
    # spikes a step, the same ceiling); the unclipped model's argmax differs on some items
    model, x, gm, stats = small
    one = convert(gm, (1, 6, 6), stats, ConvertOptions(NormSpec.parse("p50"), v_init=0.0))
    two = convert(gm, (1, 6, 6), stats, ConvertOptions(NormSpec.parse("p50"), burst=2, v_init=0.0))
    lam1, lam2 = (float(v.scale) for v in one.nodes.values() if isinstance(v, IF))
    with torch.no_grad():
        h = torch.relu(model.c2(torch.relu(model.c1(x)).clamp(max=lam1))).clamp(max=lam2)
        clipped = model.fc(nn.functional.max_pool2d(h, 2).flatten(1)).argmax(1).numpy()
        plain = model(x).argmax(1).numpy()
    assert (clipped != plain).any()
    for net in (one, two):
        assert clipped_ann_accuracy(net, gm, x.numpy(), clipped) == 1.0
        assert clipped_ann_accuracy(net, gm, x.numpy(), plain) == (clipped == plain).mean()


def test_rmp_balancing_sets_the_first_threshold_to_alpha_max_input(small):
    # RMP sec. 4.1: with analog input, the first layer's input is constant, so V_in^max is
    # the largest ANN pre-activation
    model, x, gm, stats = small
    net = convert(gm, (1, 6, 6), stats, ConvertOptions(NormSpec("max"), v_init=0.0))
    factors = balance_thresholds(net, x.numpy(), 0.6, 16)
    first = next(n for n, v in net.nodes.items() if isinstance(v, IF))
    pre = model.c1(x).detach().max().item()
    assert float(net.nodes[first].scale) == pytest.approx(0.6 * pre, rel=1e-5)
    assert set(factors) == {n for n, v in net.nodes.items() if isinstance(v, IF)}


def test_corrections_shrink_the_mean_gap(small):
    _, x, gm, stats = small
    net = convert(gm, (1, 6, 6), stats, ConvertOptions(NormSpec("p99"), v_init=0.0))
    for kind in ("bias", "potential"):
        trial = copy.deepcopy(net)
        before = correct(trial, gm, x.numpy(), 16, kind)
        after = correct(trial, gm, x.numpy(), 16, kind)
        assert sum(after.values()) < sum(before.values()), kind


def test_correction_targets_only_the_reachable_rate():
    # calibrated on x = 1, run on x = 2: the normalised activation is 2 but the neuron can
    # send at most one spike per step; it fires at every step it integrates, so the clipped
    # gap is 0 and nothing moves (the unclipped one would be 1 and raise the bias)
    gm, stats = one_layer(0.7)
    net = convert(gm, (1,), stats, ConvertOptions(NormSpec("max"), v_init=0.0))
    pop = next(n for n, v in net.nodes.items() if isinstance(v, IF))
    for kind in ("bias", "potential"):
        trial = copy.deepcopy(net)
        gaps = correct(trial, gm, np.full((3, 1), 2.0, dtype=np.float32), 20, kind)
        assert gaps[pop] == pytest.approx(0.0)
        np.testing.assert_array_equal(trial.nodes[pop].bias, net.nodes[pop].bias)
        np.testing.assert_array_equal(trial.nodes[pop].v_init, net.nodes[pop].v_init)


@pytest.mark.parametrize("norm", ["p99", "max:neuron"])
def test_correction_measured_on_the_quantized_network(small, norm):
    # the gap counted on the integer copy is in the float network's rate units (graded
    # payloads included), close to the float gap, and correcting shrinks it there too
    _, x, gm, stats = small
    net = build_network(gm, x.numpy(), stats, ConvertOptions(NormSpec.parse(norm), v_init=0.0))

    def to_int(n: Network) -> Network:
        return quantize(n, Formats(), input_max=float(x.max()), timesteps=32)[0]

    on_float = correct(copy.deepcopy(net), gm, x.numpy(), 32, "bias")
    trial = copy.deepcopy(net)
    before = correct(trial, gm, x.numpy(), 32, "bias", measure_on=to_int)
    after = correct(trial, gm, x.numpy(), 32, "bias", measure_on=to_int)
    first = next(iter(on_float))
    assert before[first] == pytest.approx(on_float[first], rel=0.2, abs=0.01)
    assert sum(after.values()) < sum(before.values())


def test_zeta_search_keeps_the_best_candidate(small):
    _, x, gm, stats = small
    net = convert(gm, (1, 6, 6), stats, ConvertOptions(NormSpec("max"), v_init=0.0))
    found = search_zeta(net, gm, x[:16].numpy(), 24)
    assert found.objective[1.0] == pytest.approx(found.error.total_abs)
    assert found.zeta == min(found.objective, key=found.objective.get)
    assert all(z < 1 / found.error.max_rate_last for z in found.objective if z > 1)


def test_build_network_records_what_it_found(small):
    _, x, gm, stats = small
    opts = ConvertOptions(NormSpec("max"), balance=1.0, zeta="auto", correction="bias",
                          calib_steps=16, calib_items=16, v_init=0.0)
    net = build_network(gm, x.numpy(), stats, opts)
    found = net.meta["calibration"]
    assert set(found) == {"balance_factors", "bias_correction", "zeta"}
    assert net.meta["balance"] == 1.0 and net.meta["zeta"] == "auto"


def test_convert_asks_for_neuron_statistics(small):
    _, _, gm, stats = small
    with pytest.raises(LavaconvError, match="neuron-wise"):
        convert(gm, (1, 6, 6), stats, ConvertOptions(NormSpec.parse("max:neuron"), v_init=0.0))
    with pytest.raises(LavaconvError, match="--neuron"):
        ConvertOptions(neuron="lif", v_init=0.0)


def test_roundtrip_new_fields_and_old_files(tmp_path, small):
    _, x, gm, stats = small
    net = build_network(gm, x.numpy(), stats, ConvertOptions(
        NormSpec.parse("max:neuron"), "snm", readout="count", v_init=0.0))
    net.save(tmp_path)
    back = Network.load(tmp_path)
    for name, node in net.nodes.items():
        for key, value in vars(node).items():
            assert np.array_equal(np.asarray(value), np.asarray(getattr(back.nodes[name], key)))
    text = (tmp_path / "network.json").read_text()
    for key in ('"payload"', '"mode"'):  # a file written before these fields existed
        text = text.replace(key, '"unused_' + key[1:])
    doc = json.loads(text)
    for entry in doc["nodes"].values():
        for key in [k for k in entry if k.startswith("unused_")]:
            del entry[key]
    (tmp_path / "network.json").write_text(json.dumps(doc))
    old = Network.load(tmp_path)
    first = next(v for v in old.nodes.values() if isinstance(v, IF))
    assert first.payload.shape == () and float(first.payload) == 1.0
    assert old.nodes["output"].mode == "potential"


def test_soft_reset_reaches_steady_rate_faster_than_hard_reset():
    # RMP eq. 3-5: for input z per step below threshold 1, the hard-reset neuron fires
    # once every ceil(1/z) steps, the soft-reset one floor(z (T-1)) times
    steps, z = 400, 0.7
    net_soft = two_inputs([z, 0], "subtract")
    net_hard = two_inputs([z, 0], "zero")
    seq = [[1, 0]] * steps
    soft = float(spikes_of(net_soft, seq).sum())
    hard = float(spikes_of(net_hard, seq).sum())
    assert soft == math.floor(z * (steps - 1) + 1e-9)
    assert hard == (steps - 1) // math.ceil(1 / z)


def test_cli_options_reach_convert_options():
    from lavaconv.app import cli, commands

    args = cli.parser().parse_args([
        "eval", "m.pt2", "--data", "digits", "--norm", "p99:neuron", "--neuron", "snm",
        "--readout", "count", "--no-shortcut-norm", "--balance", "0.6", "--zeta", "auto",
        "--correction", "potential", "--calib-steps", "32", "--calib-items", "100",
        "--burst", "3", "--maxpool", "running", "--align"])
    opts = commands.convert_options(args)
    assert opts == ConvertOptions(NormSpec("percentile", 99.0, False, True), "snm", "analog",
                                  0.5, readout="count", shortcut_norm=False, balance=0.6,
                                  zeta="auto", correction="potential", calib_steps=32,
                                  calib_items=100, burst=3, maxpool="running", align=True)
    assert commands.convert_options(cli.parser().parse_args(
        ["eval", "m.pt2", "--data", "digits", "--zeta", "1.1"])).zeta == 1.1


def test_per_channel_weight_scale_fills_the_grid_for_every_channel(small):
    # one threshold mantissa per output channel: every channel's largest incoming weight sits
    # at the top of the 8-bit grid (254), and the weights' rounding error shrinks
    model, x, gm, stats = small
    net = convert(gm, (1, 6, 6), stats, ConvertOptions(NormSpec.parse("p99.9"), v_init=0.0))
    q = {m: quantize(net, Formats(), input_max=float(x.max()), timesteps=32, weight_scale=m)
         for m in ("layer", "channel")}
    for name, node in q["channel"][0].nodes.items():
        if not isinstance(node, IF):
            continue
        rows = np.max([np.abs(s.weight).reshape(len(s.weight), -1).max(axis=1)
                       for s in q["channel"][0].inputs_of(name)], axis=0)
        assert rows.min() >= 250, name
        assert np.unique(node.v_threshold).size > 1  # one threshold per channel
    errors = {m: sum(r.weight_rel_error for r in report) for m, (_, report) in q.items()}
    assert errors["channel"] < errors["layer"]
    steps = 64
    fp = simulate(net, encode_input(net, x.numpy(), steps)).predictions(steps)
    ip = simulate(q["channel"][0], encode_input(q["channel"][0], x.numpy(), steps)
                  ).predictions(steps)
    assert float((fp == ip).float().mean()) >= 0.9
    with pytest.raises(LavaconvError, match="--weights"):
        quantize(net, Formats(), input_max=1.0, timesteps=32, weight_scale="row")
