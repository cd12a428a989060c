"""Streaming activation statistics against numpy on the whole data."""

import numpy as np
import pytest
import torch
from torch import nn

from lavaconv.ann.stats import ActivationStats, collect
from lavaconv.errors import LavaconvError

BINS = 2048


def stream(data: np.ndarray, batch: int = 37) -> ActivationStats:
    stats = ActivationStats(BINS)
    for i in range(0, len(data), batch):
        stats.update(torch.from_numpy(data[i:i + batch]))
    return stats


def width(values: np.ndarray) -> float:
    """Bin width of the documented range rule: [0, 2**e) with 2**(e-1) <= max < 2**e."""
    return 2.0 ** np.frexp(values.max())[1] / BINS


def positive(data: np.ndarray, channel: int | None = None) -> np.ndarray:
    x = np.abs(data if channel is None else data[:, channel])
    return x[x > 0]


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(1000, 3, 4, 4)), 0) * np.array([1.0, 5.0, 0.01])[:, None, None]
    x[500:, 0] *= 40  # channel 0's range grows mid-stream
    return x


@pytest.mark.parametrize("p", [50, 99, 99.9, 99.99])
def test_percentile_per_channel_within_one_bin(data, p):
    got = stream(data).percentile(p, per_channel=True)
    assert got.shape == (3,)
    for c in range(3):
        values = positive(data, c)
        exact = np.percentile(values, p, method="inverted_cdf")
        assert exact <= got[c] <= exact + width(values)


@pytest.mark.parametrize("p", [50, 99.9])
def test_percentile_per_layer_pools_all_channels(data, p):
    got = float(stream(data).percentile(p, per_channel=False))
    values = positive(data)
    exact = np.percentile(values, p, method="inverted_cdf")
    assert exact <= got <= exact + width(values)


def test_percentile_excludes_zeros():
    x = np.zeros((100, 1))
    x[:10, 0] = np.arange(1, 11)  # 90 % zeros: the median of the non-zero values is 5
    got = float(stream(x).percentile(50, per_channel=False))
    assert 5 <= got <= 5 + 16 / BINS


def test_max_is_exact_and_p100_is_max(data):
    stats = stream(data)
    np.testing.assert_array_equal(stats.max(per_channel=True), data.max(axis=(0, 2, 3)))
    assert float(stats.max(per_channel=False)) == data.max()
    assert float(stats.percentile(100, per_channel=False)) == data.max()


def test_absolute_values_and_vector_shape():
    x = np.random.default_rng(1).normal(size=(64, 5))
    stats = stream(x, batch=10)
    np.testing.assert_array_equal(stats.max(per_channel=True), np.abs(x).max(axis=0))
    assert stats.channels == 5


def test_merge_equals_one_stream(data):
    whole = stream(data).to_state()
    for split in (1, 300, 999):
        merged = stream(data[:split]).merge(stream(data[split:])).to_state()
        for key in whole:
            np.testing.assert_array_equal(merged[key], whole[key])
    reverse = stream(data[500:]).merge(stream(data[:500])).to_state()
    np.testing.assert_array_equal(reverse["hist"], whole["hist"])
    into_empty = ActivationStats(BINS).merge(stream(data)).to_state()
    np.testing.assert_array_equal(into_empty["hist"], whole["hist"])


@pytest.mark.parametrize("dtype, unit", [(np.float64, 1.0), (np.float32, 1.0), (np.float32, 1e-38)])
def test_range_doubling_keeps_counts(dtype, unit):
    rng = np.random.default_rng(2)
    small = rng.uniform(0, 1e-3, size=(200, 2))
    large = rng.uniform(0, 300, size=(200, 2))
    x = (np.concatenate([small, large]) * unit).astype(dtype)
    state = stream(x, batch=50).to_state()
    for c in range(2):
        v = x[:, c][x[:, c] > 0]
        hi = width(v) * BINS
        direct = np.bincount(np.floor(v.astype(np.float64) * BINS / hi).astype(int), minlength=BINS)
        np.testing.assert_array_equal(state["hist"][c], direct)
    assert state["hist"].sum() == np.count_nonzero(x)


def test_state_size_does_not_grow(data):
    one = stream(data[:37]).to_state()
    many = stream(np.concatenate([data] * 3)).to_state()
    assert {k: v.nbytes for k, v in one.items()} == {k: v.nbytes for k, v in many.items()}
    back = ActivationStats.from_state(many)
    stats = stream(np.concatenate([data] * 3))
    np.testing.assert_array_equal(back.percentile(99.9, True), stats.percentile(99.9, True))


def test_dead_channel_is_zero():
    x = np.zeros((10, 2, 3))
    x[:, 1] = 2.0
    stats = stream(x)
    assert stats.max(per_channel=True).tolist() == [0, 2]
    assert stats.percentile(99, per_channel=True).tolist() == [0, 2]
    assert float(stream(np.zeros((4, 2))).percentile(99.9, per_channel=False)) == 0


def test_bad_arguments():
    stats = ActivationStats(BINS)
    with pytest.raises(ValueError, match="no activations"):
        stats.max(per_channel=False)
    stats.update(torch.ones(2, 3))
    for p in (0, 100.5):
        with pytest.raises(ValueError, match="percentile"):
            stats.percentile(p, per_channel=False)
    with pytest.raises(ValueError, match="channels"):
        stats.update(torch.ones(2, 4))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_collect_matches_direct_computation():
    torch.manual_seed(0)
    model = Tiny().eval()
    gm = torch.fx.symbolic_trace(model)
    relu = next(n.name for n in gm.graph.nodes if n.target is torch.relu)
    x = torch.randn(50, 1, 6, 6)
    seen = []
    stats = collect(gm, [x[:20], x[20:45], x[45:]], ["x", relu], on_batch=seen.append)
    assert seen == [20, 25, 5]
    with torch.no_grad():
        direct = {"x": x, relu: torch.relu(model.conv(x))}
    for name, value in direct.items():
        expected = ActivationStats()
        expected.update(value)
        for key, array in expected.to_state().items():
            np.testing.assert_array_equal(stats[name].to_state()[key], array)
    np.testing.assert_allclose(stats[relu].max(True), direct[relu].amax(dim=(0, 2, 3)).numpy())


def test_collect_errors_name_the_node():
    gm = torch.fx.symbolic_trace(Tiny())
    with pytest.raises(LavaconvError, match="'nope'"):
        collect(gm, [torch.zeros(1, 1, 6, 6)], ["nope"])
    with pytest.raises(LavaconvError, match="'x'.*NaN"):
        collect(gm, [torch.full((1, 1, 6, 6), float("nan"))], ["x"])
