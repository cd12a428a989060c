"""Fast engine against closed-form neuron dynamics and hand-computed examples."""

import math
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lavaconv.ir.network import IF, Conv, Dense, Input, MaxPool, Network, Readout
from lavaconv.sim import engine
from lavaconv.sim.engine import encode_input, maxpool_gate, simulate


def one_neuron(z: float, reset: str, threshold: float = 1.0, bias: float = 0.0,
               burst: int = 1) -> Network:
    """Analog input 1.0 → Dense weight z → one IF neuron → readout."""
    nodes = {
        "x": Input((1,)),
        "n": IF((1,), np.array([bias]), np.array(threshold), reset, t_start=1, burst=burst),
        "output": Readout((1,), np.zeros(1), t_start=2),
    }
    syn = [Dense("x", "n", np.array([[z]])), Dense("n", "output", np.array([[1.0]]))]
    return Network(nodes, syn)


@pytest.mark.parametrize("z", [0.125, 0.375, 0.5, 0.8125, 1.0])
@pytest.mark.parametrize("steps", [1, 7, 64, 257])
def test_soft_reset_rate_closed_form(z, steps):
    # Rueckauer eq. 6: N(T) = (sum of input - V(T)) / threshold; input arrives from t = 1 on
    res = simulate(one_neuron(z, "subtract"), encode_input(one_neuron(z, "subtract"), [[1.0]],
                                                           steps))
    assert int(res.spike_counts["n"][0, 0]) == math.floor(z * (steps - 1))


@pytest.mark.parametrize("z", [0.3, 0.45, 0.6, 0.99])
def test_hard_reset_rate_closed_form(z):
    # RMP eq. 3: for eta = z / V_th < 1, one spike every ceil(1 / eta) steps
    steps = 200
    net = one_neuron(z, "zero")
    res = simulate(net, encode_input(net, [[1.0]], steps))
    assert int(res.spike_counts["n"][0, 0]) == (steps - 1) // math.ceil(1 / z)


def _sent(net: Network, x, steps: int) -> torch.Tensor:
    """The spike train (payload applied) population ``n`` sends."""
    out: dict[str, torch.Tensor] = {}
    simulate(net, encode_input(net, x, steps), probe=lambda name, u, train: out.setdefault(
        name, train.clone()))
    return out["n"][:, 0, 0]


@pytest.mark.parametrize("z", [0.375, 1.0, 2.625, 3.0, 4.5])
def test_burst_neuron_closed_form(z):
    # burst spikes (Li & Zeng 2022), reset by subtraction: while z <= burst the spikes sent
    # up to step t are floor(z * t) (Rueckauer eq. 6 without the one-spike cap); above, the
    # neuron sends burst spikes every step and its events are the steps with any spike
    steps, burst = 40, 3
    net = one_neuron(z, "subtract", burst=burst)
    s = _sent(net, [[1.0]], steps)
    t = torch.arange(steps, dtype=torch.float64)  # input reaches v from step 1 on
    expected = torch.floor(z * t) if z <= burst else burst * t
    assert torch.equal(torch.cumsum(s, 0).double(), expected)
    assert int(s.max()) == min(burst, math.ceil(z))
    res = simulate(net, encode_input(net, [[1.0]], steps))
    assert int(res.spike_counts["n"][0, 0]) == int((s != 0).sum())


