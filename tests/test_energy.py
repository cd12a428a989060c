"""Energy: SOPs against a recount by convolving spike maps, prices against the papers' figures,
and the ``lavaconv energy`` command against MACs counted with torch forward hooks."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lavaconv.app import cli
from lavaconv.cost.counting import LayerCount
from lavaconv.cost.energy import (
    DEFAULT_ANN_PROFILES,
    DEFAULT_SNN_PROFILES,
    neuron_updates,
    population_counts,
    profiles_of,
    summarize,
)
from lavaconv.ir.network import IF, Conv, Dense, Input, MaxPool, Network, Readout
from lavaconv.sim.engine import encode_input, simulate
from lavaconv.sim.evaluation import measure_activity

CHECKPOINTS = [3, 7, 12]


@pytest.fixture(scope="module")
def net() -> Network:
    """Conv with zero weights, max-pool gate, strided conv, two synapses into one population,
    dense readout with zero weights: every case of the fan-out; "b" sends graded spikes."""
    rng = np.random.default_rng(0)
    w1 = rng.uniform(0.0, 0.6, (3, 1, 3, 3)) * (rng.random((3, 1, 3, 3)) > 0.3)
    w2 = rng.uniform(-0.2, 0.5, (4, 3, 3, 3))
    w3 = rng.uniform(-0.2, 0.5, (4, 3, 1, 1))
    w4 = rng.uniform(-0.5, 0.5, (5, 36)) * (rng.random((5, 36)) > 0.5)
    return Network({
        "x": Input((1, 6, 6)),
        "a": IF((3, 6, 6), np.full((3, 1, 1), 0.05), t_start=1),
        "p": MaxPool((3, 3, 3), "a", (2, 2), (2, 2)),
        "b": IF((4, 3, 3), np.full((4, 1, 1), 0.02), t_start=2, payload=np.full((4, 1, 1), 0.7)),
        "output": Readout((5,), np.zeros(5), t_start=3),
    }, [Conv("x", "a", w1, padding=(1, 1)), Conv("p", "b", w2, padding=(1, 1)),
        Conv("a", "b", w3, stride=(2, 2)), Dense("b", "output", w4)])


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.random((5, 1, 6, 6)) * (rng.random((5, 1, 6, 6)) > 0.4)).astype(np.float32)


@pytest.fixture(scope="module")
def activity(net, x):
    return measure_activity(net, x, CHECKPOINTS, batch_size=2, progress=False)


def _recount(syn, counts: np.ndarray) -> float:
    """Synaptic events through ``syn`` by convolving the spike-count map with the non-zero
    pattern of the kernel (or multiplying by the dense one)."""
    mask = torch.from_numpy(np.asarray(syn.weight) != 0).double()
    c = torch.from_numpy(np.asarray(counts, dtype=np.float64))
    if isinstance(syn, Dense):
        return float((mask @ c.flatten()).sum())
    return float(F.conv2d(c[None], mask, stride=syn.stride, padding=syn.padding).sum())


def test_checkpoint_counts_are_the_prefix_of_one_run(net, x, activity):
    full = simulate(net, encode_input(net, x, CHECKPOINTS[-1]), CHECKPOINTS)
    for t in CHECKPOINTS:
        for name, counts in activity.spike_counts[t].items():
            assert counts.sum() == pytest.approx(full.spikes_at[t][name]), (t, name)
    for name, counts in full.spike_counts.items():
        np.testing.assert_array_equal(activity.spike_counts[CHECKPOINTS[-1]][name],
                                      counts.sum(0).numpy())


def test_synops_equal_recount_by_convolving_spike_maps(net, x, activity):
    for t in CHECKPOINTS:
        synops, per_pop = population_counts(net, activity, t)
        assert activity.spike_counts[t]["a"].sum() > 0 and activity.spike_counts[t]["p"].sum() > 0
        # analog input: every non-zero pixel is sent at every step
        np.testing.assert_array_equal(activity.input_events[t], t * (x != 0).sum(axis=0))
        for syn, count in zip(net.synapses, synops, strict=True):
            src = activity.input_events[t] if syn.source == "x" else \
                activity.spike_counts[t][syn.source]
            assert count.ops * len(x) == pytest.approx(_recount(syn, src), rel=1e-12)
            assert count.graded == (syn.source in ("x", "b"))
        into_b = [c.ops for s, c in zip(net.synapses, synops, strict=True) if s.target == "b"]
        assert per_pop["b"]["synaptic_op"] == pytest.approx(sum(into_b))
        assert per_pop["a"]["input_macs"] == per_pop["a"]["synaptic_op"] > 0
        assert per_pop["output"]["input_macs"] == 0
        assert per_pop["b"]["spike_in_tile"] * len(x) == pytest.approx(
            activity.spike_counts[t]["p"].sum() + activity.spike_counts[t]["a"].sum())


def test_neuron_updates_every_step_active_from_t_start(net):
    ups = neuron_updates(net, 7)
    assert ups == {"a": (108 * 6, 108 * 1), "b": (36 * 5, 36 * 2), "output": (5 * 4, 5 * 3)}


@pytest.fixture(scope="module")
def summary(net, activity):
    ann = [LayerCount("conv", "conv", 1.5e6), LayerCount("fc", "linear", 2e3)]
    return summarize(ann, profiles_of(DEFAULT_ANN_PROFILES, "ann"), net, activity,
                     profiles_of(DEFAULT_SNN_PROFILES, "neuromorphic"))


def test_prices_follow_the_published_figures(net, activity, summary):
    macs = 1.502e6
    fpga, horowitz = (summary["per_profile"][n]["total_j"] for n in DEFAULT_ANN_PROFILES)
    assert fpga == pytest.approx(2 * macs * 12.5e-12)  # 80 GFLOPS/W, 2 FLOPs per MAC
    assert horowitz == pytest.approx(macs * 4.6e-12)
    for t in CHECKPOINTS:
        _, per_pop = population_counts(net, activity, t)
        total = {k: sum(p[k] for p in per_pop.values()) for k in
                 ("synaptic_op", "neuron_update_active", "neuron_update_inactive",
                  "spike_in_tile", "input_macs")}
        loihi = summary["per_profile"]["loihi1"]["by_t"][t]  # Davies 2018 Table 2
        assert loihi["synaptic_j"] == pytest.approx(total["synaptic_op"] * 23.6e-12)
        assert loihi["neuron_j"] == pytest.approx(total["neuron_update_active"] * 81e-12
                                                  + total["neuron_update_inactive"] * 52e-12)
        assert loihi["total_j"] == pytest.approx(loihi["synaptic_j"] + loihi["neuron_j"]
                                                 + total["spike_in_tile"] * 1.7e-12)
        rolls = summary["per_profile"]["rolls"]["by_t"][t]
        assert rolls["neuron_j"] is None and rolls["total_j"] == pytest.approx(
            total["synaptic_op"] * 77e-15)
        truenorth = summary["per_profile"]["truenorth"]["by_t"][t]  # all-in: stands alone
        assert truenorth["neuron_j"] is None and truenorth["total_j"] == pytest.approx(
            total["synaptic_op"] * 26e-12)
        assert summary["ratios"]["stratix10tx-fpga/rolls"][t] == pytest.approx(
            fpga / rolls["total_j"])
        b, c = total["synaptic_op"], total["input_macs"]
        assert summary["snm_eq15"]["snn_over_ann"][t] == pytest.approx(
            (c * 4.6 + (b - c) * 0.9) / (macs * 4.6))
    assert any(line.startswith("Graded spikes") for line in summary["assumptions"])
    assert summary["snn_graded_synops"][12] > summary["snn_input_macs"][12]  # "b" is graded
    assert summary["per_profile"]["loihi2"]["status"] == "no public figure"
    assert "stratix10tx-fpga/loihi2" not in summary["ratios"]


def test_user_profile_fills_loihi2(tmp_path, net, activity):
    path = tmp_path / "my-loihi2.yaml"
    path.write_text("extends: loihi2\nsources: {mine: my measurement}\nenergy:\n"
                    "  synaptic_op: {value: 10, unit: pJ, source: mine, kind: measured, "
                    "scope: per-term}\n")
    out = summarize([LayerCount("fc", "linear", 10.0)], [], net, activity,
                    profiles_of([str(path)], "neuromorphic"))
    e = out["per_profile"]["my-loihi2"]["by_t"][3]
    assert e["neuron_j"] is None and e["total_j"] == pytest.approx(
        out["snn_synops"][3] * 10e-12)


def test_profile_on_the_wrong_side_is_refused():
    with pytest.raises(Exception, match="rolls is neuromorphic"):
        profiles_of(["rolls"], "ann")


def _hook_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """MACs from forward hooks: output elements times the kernel's input size."""
    total = []

    def hook(module, _, out):
        per_out = module.weight[0].numel()
        total.append(out.numel() * per_out)

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    return sum(total)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6 * 3 * 3, 3)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv(x))))
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small model exported to .pt2 and an npz of items for it."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny")
    model = Tiny().eval()
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x=rng.random((30, 1, 6, 6)).astype(np.float32),
             y=rng.integers(0, 3, 30))
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 6, 6),)),
                      root / "tiny.pt2")
    return model, root


