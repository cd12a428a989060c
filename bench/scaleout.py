"""Items x timesteps per second of `lavaconv eval` with 1 and N torchrun processes.

    .venv/bin/python bench/scaleout.py [--model examples/resnet_fmnist.pt2] [--samples 1000]
        [--timesteps 64] [--procs 1,2] [--device cpu]

Runs the same command under torchrun (gloo on CPU) for each process count and prints a
markdown table: wall seconds, items x timesteps per second, speed-up and speed-up per worker.
Wall time includes start-up, loading and calibration, as a user sees it. The 1-minute load
average before each run and the CPU seconds the run got (all its processes) show how much of
the machine other jobs took.
"""

import argparse
import os
import resource
import subprocess
import sys
import time


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="examples/resnet_fmnist.pt2")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--timesteps", type=int, default=64)
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    rows, base = [], None
    for n in (int(p) for p in args.procs.split(",")):
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}",
               "--master-port", str(29600 + n), "-m", "lavaconv", "eval", args.model,
               "--data", args.data, "--samples", str(args.samples), "--calib-samples", "1000",
               "--timesteps", str(args.timesteps), "--device", args.device, "--quiet"]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n))}
        load = os.getloadavg()[0]
        cpu = _children_cpu()
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        wall = time.perf_counter() - start
        cpu = _children_cpu() - cpu
        rate = args.samples * args.timesteps / wall
        base = base or rate
        speedup = rate / base
        rows.append(f"| {n} | {wall:.1f} | {cpu:.1f} | {load:.2f} | {rate:.0f} | {speedup:.2f} "
                    f"| {speedup / n:.2f} |")
    print(f"model {args.model}, {args.samples} items x T={args.timesteps}, device {args.device}, "
          f"{os.cpu_count()} CPU cores\n")
    print("| processes | wall s | CPU s | load avg before | items x steps / s | speed-up "
          "| per worker |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
