"""Lava CPU simulation speed (issue 6): Lava's stock models vs the fused model vs the engine.

    .venv/bin/python bench/lava_speed.py [--model examples/vgg_fmnist.pt2] [--timesteps 64]
                                         [--items 4] [--repeats 2] [--graph ours|stock]

Builds the integer network as ``lavaconv deploy`` does (loihi2 profile), then runs the same
items through Lava in a fresh worker process per run (``fast=False``: the hierarchical process's
sub-process model with Lava's stock Dense/Conv; ``fast=True``: its fused CPU model), while this
process samples the worker's process tree (OS processes, PSS memory). Checks that stock, fast and
the engine agree bit for bit, and that no process is left behind after a run, an injected error
inside a process model, Ctrl-C (SIGINT to the process group) and SIGTERM. Prints markdown tables.

``--graph stock``: the stock LIF graph (docs/design.md section 7) through
:func:`lavaconv.lava.stock.run_stock`, Lava's bit-accurate models one OS process each against the
fused model of them; items run back to back without reset steps. The clean-up cases are left
out there (the fault injection reaches lavaconv's own models only; the run and stop path is the
same :mod:`lavaconv.lava.lifecycle`).
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lavaconv.app import cli, commands  # noqa: E402
from lavaconv.app.session import prepare  # noqa: E402
from lavaconv.sim.engine import encode_input, simulate  # noqa: E402

SAMPLE_SECONDS = 0.2  # process-tree sampling period
READY = "ready"


@dataclass
class Tree:
    """What sampling a worker's process tree saw."""

    seen: dict[int, str] = field(default_factory=dict)  # pid -> start time (from /proc stat)
    processes: int = 0  # most descendants alive at once
    pss_kib: int = 0  # largest sum of PSS over the worker and its descendants


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 3 on (state first)


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in map(int, children):
            found += [child, *_descendants(child)]
    return found


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _sample(pid: int, tree: Tree) -> None:
    kids = _descendants(pid)
    for kid in kids:
        stat = _stat(kid)
        if stat is not None:
            tree.seen.setdefault(kid, stat[19])  # field 22: start time
    tree.processes = max(tree.processes, len(kids))
    tree.pss_kib = max(tree.pss_kib, sum(_pss_kib(p) for p in [pid, *kids]))


def left_behind(tree: Tree, grace: float = 5.0) -> list[int]:
    """Descendants seen while the worker ran that still live (same pid and start time)."""
    deadline = time.monotonic() + grace
    while True:
        alive = [p for p, start in tree.seen.items()
                 if (s := _stat(p)) is not None and s[19] == start and s[0] != "Z"]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


@dataclass
class Job:
    """What a worker runs; ``fail_after`` injects an exception in the n-th potential update."""

    net: object
    payload: np.ndarray
    fast: bool
    result: str
    fail_after: int = 0
    stock: bool = False  # the stock LIF graph (run_stock)


def _cpu_ns(pids: list[int]) -> int:
    """CPU time (ns, from the scheduler's statistics) of every thread of ``pids``."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass
    return total


def _count_cpu(lifecycle, spent: list[int]) -> None:
    """Add to ``spent[0]`` the CPU time this process and Lava's use while timesteps run."""
    advance = lifecycle._advance

    def measured(top, steps: int) -> None:
        pids = [os.getpid(), *_descendants(os.getpid())]
        before = _cpu_ns(pids)
        advance(top, steps)
        spent[0] += _cpu_ns(pids) - before

    lifecycle._advance = measured


def worker(path: str) -> None:
    """Run one job (in a fresh process, like a user's command) and pickle what Lava returned."""
    torch.set_num_threads(1)
    from lavaconv.lava import dynamics, lifecycle, run_lava, run_stock

    with open(path, "rb") as f:
        job: Job = pickle.load(f)
    if job.fail_after:  # Lava forks its processes after this, so they inherit the fault
        integrate, calls = dynamics.integrate, [0]

        def failing(*args) -> None:
            calls[0] += 1
            if calls[0] == job.fail_after:
                raise RuntimeError("fault injected by bench/lava_speed.py")
            integrate(*args)

        dynamics.integrate = failing
    spent = [0]
    _count_cpu(lifecycle, spent)
    print(READY, flush=True)
    start = time.perf_counter()
    if job.stock:
        result = run_stock(job.net, job.payload, fast=job.fast)
        steps = job.payload.shape[1] * job.payload.shape[0]
    else:
        result = run_lava(job.net, job.payload, fast=job.fast)
        steps = job.payload.shape[1] * (job.payload.shape[0] + 1) - 1
    wall = time.perf_counter() - start
    fields = {k: getattr(result, k) for k in ("spike_counts", "readout", "seconds_per_step",
                                              "startup_seconds")}
    with open(job.result, "wb") as f:  # plain data: the caller does not import Lava
        pickle.dump(Result(**fields, wall_seconds=wall, cpu_per_step=spent[0] / 1e9 / steps), f)


