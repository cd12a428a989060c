"""Property-based tests: neuron models against closed forms and a plain-Python reference."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lavaconv.ir.fixedpoint import Formats
from lavaconv.ir.network import IF, Dense, Input, Network, Readout
from lavaconv.quantize.integer import quantize
from lavaconv.sim.engine import encode_input, simulate


def single(weight, reset: str, numeric: str = "float", threshold=1.0, a_exp: int = 0,
           bias=0.0, state_bits: int = 24) -> Network:
    nodes = {
        "x": Input((1,), payload_bits=8, gain=1.0),
        "n": IF((1,), np.array([bias]), np.array(threshold), reset, 1, a_exp=a_exp,
                state_bits=state_bits),
        "output": Readout((1,), np.zeros(1), 2),
    }
    return Network(nodes, [Dense("x", "n", np.array([[weight]])),
                           Dense("n", "output", np.array([[1]]))], numeric)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(0, 256), steps=st.integers(1, 300))
def test_soft_reset_count_is_floor_of_integrated_input(k, steps):
    # Rueckauer eq. 6 with V(T) in [0, 1): N = floor(z (T - 1)), z = k / 256 exact in float
    net = single(k / 256, "subtract")
    res = simulate(net, encode_input(net, [[1.0]], steps))
    assert int(res.spike_counts["n"][0, 0]) == (k * (steps - 1)) // 256


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 256), steps=st.integers(1, 300))
def test_hard_reset_fires_every_ceil_inverse_eta_steps(k, steps):
    # RMP eq. 3: one spike every ceil(1 / eta) steps, eta = k / 256
    net = single(k / 256, "zero")
    res = simulate(net, encode_input(net, [[1.0]], steps))
    assert int(res.spike_counts["n"][0, 0]) == (steps - 1) // math.ceil(256 / k)


def reference_int(payload: list[int], w: int, a_exp: int, bias: int, vth: int, reset: str,
                  bits: int) -> int:
    """The integer neuron of docs/design.md, written with Python ints only."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    v, count = 0, 0
    for t in range(len(payload)):
        a = w * payload[t - 1] if t >= 1 else 0
        shift = 6 + a_exp
        u = a << shift if shift >= 0 else a >> -shift  # Python's >> floors, as the design says
        v = min(max(v + u + (bias if t >= 1 else 0), lo), hi)
        if v >= vth:
            count += 1
            v = v - vth if reset == "subtract" else 0
    return count


@settings(max_examples=80, deadline=None)
@given(x=st.integers(-127, 127), w=st.integers(-128, 127), a_exp=st.integers(-9, 3),
       bias=st.integers(-5000, 5000), vth=st.integers(1, 2**17 - 1),
       reset=st.sampled_from(["subtract", "zero"]), bits=st.sampled_from([16, 24]),
       steps=st.integers(1, 80))
def test_int_neuron_matches_plain_integer_reference(x, w, a_exp, bias, vth, reset, bits, steps):
    net = single(2 * w, reset, "int", vth << 6, a_exp, bias, bits)
    res = simulate(net, encode_input(net, [[float(x)]], steps))
    expected = reference_int([x] * steps, 2 * w, a_exp, bias, vth << 6, reset, bits)
    assert int(res.spike_counts["n"][0, 0]) == expected


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 50), bias=st.floats(-2, 2))
def test_quantizer_grid_and_rounding(seed, scale, bias):
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(4, 3)) * scale
    nodes = {"x": Input((3,)), "h": IF((4,), np.full(4, bias)),
             "output": Readout((2,), np.zeros(2), 2)}
    net = Network(nodes, [Dense("x", "h", w1), Dense("h", "output", rng.normal(size=(2, 4)))])
    fmt = Formats()
    q, report = quantize(net, fmt, input_max=1.0, timesteps=64)
    h = q.nodes["h"]
    w_int = q.synapses[0].weight
    assert np.all(w_int % 2 == 0) and np.abs(w_int).max() <= 254
    assert 1 <= int(h.v_threshold) >> 6 <= 2**fmt.threshold_mant_bits - 1
    # W_int * 2**(6 + a_exp) approximates W_unit * vth_int within half a grid step
    gain = 2.0 ** (6 + h.a_exp)
    w_unit = w1 / q.nodes["x"].gain
    err = np.abs(w_int * gain - w_unit * int(h.v_threshold))
    assert np.all(err <= gain + 1e-6 * np.abs(w_unit * int(h.v_threshold)).max())
    # biases lie on the mantissa x 2**exp grid
    exp = report[0].bias_exp
    assert np.all(h.bias % (2**exp) == 0)
    assert np.abs(h.bias // 2**exp).max(initial=0) <= 2 ** (fmt.bias_mant_bits - 1) - 1
