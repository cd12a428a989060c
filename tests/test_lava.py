"""Lava back end against closed forms, stock-process behaviour and the fast engine, bit for bit."""

import glob
import math
import os
import signal
import subprocess
import sys
import time
from multiprocessing import resource_tracker

import numpy as np
import pytest
import torch

from lavaconv.errors import LavaconvError
from lavaconv.ir.network import IF, Conv, Dense, Input, MaxPool, Network, Readout
from lavaconv.lava import build, dynamics, loihi2_available, missing_hw_models, run_lava
from lavaconv.lava import run as lava_run
from lavaconv.sim.engine import encode_input, simulate

STEPS = 16


def _even(rng, shape, lo, hi):
    return 2 * rng.integers(lo // 2, hi // 2 + 1, size=shape)


def dense_net(encoding: str, reset: str, seed: int = 0) -> Network:
    """Input → IF → IF (the other reset) → readout; a_exp < 0 floors negative inputs."""
    rng = np.random.default_rng(seed)
    other = "zero" if reset == "subtract" else "subtract"
    first = -4 if encoding == "analog" else 0
    nodes = {
        "x": Input((10,), encoding, payload_bits=8, gain=16.0),
        "h1": IF((8,), 64 * rng.integers(-8, 6, 8), np.array(2**13), reset, 1, a_exp=first,
                 v_init=np.array(2**12)),
        "h2": IF((6,), 64 * rng.integers(-2, 3, 6), np.array(2**11), other, 2, a_exp=-7),
        "output": Readout((4,), 64 * rng.integers(-6, 6, 4), 3, a_exp=0),
    }
    syn = [Dense("x", "h1", _even(rng, (8, 10), -120, 254)),
           Dense("h1", "h2", _even(rng, (6, 8), -200, 254)),
           Dense("h2", "output", _even(rng, (4, 6), -256, 254))]
    return Network(nodes, syn, numeric="int")


def conv_net(encoding: str, reset: str, seed: int = 0) -> Network:
    """Conv with padding, padded max-pool gate, depthwise avg-pool, a residual join (conv +
    depthwise identity into one IF), strided conv, two Dense from maps into a saturating readout."""
    rng = np.random.default_rng(seed)
    c = 3
    first = -4 if encoding == "analog" else 0
    nodes = {
        "x": Input((2, 6, 6), encoding, payload_bits=8, gain=16.0),
        "a": IF((c, 6, 6), 64 * rng.integers(-4, 4, (c, 1, 1)),
                2 ** rng.integers(12, 14, (c, 1, 1)), reset, 1, a_exp=first,
                v_init=2 ** rng.integers(10, 12, (c, 1, 1))),
        "pool": MaxPool((c, 3, 3), "a", (3, 3), (2, 2), (1, 1)),
        "e": IF((c, 3, 3), np.zeros((c, 1, 1), np.int64), np.array(2**8), reset, 2, a_exp=-6),
        "r": IF((c, 3, 3), 64 * rng.integers(-2, 4, (c, 3, 3)), np.array(2**12), reset, 2,
                a_exp=-4),
        "b": IF((c, 2, 2), np.full((c, 1, 1), -32), np.array(2**12), "zero", 2, a_exp=-6),
        "output": Readout((4,), 64 * rng.integers(-5, 5, 4), 3, a_exp=-5, state_bits=16),
    }
    syn = [
        Conv("x", "a", _even(rng, (c, 2, 3, 3), -100, 200), (1, 1), (1, 1)),
        Conv("a", "e", np.full((c, 1, 2, 2), 64), (2, 2), (0, 0), groups=c),  # avg-pool 2x2
        Conv("e", "r", _even(rng, (c, c, 3, 3), -80, 200), (1, 1), (1, 1)),
        Conv("pool", "r", np.full((c, 1, 1, 1), 128), groups=c),  # identity shortcut
        Conv("pool", "b", _even(rng, (c, c, 3, 3), -100, 250), (2, 2), (1, 1)),
        Dense("r", "output", _even(rng, (4, c * 9), -200, 254)),
        Dense("b", "output", _even(rng, (4, c * 4), -200, 254)),
    ]
    return Network(nodes, syn, numeric="int")


def to_float(net: Network) -> Network:
    """The float network whose unit threshold matches each integer threshold; every value is a
    short dyadic fraction, so float32 (engine) and float64 (Lava) compute it exactly."""
    nodes, syns = dict(net.nodes), []
    inp = net.nodes[net.input_name]
    nodes[net.input_name] = Input(inp.shape, inp.encoding)
    for syn in net.synapses:
        dst = net.nodes[syn.target]
        vth = (np.broadcast_to(dst.v_threshold, dst.shape).reshape(dst.shape[0], -1)[:, 0]
               if isinstance(dst, IF) else np.full(dst.shape[0], 2.0**12))
        unit = inp.gain if syn.source == net.input_name and inp.encoding == "analog" else 1.0
        per_row = vth.reshape(-1, *[1] * (syn.weight.ndim - 1))
        w = syn.weight * 2.0 ** (6 + dst.a_exp) * unit / per_row
        syns.append(type(syn)(**{**syn.__dict__, "weight": w}))
    for name, node in net.nodes.items():
        if isinstance(node, IF):
            nodes[name] = IF(node.shape, node.bias / node.v_threshold, np.ones(()), node.reset,
                             node.t_start, v_init=node.v_init / node.v_threshold)
        elif isinstance(node, Readout):
            nodes[name] = Readout(node.shape, node.bias / 2.0**12, node.t_start)
    return Network(nodes, syns, numeric="float")


def _inputs(net: Network, items: int = 2) -> np.ndarray:
    x = np.random.default_rng(1).uniform(-0.5, 1, (items, *net.nodes[net.input_name].shape))
    return np.round(x * 16) / 16


def _children() -> set[str]:
    found: set[str] = set()
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with open(path) as f:
            found.update(f.read().split())
    return found


pytestmark = pytest.mark.usefixtures("single_thread_torch")


def test_closed_form_soft_and_hard_reset_bias_and_floor_shift():
    # a[t] = w * p from t = 1 on; at most one spike per step (w * p <= vth)
    w = np.array([[64, 0], [128, 0], [254, 0], [-64, 0], [0, 0]])
    vth, bias, steps = 64 * 16, 48, 24
    out_w = np.array([[6, -10], [-2, 0]])
    nodes = {
        "x": Input((2,), payload_bits=8, gain=1.0),
        "soft": IF((5,), np.array([0, 0, 0, 0, bias]), np.array(vth), "subtract", 1, a_exp=-6),
        "hard": IF((5,), np.array([0, 0, 0, 0, bias]), np.array(vth), "zero", 1, a_exp=-6),
        "output": Readout((2,), np.array([5, -3]), 4, a_exp=-8),
    }
    syns = [Dense("x", "soft", w), Dense("x", "hard", w), Dense("x", "output", out_w)]
    net = Network(nodes, syns, numeric="int")
    payload = np.array([[3.0, -7.0], [4.0, 3.0]])
    res = run_lava(net, encode_input(net, payload, steps).numpy())
    for k, (p, q) in enumerate(payload):
        drive = np.append(w[:4, 0] * p, bias)
        soft = [math.floor((steps - 1) * d / vth) if d > 0 else 0 for d in drive]
        hard = [(steps - 1) // math.ceil(vth / d) if d > 0 else 0 for d in drive]
        assert res.spike_counts["soft"][k].tolist() == soft  # Rueckauer eq. 6
        assert res.spike_counts["hard"][k].tolist() == hard
        a = out_w @ np.array([p, q])
        expected = (steps - 1) * np.floor(a * 2.0**-2) + np.array([5, -3]) * (steps - 4)
        assert res.readout[k].tolist() == expected.tolist()  # floor shift of negative a


@pytest.mark.parametrize("message_bits", [0, 8])
def test_stock_dense_with_graded_signed_payload(message_bits):
    # Dense's s_in is typed bool, yet the channel carries the sender's int32: with
    # num_message_bits > 0 it computes W @ p for signed graded p; with 0 it casts p to bool.
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import Dense as LavaDense

    from lavaconv.lava.procs.process import Readout as ReadoutProc
    from lavaconv.lava.procs.process import SpikeSource

    steps = 5
    p = np.array([-3, 5, 0, 7], np.int32)
    w = np.array([[2, -4, 6, 8], [-10, 12, 14, -16]])
    src = SpikeSource(payload=np.tile(p, (1, steps, 1)))
    dense = LavaDense(weights=w, num_message_bits=message_bits)
    out = ReadoutProc(shape=(2,), a_exp=-6, t_start=steps, steps=steps)
    src.s_out.connect(dense.s_in)
    dense.a_out.connect(out.a_in)
    try:
        out.run(RunSteps(num_steps=steps), Loihi2SimCfg(select_tag="fixed_pt"))
        v = out.v.get()
    finally:
        out.stop()
    seen = p if message_bits else (p != 0).astype(int)
    assert v.tolist() == ((steps - 1) * (w @ seen)).tolist()


def test_reset_step_restores_state_and_zeroes_synapse_buffers():
    from lava.magma.core.run_conditions import RunSteps

    net = conv_net("analog", "subtract")
    graph = build(net, encode_input(net, _inputs(net), STEPS).numpy())
    top = graph.top
    buffers = {k: (p, "a_buff" if hasattr(p, "a_buff") else "a_buf")
               for k, p in graph.synapses.items()}
    try:
        top.create_runtime(run_cfg=lava_run.run_config(graph, "fixed_pt", "sim", fast=False))
        top.run(RunSteps(num_steps=STEPS))
        before = {k: getattr(p, var).get() for k, (p, var) in buffers.items()}
        top.run(RunSteps(num_steps=1))  # the reset step
        after = {k: getattr(p, var).get() for k, (p, var) in buffers.items()}
        state = {f"{n}.{var}": getattr(p, var).get() for n, p in graph.nodes.items()
                 for var in ("count", "c") if hasattr(p, var)}
        v = {n: p.v.get() - p.v_init.get() for n, p in graph.nodes.items() if hasattr(p, "v")}
        v_init = graph.nodes["a"].v_init.get()
    finally:
        top.stop()
    assert np.any(before["0:x->a"]) and np.any(before["1:a->e"])  # the check below can fail
    assert {k: float(np.abs(a).max()) for k, a in after.items()} == dict.fromkeys(after, 0.0)
    assert {k: float(np.abs(s).max()) for k, s in state.items()} == dict.fromkeys(state, 0.0)
    assert {k: float(np.abs(x).max()) for k, x in v.items()} == dict.fromkeys(v, 0.0)
    assert v_init.min() > 0  # the potentials are restored to v_init, not zeroed


def _assert_same(net: Network, payload: torch.Tensor, res, exact: bool) -> None:
    eng = simulate(net, payload)
    assert set(res.spike_counts) == set(eng.spike_counts)
    for name, counts in eng.spike_counts.items():
        assert np.array_equal(counts.numpy(), res.spike_counts[name]), name
        assert 0 < counts.sum() < counts.numel() * payload.shape[0], f"{name} idle or saturated"
    expected = eng.readout[payload.shape[0]].numpy()
    if exact:
        assert np.array_equal(expected, res.readout)
    else:
        assert np.allclose(expected, res.readout, rtol=1e-6, atol=1e-6)
    assert not np.array_equal(res.readout[0], res.readout[1])  # items really differ


@pytest.mark.parametrize("make", [dense_net, conv_net])
@pytest.mark.parametrize("encoding,reset", [("analog", "subtract"), ("poisson", "zero")])
def test_fixed_pt_stock_and_fast_are_bit_exact_with_the_engine(make, encoding, reset):
    net = make(encoding, reset)
    payload = encode_input(net, _inputs(net), STEPS, seed=3)
    for fast in (False, True):  # Lava's stock models, then the fused model: spike for spike
        _assert_same(net, payload, run_lava(net, payload.numpy(), fast=fast), exact=True)


def graded(net: Network, reset: str, seed: int = 0, burst: int = 1) -> Network:
    """``net`` with graded spikes: every IF population sends its own integer payload per
    neuron (neuron-wise normalisation; reset 'snm': signed spikes with memory, SNM eq. 7-11),
    up to ``burst`` of them a step. Targets of graded spikes get a 64x smaller gain, so the
    drive stays in range."""
    rng = np.random.default_rng(seed)
    for node in net.nodes.values():
        if isinstance(node, IF):
            node.payload = rng.integers(16, 128, node.shape)
            node.reset, node.burst = reset, burst
    for name, node in net.nodes.items():
        if isinstance(node, (IF, Readout)) and any(
                s.source != net.input_name for s in net.inputs_of(name)):
            node.a_exp -= 6
    return net


@pytest.mark.parametrize("make", [dense_net, conv_net])
@pytest.mark.parametrize("encoding,reset,burst", [("analog", "subtract", 1), ("poisson", "snm", 1),
                                                  ("analog", "subtract", 4), ("poisson", "snm", 3)])
def test_graded_and_signed_spikes_are_bit_exact(make, encoding, reset, burst):
    # per-neuron payloads through Dense, Conv, the residual join and the max-pool gate (which
    # gates on the running payload sum); SNM neurons send -payload too (Poisson input makes
    # the drive change sign); burst neurons send up to ``burst`` times their payload
    net = graded(make(encoding, "subtract"), reset, burst=burst)
    payload = encode_input(net, _inputs(net), STEPS, seed=3)
    for fast in (False, True):
        _assert_same(net, payload, run_lava(net, payload.numpy(), fast=fast), exact=True)
    sent: dict[str, torch.Tensor] = {}
    simulate(net, payload, probe=lambda name, current, train: sent.setdefault(name, train))
    values = torch.cat([t.flatten() for t in sent.values()]).unique()
    assert len(values) > 3  # graded: many payload values, not 0/1
    assert (values.min() < 0) == (reset == "snm")  # signed spikes exactly where SNM
    assert (values.abs().max() >= 128) == (burst > 1)  # bursts: more than one payload (< 128)


@pytest.mark.parametrize("encoding,reset,burst", [("analog", "subtract", 3), ("poisson", "snm", 2)])
def test_running_maxpool_is_bit_exact(encoding, reset, burst):
    # graded bursts (and signed ones) into the pool: here the running maximum and the rate
    # gate send different trains, so Lava must implement the mode asked for
    net = graded(conv_net(encoding, "subtract"), reset, burst=burst)
    payload = encode_input(net, _inputs(net), STEPS, seed=3)
    gated = simulate(net, payload).readout[STEPS]
    net.nodes["pool"].mode = "running"
    assert not torch.equal(simulate(net, payload).readout[STEPS], gated)
    for fast in (False, True):
        _assert_same(net, payload, run_lava(net, payload.numpy(), fast=fast), exact=True)


@pytest.mark.parametrize("mode", ["count", "softmax"])
def test_spike_count_and_softmax_readouts_on_lava(mode):
    from lavaconv.lava import compare

    net = graded(conv_net("analog", "subtract"), "snm")
    payload = encode_input(net, _inputs(net), STEPS, seed=3)
    out = net.nodes[net.output_name]
    v = simulate(net, payload).readout[STEPS].numpy()
    out.mode, out.v_threshold = mode, np.array(max(1, int(np.abs(v).max()) // 6))
    eng = simulate(net, payload)
    res = run_lava(net, payload.numpy())
    assert compare(net, eng, res) == []
    if mode == "count":  # the score is the readout's own spike count, and it spiked
        assert np.array_equal(eng.readout[STEPS].numpy(), res.readout)
        assert res.readout.max() > 0 and res.readout.dtype.kind == "i"
    else:  # Lava's part of a spiking softmax is the potential it samples from
        assert np.array_equal(res.readout, v)


@pytest.mark.parametrize("make,encoding,reset",
                         [(conv_net, "analog", "subtract"), (dense_net, "poisson", "zero")])
def test_floating_pt_matches_the_engine(make, encoding, reset):
    net = to_float(make(encoding, reset))
    payload = encode_input(net, _inputs(net), STEPS, seed=3)
    assert payload.dtype == torch.float32
    _assert_same(net, payload, run_lava(net, payload.numpy(), tag="floating_pt"), exact=False)


@pytest.mark.parametrize("fast", [False, True])
def test_no_process_left_behind_after_a_run_or_an_error(monkeypatch, fast):
    resource_tracker.ensure_running()  # Python's own per-interpreter helper, shared by all
    before = _children()
    net = conv_net("analog", "zero")
    payload = encode_input(net, _inputs(net), 4).numpy()
    run_lava(net, payload, fast=fast)
    assert _children() == before

    def broken(*args):
        raise RuntimeError("read failed")

    with monkeypatch.context() as patch:
        patch.setattr(lava_run, "_read", broken)
        with pytest.raises(RuntimeError, match="read failed"):
            run_lava(net, payload, fast=fast)
    assert _children() == before

    integrate, calls = dynamics.integrate, []

    def failing(*args):  # Lava forks its processes after this: they inherit it
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("potential update failed")
        integrate(*args)

    monkeypatch.setattr(dynamics, "integrate", failing)
    # stock: the failed process's downstream neighbours wait for its messages forever
    with pytest.raises(RuntimeError, match="(?s)a Lava process failed.*potential update failed"):
        run_lava(net, payload, fast=fast)
    assert _children() == before


INTERRUPTED = """
import sys
sys.path.insert(0, {tests!r})
from test_lava import conv_net, _inputs
from lavaconv.sim.engine import encode_input
from lavaconv.lava import run_lava
net = conv_net("analog", "zero")
print("ready", flush=True)
run_lava(net, encode_input(net, _inputs(net), 100_000).numpy(), fast={fast})
"""


def _descendants(pid: int) -> dict[int, str]:
    """pid → start time of every descendant of ``pid``."""
    found = {}
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as f:
                children = list(map(int, f.read().split()))
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
        for child in children:
            stat = _stat(child)
            if stat:
                found[child] = stat[19]
                found.update(_descendants(child))
    return found


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state first), None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    return text[text.rindex(")") + 2:].split()


@pytest.mark.parametrize("fast,signum,group", [(False, signal.SIGINT, True),
                                               (True, signal.SIGTERM, False)])
def test_no_process_left_behind_after_ctrl_c_or_sigterm(fast, signum, group):
    # Ctrl-C in a terminal signals the whole process group; `kill` signals one process
    net = conv_net("analog", "zero")
    models = 1 if fast else len(net.nodes) + len(net.synapses)
    script = INTERRUPTED.format(tests=os.path.dirname(__file__), fast=fast)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            start_new_session=True, text=True)
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60
    while len(_descendants(proc.pid)) < models + 3:  # + runtime service, memory, tracker
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)  # stepping now
    lava = _descendants(proc.pid)
    (os.killpg if group else os.kill)(proc.pid, signum)
    assert proc.wait(timeout=60) == -signum  # the signal's own exit status, after cleaning up
    time.sleep(0.5)  # the orphaned resource tracker sees its pipe close
    left = [p for p, start in lava.items() if (s := _stat(p)) and s[19] == start and s[0] != "Z"]
    assert left == []


def test_fast_models_match_stock_models_beyond_what_build_emits():
    # Dense: weights out of the 8-bit range (clipped), odd (truncated to 6 bits), weight_exp
    # -1 and +2, graded input read as binary (num_message_bits 0). Conv: strided, dilated,
    # grouped, padded, with sums beyond 2**23 (127 * 255 * 9 * 32 taps; wrapped to 24 bits).
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.conv.process import Conv as LavaConv
    from lava.proc.dense.process import Dense as LavaDense

    from lavaconv.lava.procs import models
    from lavaconv.lava.procs.process import Readout as ReadoutProc
    from lavaconv.lava.procs.process import SpikeSource, SpikingNetwork

    rng = np.random.default_rng(5)
    steps = 4

    def dense_graph():
        src = SpikeSource(payload=rng.integers(-127, 128, (1, steps, 40)).astype(np.int32))
        out = ReadoutProc(shape=(6,), a_exp=-6, t_start=steps, steps=steps, state_bits=32)
        synapses = [LavaDense(weights=rng.integers(-300, 300, (6, 40)), num_message_bits=8,
                              num_weight_bits=6, weight_exp=-1),
                    LavaDense(weights=rng.integers(-255, 255, (6, 40)), num_message_bits=0,
                              weight_exp=2)]
        return src, out, synapses

    def conv_graph():
        x = rng.integers(-40, 128, (1, steps, 9, 8, 64)).astype(np.int32)
        x[..., :32] = 127
        src = SpikeSource(payload=x)
        weight = rng.integers(-60, 255, (6, 3, 3, 32))
        weight[0] = 255
        conv = LavaConv(weight=weight, input_shape=(9, 8, 64), padding=(1, 2), stride=(2, 1),
                        dilation=(1, 2), groups=2, num_message_bits=8)
        out = ReadoutProc(shape=tuple(conv.output_shape), a_exp=-6, t_start=steps, steps=steps,
                          state_bits=32)
        return src, out, [conv]

    for make in (dense_graph, conv_graph):
        v = {}
        for fast in (False, True):
            rng = np.random.default_rng(5)
            src, out, synapses = make()
            for syn in synapses:
                src.s_out.reshape(syn.s_in.shape).connect(syn.s_in)
                syn.a_out.connect(out.a_in)
            procs = [src, out, *synapses]
            top = SpikingNetwork(procs=procs)
            chosen = {top: models.PySpikingNetworkModelFused} if fast else {
                top: models.SubSpikingNetworkModel,
                **{p: lava_run.MODELS["fixed_pt"][type(p)] for p in procs}}
            try:
                top.run(RunSteps(num_steps=steps), Loihi2SimCfg(exception_proc_model_map=chosen))
                v[fast] = top.score.get() if fast else out.v.get()
            finally:
                top.stop()
        assert np.array_equal(v[False], v[True]), make.__name__
        assert np.abs(v[True]).max() > 2**15  # far from trivial sums


def test_fast_model_refuses_what_the_stock_model_would_overflow():
    net = Network({"x": Input((1 << 16,), payload_bits=8, gain=1.0),
                   "output": Readout((1,), np.zeros(1), 2, a_exp=-6)},
                  [Dense("x", "output", np.full((1, 1 << 16), -256))], numeric="int")
    payload = np.ones((2, 1, 1 << 16), np.int64)
    with pytest.raises(LavaconvError, match=r"synapse 0:x->output: .*fast=False"):
        run_lava(net, payload)
    with pytest.raises(LavaconvError, match="fixed_pt only"):
        run_lava(to_float(dense_net("analog", "zero")), payload[:, :, :10], tag="floating_pt",
                 fast=True)


def test_user_errors_name_the_fault():
    net = dense_net("analog", "subtract")
    payload = encode_input(net, _inputs(net), 4).numpy()
    with pytest.raises(LavaconvError, match="payload shape"):
        build(net, payload[:, :, :5])
    net.synapses[0].weight[0, 0] = 3
    with pytest.raises(LavaconvError, match=r"synapse 0:x->h1: Dense weights must be even"):
        build(net, payload)
    with pytest.raises(LavaconvError, match="tag"):
        run_lava(dense_net("analog", "subtract"), payload, tag="bit_exact")


def test_loihi2_target_names_what_cannot_map():
    net = conv_net("analog", "subtract")
    payload = encode_input(net, _inputs(net), 4).numpy()
    missing = missing_hw_models(build(net, payload))
    ours = [f"{name} ({type_})" for name, type_ in
            [("x", "SpikeSource"), ("a", "IFNeuron"), ("pool", "MaxPoolGate"),
             ("output", "Readout")]]
    assert set(ours) <= set(missing)  # no public Loihi model for lavaconv's own processes
    if not loihi2_available():
        assert "0:x->a (Conv)" in missing  # stock models come with Intel's extension
        with pytest.raises(LavaconvError, match="lava-loihi"):
            run_lava(net, payload, target="loihi2")


def test_per_channel_weight_scale_is_bit_exact():
    # a converted residual block quantized with one threshold per output channel
    from nets import ResidualBlock, calibrated

    from lavaconv.conversion import ConvertOptions, NormSpec, convert
    from lavaconv.ir.fixedpoint import Formats
    from lavaconv.quantize.integer import quantize

    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    gm, stats = calibrated(ResidualBlock(pool=True), x)
    net = convert(gm, (1, 8, 8), stats, ConvertOptions(NormSpec.parse("p99.9"), v_init=0.5))
    q, _ = quantize(net, Formats(), input_max=1.0, timesteps=STEPS, weight_scale="channel")
    assert any(np.unique(n.v_threshold).size > 1 for n in q.nodes.values() if isinstance(n, IF))
    payload = encode_input(q, x[:2].numpy(), STEPS)
    for fast in (False, True):
        _assert_same(q, payload, run_lava(q, payload.numpy(), fast=fast), exact=True)


@pytest.mark.parametrize("encoding,reset,burst", [("analog", "subtract", 1), ("poisson", "snm", 2)])
def test_delay_lines_are_bit_exact(encoding, reset, burst):
    # delayed synapses (--align): the shortcut into the residual join, the input into the
    # first layer (analog: a constant current) and a Dense into the readout, each its own delay
    net = graded(conv_net(encoding, "subtract"), reset, burst=burst)
    payload = encode_input(net, _inputs(net), STEPS, seed=3)
    plain = simulate(net, payload).readout[STEPS]
    for i, delay in ((0, 1), (3, 2), (6, 3)):
        net.synapses[i].delay = delay
    assert not torch.equal(simulate(net, payload).readout[STEPS], plain)
    for fast in (False, True):
        _assert_same(net, payload, run_lava(net, payload.numpy(), fast=fast), exact=True)
    assert len(build(net, payload.numpy()).delays) == 3


@pytest.mark.parametrize("steps", [1, 7, 128, 1000, 2**20])
def test_packed_counts_round_trip_through_float64(steps):
    """The fused model's counts Var is packed (Lava's get sends one float64 message per
    element): every count from 0 to ``steps`` comes back, in fewer words."""
    from lavaconv.lava.dynamics import pack_counts, unpack_counts

    counts = np.random.default_rng(steps).integers(0, steps + 1, 1001)
    counts[:2] = 0, steps
    words = pack_counts(counts, steps).astype(np.float64)  # as Lava's messages carry them
    assert words.max() < 2**52 and len(words) <= -(-len(counts) // 2)
    assert np.array_equal(unpack_counts(words, len(counts), steps), counts)