def test_signed_burst_neuron_tracks_the_input_sum():
    # SNM (eq. 7-11) with bursts: while the input sum C(t) >= 0 and |input| <= burst, the net
    # spikes N(t) stay within one threshold of C(t) (v = C - N, |v| < 1) and never go below 0
    rng = np.random.default_rng(0)
    drive, total = [], 0.0
    for d in np.round(rng.uniform(-2.5, 3, 60) * 8) / 8:
        d = -d if total + d < 0 else d
        drive.append(d)
        total += d
    steps = len(drive) + 1
    net = Network({"x": Input((steps,), "poisson"),
                   "n": IF((1,), np.zeros(1), np.array(1.0), "snm", burst=3),
                   "output": Readout((1,), np.zeros(1), t_start=2)},
                  [Dense("x", "n", np.array([[0.0, *drive]])),
                   Dense("n", "output", np.ones((1, 1)))])
    x = torch.eye(steps)[:, None]  # input neuron k sends one spike, at step k
    seen: dict[str, tuple] = {}
    simulate(net, x, probe=lambda name, u, train: seen.setdefault(name, (u, train)))
    u, train = (a[:, 0, 0].double() for a in seen["n"])
    c, n = torch.cumsum(u, 0), torch.cumsum(train, 0)
    assert torch.all(c >= 0) and c[-1] > 10
    assert torch.all((c - n).abs() < 1) and torch.all(n >= 0)
    assert train.abs().max() > 1 and train.min() < 0  # bursts and negative spikes


def test_bias_starts_at_t_start_and_readout_counts_spikes():
    net = one_neuron(0.0, "subtract", bias=0.25)
    res = simulate(net, encode_input(net, [[0.0]], 41), checkpoints=[10, 41])
    assert int(res.spike_counts["n"][0, 0]) == 10  # bias from t = 1: 40 steps * 0.25
    # the readout sees each spike one step later
    assert float(res.readout[41][0, 0]) == 10 - (1 if (41 - 2) % 4 == 3 else 0)
    assert res.spikes_at[10]["n"] == 2
    at = simulate(net, encode_input(net, [[0.0]], 41), checkpoints=[10, 41], counts_at=True)
    # bias 0.25 from t = 1: the 4th, 8th, ... step of bias fires (steps 4, 8, ...)
    assert [int(at.counts_at[t]["n"][0, 0]) for t in (10, 41)] == [2, 10]


@pytest.mark.parametrize("encoding", ["analog", "poisson"])
def test_synapse_delay_shifts_its_input(encoding):
    # readout v[T-1] = sum_t a[t]: the plain synapse delivers p[t-1] from t = 1, the one with
    # delay 2 delivers p[t-3] from t = 3 (analog: a constant; Poisson: a random +-1 train)
    x = np.array([[0.75], [-0.5]])
    nodes = {"x": Input((1,), encoding), "output": Readout((2,), np.zeros(2), t_start=1)}
    syn = [Dense("x", "output", np.array([[1.0], [0.0]])),
           Dense("x", "output", np.array([[0.0], [1.0]]), delay=2)]
    net = Network(nodes, syn)
    steps = 20
    payload = encode_input(net, x, steps, seed=4)
    v = simulate(net, payload).readout[steps].numpy()
    p = payload.numpy()[:, :, 0]  # (T, items)
    assert np.allclose(v[:, 0], p[:steps - 1].sum(0))
    assert np.allclose(v[:, 1], p[:steps - 3].sum(0))
    assert not np.allclose(v[:, 0], v[:, 1])


def test_maxpool_gate_passes_the_most_active_input():
    steps = 6
    s = torch.zeros(steps, 1, 1, 2, 2)
    s[:, 0, 0, 0, 1] = torch.tensor([1, 1, 1, 0, 1, 0.0])  # most active
    s[:, 0, 0, 1, 0] = torch.tensor([1, 0, 0, 1, 1, 1.0])
    node = MaxPool((1, 1, 1), "src", (2, 2), (2, 2))
    out = maxpool_gate(node, s)[:, 0, 0, 0, 0]
    # counts after each step: a=1,2,3,3,4,4  b=1,1,1,2,3,4 → winner a, a(tie → first), a, a, a, a
    assert out.tolist() == [1, 1, 1, 0, 1, 0]


def test_poisson_input_rates_and_seed():
    net = Network({"x": Input((3,), "poisson", 2.0)}, [])
    x = torch.tensor([[1.0, -0.5, 0.0]])
    a = encode_input(net, x, 4000, seed=3)
    b = encode_input(net, x, 4000, seed=3)
    assert torch.equal(a, b)
    rates = a[:, 0].mean(0)
    assert rates[0] == pytest.approx(0.5, abs=0.03)
    assert rates[1] == pytest.approx(-0.25, abs=0.03)
    assert rates[2] == 0


