"""The engine's CPU kernels (lavaconv/sim/kernels.py) against its torch loops, which implement
the same update equations operation by operation: identical trains, readouts and counts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lavaconv.ir.network import IF, Conv, Dense, Input, Network, Readout
from lavaconv.sim import engine


def network(numeric: str, reset: str, burst: int = 1, floor: bool = True,
            per_channel: bool = False) -> Network:
    """Analog 1x9x9 input -> 3x3 conv (4 channels, 16-bit state in int mode: it saturates) ->
    stride-2 conv (3 channels, padded) -> dense readout, random weights; thresholds per
    channel when ``per_channel``."""
    rng = np.random.default_rng(7)
    integer = numeric == "int"

    def weights(*shape):
        w = rng.normal(0, 0.6, shape)
        return np.round(w * 40) if integer else w

    def population(shape, a_exp):
        channels = shape[0]
        vth = (rng.uniform(0.5, 1.5, (channels, 1, 1)) if per_channel else np.ones(()))
        bias = rng.normal(0, 0.05, (channels, 1, 1))
        v_init = rng.uniform(0, 0.5, (channels, 1, 1))
        if integer:
            unit = 2 ** 12 if reset == "lif" else 2 ** 9
            vth, bias, v_init = (np.round(vth * unit), np.round(bias * unit),
                                 np.round(v_init * unit))
        return IF(shape, bias, vth, reset, t_start=1, a_exp=a_exp, v_init=v_init,
                  burst=burst, floor=floor, state_bits=16 if shape[0] == 4 else 24)

    nodes = {"x": Input((1, 9, 9), payload_bits=8 if integer else 0),
             "c1": population((4, 9, 9), -1), "c2": population((3, 5, 5), 0),
             "output": Readout((5,), np.zeros(5), t_start=3)}
    synapses = [Conv("x", "c1", weights(4, 1, 3, 3), padding=(1, 1)),
                Conv("c1", "c2", weights(3, 4, 3, 3), stride=(2, 2), padding=(1, 1)),
                Dense("c2", "output", weights(5, 75))]
    return Network(nodes, synapses, numeric=numeric)


CASES = [("float", "subtract", 1, True, False), ("float", "zero", 1, True, True),
         ("float", "snm", 1, True, False), ("float", "subtract", 3, True, True),
         ("int", "subtract", 1, True, True), ("int", "zero", 1, True, False),
         ("int", "snm", 2, True, False), ("int", "subtract", 3, True, False),
         ("int", "lif", 1, True, False), ("int", "lif", 1, False, True)]


@pytest.mark.parametrize("numeric, reset, burst, floor, per_channel", CASES)
def test_kernels_equal_the_torch_loops(monkeypatch, numeric, reset, burst, floor, per_channel):
    net = network(numeric, reset, burst, floor, per_channel)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (6, 1, 9, 9)) * (60 if numeric == "int" else 1)
    payload = engine.encode_input(net, x, 30)
    trains = {}

    def probe(name, current, train):
        trains[name] = train.clone()

    fast = engine.simulate(net, payload, [10, 30], probe=probe, counts_at=True)
    fast_trains, trains = trains, {}
    monkeypatch.setattr(engine, "CHUNK_SIZE", 700)  # chunks of a few steps and items (2 items
    monkeypatch.setattr(engine, "STATE_SIZE", 700)  # in c1, 9 in c2): state carried over
    chunked = engine.simulate(net, payload, [10, 30], counts_at=True)
    monkeypatch.setattr(engine, "KERNELS", False)
    slow = engine.simulate(net, payload, [10, 30], probe=probe, counts_at=True)
    assert set(fast_trains) == {"c1", "c2"}
    for name, train in trains.items():
        assert torch.equal(fast_trains[name], train), name  # the probe's float32 trains
    assert sum(float(t.abs().sum()) for t in trains.values()) > 0  # the layers spiked
    for result in (fast, chunked):
        for t in (10, 30):
            assert torch.equal(result.readout[t], slow.readout[t])
            assert result.spikes_at[t] == slow.spikes_at[t]
            for name, counts in slow.counts_at[t].items():
                assert torch.equal(result.counts_at[t][name], counts)
        assert result.saturated == slow.saturated
    assert (slow.saturated["c1"] > 0) == (numeric == "int")  # v saturated, u wrapped


@pytest.mark.parametrize("numeric, reset", [("float", "subtract"), ("int", "subtract"),
                                            ("int", "lif")])
def test_identity_shortcut_added_by_the_kernels_equals_the_torch_loops(monkeypatch, numeric,
                                                                       reset):
    """A residual population: a 3x3 convolution plus a per-channel scale of the block's input
    (an identity shortcut), which the CPU kernels add from the byte train themselves; the torch
    loops (float trains) convolve it as a synapse of its own. IF and the stock LIF pair."""
    rng = np.random.default_rng(5)
    integer = numeric == "int"

    def weights(*shape):
        w = rng.normal(0, 0.6, shape)
        return np.round(w * 40) if integer else w

    unit = (2 ** 12 if reset == "lif" else 2 ** 9) if integer else 1.0
    nodes = {"x": Input((1, 6, 6), payload_bits=8 if integer else 0),
             "a": IF((4, 6, 6), np.zeros(()), np.full((), unit), reset),
             "b": IF((4, 6, 6), np.zeros(()), np.full((), unit), reset),
             "output": Readout((3,), np.zeros(3))}
    shortcut = weights(4, 1, 1, 1)
    synapses = [Conv("x", "a", weights(4, 1, 3, 3), padding=(1, 1)),
                Conv("a", "b", weights(4, 4, 3, 3), padding=(1, 1)),
                Conv("a", "b", shortcut, groups=4), Dense("b", "output", weights(3, 144))]
    net = Network(nodes, synapses, numeric=numeric)
    train = engine._empty((20, 5, 4, 6, 6), torch.zeros(()), torch.uint8)
    fused = engine._Shortcut.of(net, "b", {"a": train}, train)
    assert fused.synapse is synapses[2] and fused.train is train and fused.arrival == 1
    assert torch.equal(fused.scale, torch.as_tensor(shortcut.reshape(4), dtype=torch.float32))
    payload = engine.encode_input(net, rng.uniform(-1, 1, (5, 1, 6, 6)) * (60 if integer else 1),
                                  20)
    fast = engine.simulate(net, payload, [20], counts_at=True)
    probed = engine.simulate(net, payload, [20], counts_at=True,  # the shortcut as a synapse
                             probe=lambda *_: None)
    monkeypatch.setattr(engine, "KERNELS", False)
    slow = engine.simulate(net, payload, [20], counts_at=True)
    for result in (fast, probed):
        assert torch.equal(result.readout[20], slow.readout[20])
        assert torch.equal(result.counts_at[20]["b"], slow.counts_at[20]["b"])
    assert float(slow.counts_at[20]["b"].sum()) > 0


def _summary(numeric: str, reset: str) -> list[float]:
    """Readout and spike counts of :func:`network` on fixed input, as plain numbers."""
    net = network(numeric, reset)
    x = np.random.default_rng(2).uniform(-1, 1, (4, 1, 9, 9)) * (60 if numeric == "int" else 1)
    res = engine.simulate(net, engine.encode_input(net, x, 30), [30], counts_at=True)
    return [*res.readout[30].flatten().tolist(), *res.counts_at[30]["c2"].flatten().tolist(),
            res.saturated["c1"]]


def test_vector_width_changes_no_result():
    """In a fresh process whose user set NUMBA_CPU_FEATURES (LLVM's default tuning: 256-bit
    vectors on AVX-512 CPUs) the kernels keep that setting and compute the same trains as
    here (512-bit vectors where the CPU has them): integer and float32 lanes, LIF pair too.
    Without the setting, importing the kernels first turns 512-bit vectors on (AVX-512)."""
    from numba.core import codegen
    host = codegen.get_host_cpu_features()
    cases = [("float", "subtract"), ("int", "subtract"), ("int", "lif")]
    root = Path(__file__).resolve().parents[1]

    def run(script: str, **env: str) -> str:
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env={**os.environ, **env}, cwd=root, check=True).stdout

    plain = run("import numba; from lavaconv.sim import kernels; "
                "print(kernels.WIDE_VECTORS, numba.config.CPU_FEATURES)")
    assert plain.split()[0] == str("+avx512f" in host.split(","))
    assert ("-prefer-256-bit" in plain) == ("+avx512f" in host.split(","))
    script = f"""
import json, sys
sys.path.insert(0, "tests")
from lavaconv.sim import kernels
from test_kernels import _summary
assert not kernels.WIDE_VECTORS
print(json.dumps([_summary(*case) for case in {cases!r}]))
"""
    assert json.loads(run(script, NUMBA_CPU_FEATURES=host)) == [_summary(*c) for c in cases]