def test_energy_command_on_a_model_file(tiny, capsys):
    model, root = tiny
    model_file = str(root / "tiny.pt2")
    assert cli.main(["energy", model_file, "--input-shape", "1,6,6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ann_macs"] == _hook_macs(model, (1, 6, 6))
    assert set(out["per_profile"]) == set(DEFAULT_ANN_PROFILES)
    assert cli.main(["energy", model_file]) == 2
    assert "--input-shape" in capsys.readouterr().err


def test_energy_command_on_a_converted_network(tiny, capsys):
    model, root = tiny
    data, net_dir, page = root / "data.npz", root / "net", root / "energy.html"
    assert cli.main(["convert", str(root / "tiny.pt2"), "--data", str(data), "--quiet",
                     "--out", str(net_dir)]) == 0
    capsys.readouterr()
    assert cli.main(["energy", str(net_dir), "--data", str(data), "--timesteps", "4,8",
                     "--samples", "6", "--quiet", "--json", "--html", str(page)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ann_macs"] == _hook_macs(model, (1, 6, 6))
    assert out["items"] == 6 and set(out["snn_synops"]) == {"4", "8"}
    assert out["snn_synops"]["8"] > out["snn_synops"]["4"] > 0
    assert out["per_profile"]["loihi1"]["by_t"]["8"]["neuron_j"] > 0
    assert page.read_text().count('src="data:image/png;base64,') == 2
    assert cli.main(["energy", str(net_dir), "--timesteps", "4"]) == 2
    assert "--data" in capsys.readouterr().err
