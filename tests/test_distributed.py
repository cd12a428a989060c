"""torchrun with 2 gloo processes gives exactly the single-process results."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    path = tmp_path_factory.mktemp("m") / "tiny.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 1, 8, 8),)), path)
    return path


def run(nproc: int, *args: str) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
                "--master-port", str(29500 + nproc), "-m"] if nproc > 1 else [sys.executable, "-m"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, "lavaconv", *args, "--quiet"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


# batch 256 over ~1200 digits items: 5 evaluation batches, shared unevenly by 2 ranks
COMMON = ["--data", "digits", "--samples", "1198", "--calib-samples", "599", "--norm",
          "p99.9:channel"]


def test_convert_thresholds_identical(model, tmp_path):
    for n in (1, 2):
        run(n, "convert", str(model), *COMMON, "--out", str(tmp_path / f"n{n}"))
    with np.load(tmp_path / "n1" / "arrays.npz") as a, np.load(tmp_path / "n2" / "arrays.npz") as b:
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_eval_accuracy_and_spikes_identical(model, tmp_path):
    for n in (1, 2):
        run(n, "eval", str(model), *COMMON, "--timesteps", "8,24", "--input", "poisson",
            "--profile", "loihi2", "--json", str(tmp_path / f"n{n}.json"))
    one, two = (json.loads((tmp_path / f"n{n}.json").read_text()) for n in (1, 2))
    for key in ("ann_accuracy", "items"):
        assert one[key] == two[key]
    for mode in ("snn_float", "snn_int"):
        assert one[mode]["accuracy"] == two[mode]["accuracy"]
        assert one[mode]["spike_rate"] == two[mode]["spike_rate"]