def test_int_mode_shift_saturation_and_reset():
    nodes = {
        "x": Input((1,), payload_bits=8, gain=100.0),
        "n": IF((1,), np.array([3]), np.array(640, dtype=np.int64), "subtract", 1, a_exp=-6),
        "output": Readout((1,), np.zeros(1, dtype=np.int64), 2, a_exp=20, state_bits=8),
    }
    syn = [Dense("x", "n", np.array([[6]])), Dense("n", "output", np.array([[2]]))]
    net = Network(nodes, syn, numeric="int")
    payload = encode_input(net, [[0.5]], 30)
    assert payload.dtype == torch.int64 and int(payload[0, 0, 0]) == 50
    res = simulate(net, payload)
    # per step: 6 * 50 = 300, << (6 - 6) = 300, + bias 3: 303 per step for 29 steps
    assert int(res.spike_counts["n"][0, 0]) == (303 * 29) // 640
    net.nodes["n"].a_exp = -2  # 4803 per step > threshold: at most one spike per step
    assert int(simulate(net, payload).spike_counts["n"][0, 0]) == 29
    # readout state: 8-bit, so it saturates at 127
    assert int(res.readout[30][0, 0]) == 127
    assert res.saturated["output"] > 0


def test_tf32_convolutions_are_off_while_simulating():
    # on a GPU, TF32 would round the float32 operands the integer mode sums exactly
    net = one_neuron(0.5, "subtract")
    seen = []
    simulate(net, encode_input(net, [[1.0]], 4),
             probe=lambda *_: seen.append(torch.backends.cudnn.allow_tf32))
    assert seen == [False] and torch.backends.cudnn.allow_tf32


int8 = pytest.mark.skipif(not engine._onednn(), reason="no oneDNN int8 kernels")


def _binary(shape, seed: int = 0, channels_last: bool = True) -> torch.Tensor:
    """Random 0/1 payloads, a 4-d batch laid out channels-last like the engine's trains."""
    s = (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.3).float()
    return s.contiguous(memory_format=torch.channels_last) if channels_last else s


def _int8_weight(rng, shape) -> np.ndarray:
    """Integers in [-127, 127], each output channel times its own power of two (up to 8)."""
    w = rng.integers(-127, 128, shape)
    return w * (2 ** rng.integers(0, 4, len(w))).reshape(-1, *[1] * (len(shape) - 1))


@int8
@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("ch,out,k,stride,pad,groups", [
    (8, 16, 3, 1, 1, 1), (8, 16, 3, 2, 1, 1), (8, 16, 3, 1, 0, 4), (8, 8, 3, 1, 1, 8),
    (8, 16, 1, 1, 0, 1), (8, 16, 1, 2, 0, 1), (6, 12, 5, 2, 2, 3)])