@dataclass
class Result:
    """The fields of :class:`lavaconv.lava.LavaResult`, the wall time of ``run_lava`` and the
    CPU seconds per timestep of all processes while timesteps ran (load-independent)."""

    spike_counts: dict[str, np.ndarray]
    readout: np.ndarray
    seconds_per_step: float
    startup_seconds: float
    wall_seconds: float
    cpu_per_step: float


@dataclass
class Outcome:
    tree: Tree
    returncode: int
    stderr: str
    result: Result | None
    left: list[int]


def launch(job: Job, tmp: Path, signum: int | None = None, group: bool = False) -> Outcome:
    """Run ``job`` in a worker, sampling its tree; with ``signum``, send it once Lava's
    processes have been up for two seconds (to its whole process group if ``group``: Ctrl-C)."""
    path = tmp / "job.pkl"
    with open(path, "wb") as f:
        pickle.dump(job, f)
    proc = subprocess.Popen([sys.executable, __file__, "--worker", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    tree = Tree()
    if proc.stdout.readline().strip() != READY:
        proc.wait()
        raise RuntimeError(f"worker failed to start: {proc.stderr.read()}")
    started = None
    while proc.poll() is None:
        _sample(proc.pid, tree)
        if signum is not None and started is None and tree.processes >= 3:
            started = time.monotonic()
        if signum is not None and started is not None and time.monotonic() - started > 2.0:
            (os.killpg if group else os.kill)(proc.pid, signum)
            signum = None
        time.sleep(SAMPLE_SECONDS)
    stderr = proc.stderr.read()
    result = None
    if proc.returncode == 0:
        with open(job.result, "rb") as f:
            result = pickle.load(f)
    return Outcome(tree, proc.returncode, stderr, result, left_behind(tree))


def build_network(model: str, timesteps: int, items: int, stock: bool = False):
    """The integer network and ``items`` evaluation inputs, as ``lavaconv deploy`` builds them
    (``stock``: for the stock LIF graph)."""
    args = cli.parser().parse_args(["deploy", model, "--data", "fashion-mnist", "--quiet",
                                    "--samples", str(items), "--calib-samples", "2000"])
    prep = prepare(commands.run_config(args))
    net, _ = prep.integer(args.profile, timesteps, stock=stock)
    return net, prep.dataset.x_eval[:items]


def engine_batch1(net, payload: torch.Tensor) -> tuple[tuple[float, float], object]:
    """Medians over items of the engine's wall and CPU seconds per timestep at batch size 1
    (1 thread), and the engine's result for all items at once."""
    wall, cpu = [], []
    for k in range(payload.shape[1]):
        start, start_cpu = time.perf_counter(), time.thread_time()
        simulate(net, payload[:, k:k + 1])
        wall.append((time.perf_counter() - start) / payload.shape[0])
        cpu.append((time.thread_time() - start_cpu) / payload.shape[0])
    return (statistics.median(wall), statistics.median(cpu)), simulate(net, payload)


def same(result: Result, engine, steps: int) -> bool:
    counts = all(np.array_equal(c.numpy(), result.spike_counts[n])
                 for n, c in engine.spike_counts.items())
    return counts and np.array_equal(engine.readout[steps].numpy(), result.readout)


ROWS = (("Lava, stock models (`fast=False`)", "stock"), ("Lava, fused model (`fast=True`)", "fast"))


def speed_table(runs: dict[str, list[Outcome]], engine: tuple[float, float]) -> str:
    """Per timestep, the best (least disturbed) run of each mode: wall time, and CPU time of
    all its processes while timesteps ran (what the load of other jobs does not change)."""
    wall = {m: min(o.result.seconds_per_step for o in outs) for m, outs in runs.items()}
    cpu = {m: min(o.result.cpu_per_step for o in outs) for m, outs in runs.items()}
    lines = ["| run | wall ms per timestep | stock / this | this / engine batch 1 "
             "| CPU ms per timestep | stock / this (CPU) |", "|---|---|---|---|---|---|"]
    for label, mode in ROWS:
        lines.append(f"| {label} | {1e3 * wall[mode]:.3f} | {wall['stock'] / wall[mode]:.1f} "
                     f"| {wall[mode] / engine[0]:.1f} | {1e3 * cpu[mode]:.3f} "
                     f"| {cpu['stock'] / cpu[mode]:.1f} |")
    lines.append(f"| engine, batch 1, 1 thread | {1e3 * engine[0]:.3f} "
                 f"| {wall['stock'] / engine[0]:.1f} | 1.0 | {1e3 * engine[1]:.3f} "
                 f"| {cpu['stock'] / engine[1]:.1f} |")
    return "\n".join(lines)


def resource_table(runs: dict[str, list[Outcome]], exact: dict[str, bool], items: int) -> str:
    """``s per item, all in``: run_lava's wall time less start-up, per item (stepping and
    reading the results back through Lava's Var interface)."""
    lines = ["| run | child OS processes | start-up s | s per item, all in "
             "| peak memory (PSS, all processes) MiB | bit-exact with engine |",
             "|---|---|---|---|---|---|"]
    for label, mode in ROWS:
        outs = runs[mode]
        per_item = min((o.result.wall_seconds - o.result.startup_seconds) / items for o in outs)
        lines.append(f"| {label} | {max(o.tree.processes for o in outs)} "
                     f"| {statistics.median(o.result.startup_seconds for o in outs):.2f} "
                     f"| {per_item:.2f} | {max(o.tree.pss_kib for o in outs) / 1024:.0f} "
                     f"| {'yes' if exact[mode] else 'NO'} |")
    return "\n".join(lines)


def cleanup_rows(name: str, outcome: Outcome) -> str:
    return (f"| {name} | {outcome.tree.processes} | {outcome.returncode} "
            f"| {len(outcome.left)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "examples" / "vgg_fmnist.pt2"))
    ap.add_argument("--timesteps", type=int, default=64)
    ap.add_argument("--items", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode (best is reported)")
    ap.add_argument("--graph", choices=["ours", "stock"], default="ours",
                    help="lavaconv's processes (run_lava) or the stock LIF graph (run_stock)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return
    torch.set_num_threads(1)
    stock = args.graph == "stock"
    net, x = build_network(args.model, args.timesteps, args.items, stock)
    payload = encode_input(net, x, args.timesteps)
    engine_times, engine = engine_batch1(net, payload)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)

        def job(fast: bool, data: np.ndarray | None = None, fail: int = 0) -> Job:
            data = payload.numpy() if data is None else data
            return Job(net, data, fast, str(tmp / "result.pkl"), fail, stock)

        runs: dict[str, list[Outcome]] = {"stock": [], "fast": []}
        for _ in range(args.repeats):  # alternate, so both modes see the same machine load
            for mode in runs:
                runs[mode].append(launch(job(mode == "fast"), tmp))
        for mode, outs in runs.items():
            for o in outs:
                if o.result is None:
                    raise RuntimeError(f"{mode} run failed:\n{o.stderr}")
        exact = {mode: all(same(o.result, engine, args.timesteps) for o in outs)
                 for mode, outs in runs.items()}
        long_payload = np.repeat(payload.numpy(), 100, axis=1)  # long enough to interrupt
        cleanup = ["| case | child OS processes | worker exit status | left behind |",
                   "|---|---|---|---|"]
        for mode in runs if not stock else ():
            for o in runs[mode]:
                cleanup.append(cleanup_rows(f"{mode}: normal run", o))
            cleanup.append(cleanup_rows(f"{mode}: error in a process model",
                                        launch(job(mode == "fast", fail=5), tmp)))
            cleanup.append(cleanup_rows(
                f"{mode}: Ctrl-C (SIGINT to the process group)",
                launch(job(mode == "fast", long_payload), tmp, signal.SIGINT, group=True)))
            cleanup.append(cleanup_rows(f"{mode}: SIGTERM to the worker",
                                        launch(job(mode == "fast", long_payload), tmp,
                                               signal.SIGTERM)))
    timing = "stock LIF graph, no reset steps" if stock else "+1 reset step each"
    print(f"{Path(args.model).name}: {len(net.nodes) - 1} populations, {len(net.synapses)} "
          f"synapses; {args.items} items x "
          f"{args.timesteps} timesteps ({timing}); torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    print(speed_table(runs, engine_times))
    print()
    print(resource_table(runs, exact, args.items))
    if not stock:
        print()
        print("\n".join(cleanup))


if __name__ == "__main__":
    main()
