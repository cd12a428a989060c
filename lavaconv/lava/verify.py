"""The bit-exactness verdict: a network run on Lava against the integer engine, spike for spike."""

from __future__ import annotations

import time

import numpy as np

from lavaconv.ir.network import Network
from lavaconv.lava.run import LavaResult, run_lava
from lavaconv.sim.engine import SimResult, encode_input, readout_scores, simulate, state_bounds


def compare(net: Network, engine: SimResult, lava: LavaResult) -> list[str]:
    """Populations (and the readout) whose Lava results differ from the engine's."""
    bad = [name for name, counts in engine.spike_counts.items()
           if not np.array_equal(counts.cpu().numpy(), lava.spike_counts[name])]
    steps = max(engine.readout)
    out = net.nodes[net.output_name]
    expected = engine.readout[steps]
    if out.mode == "softmax":  # classes are sampled off-chip from v: Lava's part is v
        expected = readout_scores(out, engine.readout_input, [steps], state_bounds(net, out),
                                  "potential")[0][steps]
    if not np.array_equal(expected.cpu().numpy(), lava.readout):
        bad.append(net.output_name)
    return bad


def check(net: Network, x: np.ndarray, steps: int, *, seed: int = 0, target: str = "sim",
          progress: bool = False) -> dict:
    """Run ``x`` through Lava and the engine on the same payload; what ``report.json`` keeps
    under ``lava`` (``bit_exact``, ``mismatched``, speeds)."""
    payload = encode_input(net, x, steps, seed=seed)
    engine = simulate(net, payload)
    t0 = time.perf_counter()
    simulate(net, payload[:, :1])  # one item, as Lava runs them: the like-for-like speed
    engine_seconds = (time.perf_counter() - t0) / steps
    lava = run_lava(net, payload.numpy(), tag="fixed_pt", target=target, progress=progress)
    bad = compare(net, engine, lava)
    return {
        "bit_exact": not bad,
        "mismatched": bad,
        "samples": len(x),
        "timesteps": steps,
        "seconds_per_step": lava.seconds_per_step,
        "startup_seconds": lava.startup_seconds,
        "engine_batch1_seconds_per_step": engine_seconds,
        "target": target,
    }