def test_int8_convolution_equals_the_float_one(ch, out, k, stride, pad, groups, shift):
    rng = np.random.default_rng(ch * out + k + stride + groups)
    syn = Conv("a", "b", _int8_weight(rng, (out, ch // groups, k, k)), (stride, stride),
               (pad, pad), groups)
    kernel = engine._int8(syn, shift)
    assert kernel is not None and int(kernel.scale.max()) > 2**shift  # a factor divided out
    for s in (_binary((20, ch, 11, 9)), _binary((3, ch, 11, 9), 1, channels_last=False)):
        expected = engine._apply_synapse(syn, s, engine._Plan(torch.float32, False, shift))
        got = engine._apply_synapse(syn, s, engine._Plan(torch.float32, False, shift, kernel))
        assert got.abs().max() > 0 and torch.equal(got, expected)


@int8
@pytest.mark.parametrize("src,out,shift,channels_last", [
    ((64,), 10, 0, False), ((64,), 50, -3, False), ((4, 5, 3), 10, -2, True),
    ((4, 5, 3), 30, 1, False)])
def test_int8_dense_equals_the_float_one(src, out, shift, channels_last):
    # a negative shift (a stock LIF readout's a_exp) floors each sum after the scaling
    rng = np.random.default_rng(out)
    syn = Dense("a", "b", _int8_weight(rng, (out, int(np.prod(src)))))
    kernel = engine._int8(syn, shift, src if channels_last else None)
    assert kernel is not None and kernel.channels_last == channels_last
    s = _binary((50, *src), channels_last=len(src) == 3)
    expected = engine._apply_synapse(syn, s, engine._Plan(torch.float32, False, shift))
    got = engine._apply_synapse(syn, s, engine._Plan(torch.float32, False, shift, kernel))
    assert torch.equal(got, expected)
    exact = s.double().flatten(1) @ torch.as_tensor(syn.weight, dtype=torch.float64).T
    exact *= 2.0**shift
    assert torch.equal(got.double(), exact.floor())
    assert (shift < 0) == (not torch.equal(exact, exact.floor()))  # the floor matters


@int8
def test_int8_kernel_refuses_weights_beyond_int8():
    w = np.full((4, 3), 6)
    assert engine._int8(Dense("a", "b", w * 127 // 6 * 2 + 1), 0) is None  # 255: odd
    assert engine._int8(Dense("a", "b", w / 4), 0) is None  # not integers
    ok = engine._int8(Dense("a", "b", w * 64), 0)  # 384 = 3 * 2**7
    assert ok is not None and ok.scale.tolist() == [128.0] * 4


def _int_net(shape=(2, 6, 6), ch: int = 16) -> Network:
    """int mode: Poisson input -> conv -> IF a -> (3x3 conv + depthwise 3x3) -> IF b -> Dense
    -> readout; even weights (2 x int8)."""
    rng = np.random.default_rng(0)
    hw = shape[1:]
    vth = np.array(64 * 300, dtype=np.int64)
    nodes = {
        "x": Input(shape, "poisson"),
        "a": IF((ch, *hw), np.full((ch, 1, 1), 64 * 20), vth, "subtract", 1),
        "b": IF((ch, *hw), np.zeros((ch, 1, 1), dtype=np.int64), vth, "subtract", 2),
        "output": Readout((10,), np.zeros(10, dtype=np.int64), 3),
    }
    syn = [Conv("x", "a", rng.integers(-127, 128, (ch, shape[0], 3, 3)) * 2, padding=(1, 1)),
           Conv("a", "b", rng.integers(-100, 128, (ch, ch, 3, 3)) * 2, padding=(1, 1)),
           Conv("a", "b", rng.integers(-127, 128, (ch, 1, 3, 3)) * 2, padding=(1, 1),
                groups=ch),
           Dense("b", "output", rng.integers(-127, 128, (10, ch * hw[0] * hw[1])) * 2)]
    return Network(nodes, syn, numeric="int")


@int8
def test_int8_synapses_run_where_planned_and_change_nothing(monkeypatch):
    net = _int_net()
    payload = encode_input(net, np.random.default_rng(1).uniform(0, 1, (3, *net.nodes["x"].shape)),
                           16)
    train = engine._empty((16, 3, *net.nodes["a"].shape), payload, torch.float32)
    plans = [engine._plan(net, syn, train) for syn in net.synapses]
    # the Poisson input is signed; a depthwise conv is faster in float32; the Dense reads a
    # channels-last train
    assert [p.int8 is not None for p in plans] == [False, True, False, True]
    assert engine._plan(net, net.synapses[1], train.to("meta")).int8 is None
    calls = []
    spy = engine._apply_int8
    monkeypatch.setattr(engine, "_apply_int8", lambda *a: calls.append(a[0]) or spy(*a))
    fast = simulate(net, payload, [8, 16])
    assert set(map(id, calls)) == {id(net.synapses[1]), id(net.synapses[3])}
    monkeypatch.setattr(engine, "_onednn", lambda: False)
    slow = simulate(net, payload, [8, 16])
    assert fast.spike_counts["b"].sum() > 0 and fast.spike_counts["b"].sum() < 16 * 3 * 576
    for name in ("a", "b"):
        assert torch.equal(fast.spike_counts[name], slow.spike_counts[name])
    assert all(torch.equal(fast.readout[t], slow.readout[t]) for t in (8, 16))


def test_int_plan_bounds_the_unshifted_sum():
    # a stock readout's negative a_exp scales the sum after it is taken: float32 must hold the
    # sum itself exactly (here 2**24 - 2**10: float64, though 2**-6 times it is small)
    nodes = {"x": Input((1024,), "poisson"),
             "output": Readout((1,), np.zeros(1, dtype=np.int64), 1, a_exp=-6, lif=True)}
    net = Network(nodes, [Dense("x", "output", np.full((1, 1024), 2**14 - 1))], numeric="int")
    assert engine._plan(net, net.synapses[0]).dtype == torch.float64


@pytest.mark.parametrize("numeric", ["float", "int"])
def test_synaptic_input_skips_silent_steps_and_reads_only_strided_entries(numeric):
    """A population fed by a 3x3 and a 1x1 stride-2 convolution (delay 1) of a train whose
    first spikes come at step 5: the chunks start with one zero chunk up to the first step a
    synapse can deliver (a broadcast view) and then equal the convolutions of the whole train
    (float64, the full stride-2 convolution: the 1x1 one reads the subsample)."""
    rng = np.random.default_rng(3)
    weight = (lambda *s: np.round(rng.normal(0, 20, s))) if numeric == "int" else (
        lambda *s: rng.normal(0, 0.5, s))
    nodes = {"s": Input((4, 8, 8), "poisson"), "b": IF((3, 4, 4), np.zeros(()), np.ones(()),
                                                        "subtract")}
    syns = [Conv("s", "b", weight(3, 4, 3, 3), stride=(2, 2), padding=(1, 1)),
            Conv("s", "b", weight(3, 4, 1, 1), stride=(2, 2), delay=1)]
    net = Network(nodes, syns, numeric=numeric)
    steps, items = 12, 5
    train = engine._empty((steps, items, 4, 8, 8), torch.zeros(()), torch.uint8)
    train[:] = torch.as_tensor(rng.random((steps, items, 4, 8, 8)) < 0.3)
    train[:5] = 0
    read, view = engine._strided_read(syns[1], train)
    assert read.stride == (1, 1) and view.shape == (steps, items, 4, 4, 4)
    assert engine._strided_read(syns[0], train) == (syns[0], train)
    chunks = list(engine._input_chunks(net, "b", {"s": train}, set(), items=2,
                                       first={"s": 5}))
    zero = chunks[0][2]
    assert chunks[0][:2] == (0, 0) and zero.shape[0] == 6 and zero.stride(0) == 0
    assert not zero.any()
    s = train.double()
    want = torch.zeros(steps, items, 3, 4, 4, dtype=torch.float64)
    for syn, late in zip(syns, (1, 2), strict=True):
        w = torch.as_tensor(syn.weight, dtype=torch.float64)
        a = F.conv2d(s.flatten(0, 1), w, stride=2, padding=syn.padding).unflatten(0, (steps, items))
        want[late:] += a[:steps - late]
    got = torch.zeros_like(want)
    for t0, b0, a in chunks:
        got[t0:t0 + len(a), b0:b0 + a.shape[1]] = a.double()
    assert torch.equal(got, want) if numeric == "int" else torch.allclose(got, want, atol=1e-5)
    assert want[6].abs().sum() > 0  # the first step it delivers


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc settings")
@pytest.mark.parametrize("keep", [False, True])
def test_freed_memory_is_kept_and_reused_without_page_faults(keep):
    """In a fresh process, as the CLI: 64 MB buffers touched and freed in turn fault 16,384
    pages each time unless the heap keeps freed memory (the first may grow the heap)."""
    script = f"""
import resource, torch
from lavaconv.sim import heap
assert heap.keep_freed_memory() if {keep} else True
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 << 20, dtype=torch.uint8)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(min(faults() for _ in range(5)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert (int(done.stdout) < 100) == keep
