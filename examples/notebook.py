"""Notebook-style walk through the Python API (run: .venv/bin/python -m examples.notebook).

Converts the bundled ResNet-style model, compares float and integer engines against T, runs
two items on Lava's CPU simulator and checks they match the engine spike for spike.
"""

# %% convert: load, calibrate on training images, normalise (robust 99.9th percentile)
import numpy as np

import lavaconv
from lavaconv.engine import encode_input, simulate

snn = lavaconv.convert("examples/resnet_fmnist.pt2", data="fashion-mnist", samples=500,
                       calib_samples=1000)
print(f"ANN accuracy on 500 test images: {100 * snn.ann_accuracy:.2f} %")

# %% float engine: accuracy against the number of timesteps
print({t: round(100 * a, 2) for t, a in snn.simulate(timesteps=[16, 32, 64, 128]).items()})

# %% integer network for Loihi 2's formats, and its per-layer quantization cost
q = snn.quantize("loihi2", timesteps=64)
print({t: round(100 * a, 2) for t, a in q.simulate(timesteps=[32, 64]).items()})
for layer in q.quantization:
    print(f"{layer.name:>10}: vth {layer.vth_int:>8}, weight error {layer.weight_rel_error:.4f}")

# %% Lava: the same integer network as Lava processes, bit-exact with the engine
lava = q.run_lava(items=2, timesteps=32)
engine = simulate(q.network, encode_input(q.network, snn.dataset.x_eval[:2], 32))
same = all(np.array_equal(engine.spike_counts[k].numpy(), lava.spike_counts[k])
           for k in engine.spike_counts)
print(f"Lava {1e3 * lava.seconds_per_step:.2f} ms per step; identical spikes: {same}")

# %% everything measured so far, as plain data
print(sorted(q.report()))
