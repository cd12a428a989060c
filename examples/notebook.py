"""Notebook-style walk through the Python API on the bundled ResNet and Fashion-MNIST.

    OMP_NUM_THREADS=1 .venv/bin/python -m examples.notebook     # from the repository root

It takes about 45 s on one thread of a shared 2-core machine. There, leave OMP_NUM_THREADS=1:
torch's two threads contending with other jobs made the same run 160 s.

The ``# %%`` markers are cells (VS Code, Jupytext, Spyder); each cell can be run on its own in
order. Needs the Fashion-MNIST IDX files (Debian's dataset-fashion-mnist). Set
``LAVACONV_NOTEBOOK_ITEMS`` to evaluate on fewer test items (the test suite uses 16).

Steps: convert the ANN (calibrate on training images, robust 99.9th-percentile normalisation,
reset by subtraction, analog input, v_init 0.5: the CLI's defaults), accuracy of the float
engine against T, the integer network on Loihi 2's formats, energy per inference on published
hardware figures, two items on Lava's CPU simulator checked spike for spike against the engine.
"""

# %% setup: how many test items to evaluate (calibration uses twice as many training items)
import os

import numpy as np

import lavaconv
from lavaconv.sim.engine import encode_input, simulate

ITEMS = int(os.environ.get("LAVACONV_NOTEBOOK_ITEMS", "200"))


def percent(acc: dict[int, float]) -> dict[int, float]:
    """{T: accuracy} in % with two decimals."""
    return {t: round(100 * a, 2) for t, a in acc.items()}


# %% convert: load the torch.export archive, calibrate, normalise, build the spiking network
snn = lavaconv.convert("examples/resnet_fmnist.pt2", data="fashion-mnist", samples=ITEMS,
                       calib_samples=2 * ITEMS)
print(f"ANN accuracy on {ITEMS} test images: {100 * snn.ann_accuracy:.2f} %")

# %% float engine: accuracy against the number of timesteps T (one run, read at each T)
print("float SNN, accuracy % by T:", percent(snn.simulate(timesteps=[16, 32, 64, 128])))

# %% integer network on Loihi 2's fixed-point formats, and what quantization cost per layer
q = snn.quantize("loihi2", timesteps=64)
print("integer SNN, accuracy % by T:", percent(q.simulate(timesteps=[32, 64])))
for layer in q.quantization:
    print(f"{layer.name:>10}: vth {layer.vth_int:>8}, weight error {layer.weight_rel_error:.4f}")

# %% energy per inference: ANN MACs on an FPGA and at 45 nm, SNN spikes on neuromorphic chips
e = q.energy(timesteps=[32, 64], items=min(ITEMS, 50))
print(f"ANN: {e['ann_macs']:,} MACs per image")
for name in e["ann_profiles"]:
    print(f"  {name:>18}: {1e6 * e['per_profile'][name]['total_j']:.2f} uJ")
print(f"SNN at T=64: {e['snn_synops'][64]:,.0f} synaptic operations per image")
for name in e["snn_profiles"]:
    p = e["per_profile"][name]
    cost = (f"{1e6 * p['by_t'][64]['total_j']:.2f} uJ" if p["status"] == "ok"
            else p["status"])
    print(f"  {name:>18}: {cost}")

# %% Lava: the same integer network as Lava processes, bit-exact with the engine
lava = q.run_lava(items=2, timesteps=32)
engine = simulate(q.network, encode_input(q.network, snn.dataset.x_eval[:2], 32))
same = all(np.array_equal(engine.spike_counts[k].numpy(), lava.spike_counts[k])
           for k in engine.spike_counts)
print(f"Lava {1e3 * lava.seconds_per_step:.2f} ms per step; identical spikes: {same}")

# %% everything measured so far, as plain data (JSON-ready); save writes network.json
print("report keys:", sorted(q.report()))
