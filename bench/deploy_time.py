"""`deploy` end to end against the dense limit (issue 20), measured in one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/deploy_time.py [--model examples/resnet_fmnist.pt2]
                                   [--items 1000] [--timesteps 128] [--lava-samples 4]

Times the whole of ``lavaconv deploy`` in this process (loading, ANN accuracy, calibration and
conversion, float and integer evaluation, energy, the Lava check, the report; ``--target sim``,
so the graph is the CLI's default choice), then the dense limit on the same items: T forwards
of the ANN (its canonical graph, BatchNorm folded) per item, batched as the engine batches.
Prints the wall time of each part (the report's ``seconds``) and deploy / dense limit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lavaconv.app.deploy import DeployConfig, run_deploy  # noqa: E402
from lavaconv.app.session import RunConfig, prepare  # noqa: E402
from lavaconv.sim import heap  # noqa: E402
from lavaconv.sim.evaluation import auto_batch  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "examples" / "resnet_fmnist.pt2"))
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--timesteps", type=int, default=128)
    ap.add_argument("--lava-samples", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    heap.keep_freed_memory()  # as the CLI does
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "deploy"
        start = time.perf_counter()
        prep = prepare(RunConfig(args.model, "fashion-mnist", samples=args.items,
                                 progress=False))
        code = run_deploy(prep, DeployConfig(timesteps=args.timesteps, out=out,
                                             lava_samples=args.lava_samples))
        deploy = time.perf_counter() - start
        report = json.loads((out / "report.json").read_text())
    x, steps = prep.dataset.x_eval, args.timesteps
    batch = auto_batch(prep.net, steps)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[i:i + batch])
            for _ in range(steps):
                prep.model.graph_module(xb)
    dense = time.perf_counter() - start
    print(f"model {Path(args.model).name}, {len(x)} items, T = {steps}, graph "
          f"{report['graph']}, deploy exit {code}, bit-exact {report['lava']['bit_exact']}")
    print("deploy parts (s): " + ", ".join(f"{k} {v:.1f}" for k, v in
                                           report.get("seconds", {}).items()))
    print(f"deploy {deploy:.1f} s; dense limit {dense:.1f} s (T forwards per item, batch "
          f"{batch}); deploy / dense limit = {deploy / dense:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
