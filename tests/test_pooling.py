"""Max-pool from ReLU units (``--maxpool relu``, lavaconv.conversion.pooling): on spike rates
against numpy's max-pool, and as stock Lava processes against the engine."""

from pathlib import Path

import numpy as np
import pytest

from lavaconv.conversion import ConvertOptions
from lavaconv.conversion.pooling import relu_pools
from lavaconv.cost.profiles import load_profile
from lavaconv.errors import LavaconvError
from lavaconv.ir.network import IF, Conv, Dense, Input, MaxPool, Network, Readout
from lavaconv.lava import run_stock
from lavaconv.quantize.integer import quantize
from lavaconv.sim.engine import encode_input, simulate

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")

pytestmark = pytest.mark.usefixtures("single_thread_torch")


def _pooled_identity(channels: int = 2, side: int = 4) -> Network:
    """input -> IF copy (1x1 identity conv) -> 2x2 max-pool -> identity readout: the readout
    accumulates what the pool sends."""
    pooled = channels * (side // 2) ** 2
    nodes = {"x": Input((channels, side, side), x_max=1.0),
             "c": IF((channels, side, side), np.zeros(()), v_init=np.asarray(0.5)),
             "p": MaxPool((channels, side // 2, side // 2), "c", (2, 2), (2, 2)),
             "out": Readout((pooled,), np.zeros(()), t_start=2)}
    eye = np.eye(channels)[:, :, None, None]
    return Network(nodes, [Conv("x", "c", eye, (1, 1), (0, 0)),
                           Dense("p", "out", np.eye(pooled))])


def test_relu_pool_sends_the_largest_rate():
    """Constant rates a, b, c, d in a window: what the two IF layers send adds up to
    T * max(a, b, c, d) within a few spikes (the units' residues), for every window."""
    net = relu_pools(_pooled_identity(), v_init=0.5)
    assert not any(isinstance(n, MaxPool) for n in net.nodes.values())
    assert net.nodes["p.diff"].shape == (8, 2, 2) and net.nodes["p.max"].shape == (4, 2, 2)
    assert net.depth() == 4  # x -> c -> diff -> max -> out
    x = np.random.default_rng(0).uniform(0, 1, (16, 2, 4, 4))
    steps = 400
    res = simulate(net, encode_input(net, x, steps), [steps])
    largest = x.reshape(16, 2, 2, 2, 2, 2).max(axis=(3, 5)).reshape(16, -1)
    window = steps - net.depth()  # steps in which the readout receives the pool's output
    got = res.readout[steps].numpy() / window
    np.testing.assert_allclose(got, largest, atol=3 / window)
    second = np.sort(x.reshape(16, 2, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5)
                     .reshape(16, 8, 4), axis=2)[:, :, -2]
    assert np.abs(got - second).max() > 0.1  # not some other order statistic


def test_relu_pool_refuses_other_windows():
    net = _pooled_identity()
    net.nodes["p"] = MaxPool((2, 1, 1), "c", (3, 3), (3, 3))
    with pytest.raises(LavaconvError, match="max-pool p: ReLU units build 2x2"):
        relu_pools(net)


def test_relu_pool_as_stock_processes_is_bit_exact_with_the_engine():
    """The pool's units on the stock LIF graph (Lava's own bit-accurate models) spike for
    spike as the engine computes them."""
    net = relu_pools(_pooled_identity(), v_init=0.5)
    q, _ = quantize(net, load_profile("loihi2").formats, timesteps=32, stock=True)
    x = np.random.default_rng(1).uniform(0, 1, (2, 2, 4, 4))
    payload = encode_input(q, x, 32)
    eng = simulate(q, payload)
    res = run_stock(q, payload.numpy(), fast=False)  # Lava's own models, one process each
    for name, counts in eng.spike_counts.items():
        assert np.array_equal(counts.numpy(), res.spike_counts[name]), name
    assert eng.spike_counts["p.diff"].sum() > 0 and eng.spike_counts["p.max"].sum() > 0
    assert np.array_equal(eng.readout[32].numpy(), res.readout)
    assert all(c.startswith("lava.proc.") for c in res.process_classes)


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not installed")
def test_vgg_with_relu_pools_is_a_stock_graph():
    from lavaconv.app.deploy import DeployConfig, choose_graph
    from lavaconv.app.session import RunConfig, prepare
    from lavaconv.lava.stock import describe

    prep = prepare(RunConfig(ROOT / "examples" / "vgg_fmnist.pt2", "fashion-mnist", samples=8,
                             calib_samples=64, options=ConvertOptions(maxpool="relu"),
                             progress=False))
    assert choose_graph(prep.net, DeployConfig(target="loihi2"))
    net, _ = prep.integer("loihi2", 64, stock=True)
    found = describe(net)["process_classes"]
    assert all(c.startswith(("lava.proc.", "lava.lib.dl.")) for c in found)
    assert found["lava.proc.conv.process.Conv"] >= 2 * 2  # each pool: two grouped convs


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not installed")
def test_loihi2_refuses_a_max_pool_gate_before_calibration(tmp_path, capsys, monkeypatch):
    from lavaconv.app import cli, session

    def no_calibration(*_args, **_kwargs):
        raise AssertionError("calibrated before refusing")

    monkeypatch.setattr(session, "build", no_calibration)
    code = cli.main(["deploy", str(ROOT / "examples" / "vgg_fmnist.pt2"), "--data",
                     "fashion-mnist", "--target", "loihi2", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and not (tmp_path / "o").exists()
    assert "max-pool needs lavaconv's MaxPoolGate" in err[0] and "--maxpool relu" in err[0]
