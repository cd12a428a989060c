"""A corpus of bad inputs through the CLI: each ends in one line, exit code 2, nothing written."""

import glob
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lavaconv.app.cli import main
from lavaconv.sim import evaluation

ROOT = Path(__file__).resolve().parent.parent
RESNET = ROOT / "examples" / "resnet_fmnist.pt2"


class Evil:
    """Unpickling this runs a shell command (creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def tiny(path: Path, model: nn.Module, shape=(1, 8, 8)) -> Path:
    torch.export.save(torch.export.export(model.eval(), (torch.zeros(1, *shape),)), path)
    return path


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(256, 10))


def npz_claiming(path: Path, shape: tuple[int, ...]) -> Path:
    """An npz whose x header claims ``shape`` (float32) but which holds 4 KiB of it."""
    def member(shape: tuple[int, ...], dtype: str, payload: bytes) -> bytes:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": dtype, "fortran_order": False, "shape": shape})
        return header.getvalue() + payload

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", member(shape, "<f4", bytes(4096)))
        archive.writestr("y.npy", member(shape[:1], "<i8", bytes(8 * shape[0])))
    return path


def bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, text the one-line error must contain)."""
    good = tiny(tmp / "good.pt2", small_net())
    (tmp / "garbage.pt2").write_bytes(os.urandom(2000))
    (tmp / "truncated.pt2").write_bytes(good.read_bytes()[:3000])
    torch.save(Evil(tmp / "pwned"), tmp / "evil.pt")
    torch.save(small_net().state_dict(), tmp / "sd.pt")
    nan_model = small_net()
    with torch.no_grad():
        nan_model[0].weight[0, 0, 0, 0] = float("nan")
    tiny(tmp / "nan.pt2", nan_model)
    # export traces with fake tensors: 2 x 200008 x 200008 floats per item exist only as a shape
    tiny(tmp / "huge.pt2", nn.Sequential(nn.Conv2d(1, 2, 1, padding=100_000), nn.ReLU(),
                                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 10)))
    npz_claiming(tmp / "huge.npz", (30_000, 3, 1000, 1000))
    tiny(tmp / "sigmoid.pt2", nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid(), nn.Flatten(),
                                            nn.Linear(72, 10)))
    np.savez(tmp / "data.npz", x=np.random.default_rng(0).random((40, 1, 8, 8), np.float32),
             y=np.arange(40) % 10)
    (tmp / "truncated.npz").write_bytes((tmp / "data.npz").read_bytes()[:500])
    np.savez(tmp / "strings.npz", x=np.array([["a"] * 64] * 4).reshape(4, 1, 8, 8), y=np.zeros(4))
    np.savez(tmp / "nan.npz", x=np.full((4, 1, 8, 8), np.nan, np.float32), y=np.zeros(4))
    (tmp / "hostile.yaml").write_text(f"!!python/object/apply:os.system ['touch {tmp}/pwned']\n")
    profile = (ROOT / "lavaconv" / "hw_profiles" / "loihi2.yaml").read_text()
    (tmp / "range.yaml").write_text(profile.replace("weight_bits: {value: 8",
                                                    "weight_bits: {value: 99"))
    data = ["--data", str(tmp / "data.npz"), "--samples", "20", "--calib-samples", "10"]
    out = ["--out", str(tmp / "out")]
    return {
        "missing model": (["convert", str(tmp / "nope.pt2"), *data, *out], "nope.pt2"),
        "garbage archive": (["convert", str(tmp / "garbage.pt2"), *data, *out], "garbage.pt2"),
        "truncated archive": (["convert", str(tmp / "truncated.pt2"), *data, *out],
                              "truncated.pt2"),
        "malicious pickle": (["convert", str(tmp / "evil.pt"), *data, *out], "--trust-pickle"),
        "state_dict without --arch": (["convert", str(tmp / "sd.pt"), *data, *out], "--arch"),
        "NaN weights": (["convert", str(tmp / "nan.pt2"), *data, *out], "nan.pt2"),
        "unsupported op": (["convert", str(tmp / "sigmoid.pt2"), *data, *out], "sigmoid"),
        "wrong input shape": (["convert", str(RESNET), *data, *out], "resnet_fmnist.pt2"),
        "truncated npz": (["convert", str(good), "--data", str(tmp / "truncated.npz"), *out],
                          "truncated.npz"),
        "string data": (["convert", str(good), "--data", str(tmp / "strings.npz"), *out],
                        "strings.npz"),
        "NaN data": (["convert", str(good), "--data", str(tmp / "nan.npz"), *out], "NaN"),
        "empty calibration": (["convert", str(good), "--data", str(tmp / "data.npz"),
                               "--calib-samples", "0", *out], "calib"),
        "bad norm": (["convert", str(good), *data, "--norm", "p200", *out], "--norm"),
        "hostile yaml": (["deploy", str(good), *data, "--profile", str(tmp / "hostile.yaml"),
                          *out], "hostile.yaml"),
        "profile out of range": (["deploy", str(good), *data, "--profile",
                                  str(tmp / "range.yaml"), *out], "weight_bits"),
        "energy-only profile": (["deploy", str(good), *data, "--profile", "rolls", *out],
                                "rolls"),
        "T below depth": (["eval", str(good), *data, "--timesteps", "1"], "depth"),
        "huge activations": (["convert", str(tmp / "huge.pt2"), *data, *out],
                             "(2, 200008, 200008) needs 298 GiB per item, over lavaconv's"),
        "huge --input-shape": (["energy", str(ROOT / "examples" / "resnet_state_dict.pt"),
                                "--arch", f"{ROOT / 'examples' / 'models.py'}:ResNetStyle",
                                "--input-shape", "3,100000,100000"],
                               "(3, 100000, 100000) needs 112 GiB per item, over lavaconv's"),
        "huge npz header": (["convert", str(good), "--data", str(tmp / "huge.npz"), *out],
                            "claims shape (30000, 3, 1000, 1000)"),
    }


CASES = ["missing model", "garbage archive", "truncated archive", "malicious pickle",
         "state_dict without --arch", "NaN weights", "unsupported op", "wrong input shape",
         "truncated npz", "string data", "NaN data", "empty calibration", "bad norm",
         "hostile yaml", "profile out of range", "energy-only profile", "T below depth",
         "huge activations", "huge --input-shape", "huge npz header"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    return tmp, bad_inputs(tmp)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_exit_2_nothing_written(corpus, case, capsys):
    tmp, cases = corpus
    argv, needle = cases[case]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lavaconv: error: ") and "\n" not in err, err
    assert needle.lower() in err.lower(), err
    assert not (tmp / "out").exists()
    assert not (tmp / "pwned").exists()  # no code from a file ever ran
    assert not [p for p in tmp.iterdir() if p.name.startswith(".out.")]


def test_previous_output_survives_a_failed_run(tmp_path, capsys):
    good = tiny(tmp_path / "good.pt2", small_net())
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((40, 1, 8, 8), np.float32),
             y=np.arange(40) % 10)
    args = ["convert", str(good), "--data", str(tmp_path / "d.npz"), "--out",
            str(tmp_path / "out"), "--quiet"]
    assert main(args) == 0
    before = (tmp_path / "out" / "network.json").read_text()
    assert main([*args, "--norm", "bogus"]) == 2
    assert (tmp_path / "out" / "network.json").read_text() == before
    shutil.rmtree(tmp_path / "out")


def test_engine_memory_limit_is_a_user_error(tmp_path, monkeypatch, capsys):
    good = tiny(tmp_path / "good.pt2", small_net())
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((40, 1, 8, 8), np.float32),
             y=np.arange(40) % 10)
    monkeypatch.setattr(evaluation, "MEMORY_BUDGET", 1000)
    assert main(["eval", str(good), "--data", str(tmp_path / "d.npz"), "--quiet"]) == 2
    assert "memory" in capsys.readouterr().err


def test_max_seconds_stops_cleanly(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((400, 1, 28, 28), np.float32),
             y=np.arange(400) % 10)
    code = main(["deploy", str(RESNET), "--data", str(tmp_path / "d.npz"), "--max-seconds", "2",
                 "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2 and "--max-seconds" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


TIMING = re.compile(r'"(\w*seconds(?:_per_step)?)": -?\d[\d.]*(?:e[-+]?\d+)?')
TIMING_FIELDS = {"seconds_per_step", "startup_seconds", "engine_batch1_seconds_per_step"}
PARTS = re.compile(r'"seconds": \{[^}]*\}')  # the wall time of each part of the deploy


def test_deploy_twice_with_one_seed_writes_the_same_report(tmp_path):
    """Byte-identical report.json apart from the timing fields (keys ending in ``seconds`` or
    ``seconds_per_step``), and identical networks, from two processes with different hash
    seeds (so no result may depend on set or dict order of strings)."""
    model = tiny(tmp_path / "m.pt2", small_net())
    outs = [tmp_path / "a", tmp_path / "b"]
    for out, hash_seed in zip(outs, ("1", "2"), strict=True):
        subprocess.run([sys.executable, "-m", "lavaconv", "deploy", str(model), "--data", "digits",
                        "--samples", "40", "--calib-samples", "40", "--timesteps", "16",
                        "--target", "sim", "--lava-samples", "2", "--seed", "3", "--out",
                        str(out), "--quiet"], cwd=ROOT, check=True, capture_output=True,
                       env={**os.environ, "PYTHONHASHSEED": hash_seed})
    reports = [(out / "report.json").read_text() for out in outs]
    assert set(json.loads(reports[0])["seconds"]) == {
        "load_and_ann", "convert", "quantize", "float_snn", "integer_snn", "energy", "lava"}
    reports = [PARTS.sub('"seconds": T', r) for r in reports]
    assert {key for key in TIMING.findall(reports[0])} == TIMING_FIELDS
    assert TIMING.sub(r'"\1": T', reports[0]) == TIMING.sub(r'"\1": T', reports[1])
    for part in ("network", "network_float"):
        for path in sorted((outs[0] / part).iterdir()):
            assert path.read_bytes() == (outs[1] / part / path.name).read_bytes(), path


def _descendants(pid: int) -> dict[int, str]:
    """pid -> start time (field 22 of /proc/PID/stat) of every live descendant of ``pid``."""
    found = {}
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            children = Path(path).read_text().split()
        except FileNotFoundError:
            continue
        for child in map(int, children):
            start = _start_time(child)
            if start:
                found[child] = start
                found.update(_descendants(child))
    return found


def _start_time(pid: int) -> str | None:
    """Start time of a live process, None once it has gone (or is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else fields[19]


def test_max_seconds_stops_a_running_lava_deploy(tmp_path):
    """--max-seconds ends a run by SIGALRM from its interval timer; sent while Lava's processes
    step, it stops the deploy with exit 2, leaves none of them and writes nothing (our fused
    graph: four processes once stepping)."""
    model = tiny(tmp_path / "m.pt2", small_net())
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "lavaconv", "deploy", str(model), "--data",
                             "digits", "--samples", "40", "--calib-samples", "20",
                             "--timesteps", "1000", "--lava-samples", "40", "--max-seconds",
                             "3600", "--graph", "ours", "--out", str(out), "--quiet"], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # the resource tracker, then Lava's fused model, runtime service and shared memory
        while len(_descendants(proc.pid)) < 4:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # stepping now (40 items take seconds)
        lava = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGALRM)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, err
    assert err.strip() == "lavaconv: error: --max-seconds reached: stopped, nothing written"
    left = lava
    deadline = time.monotonic() + 10  # the orphaned resource tracker sees its pipe close
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {pid for pid, start in lava.items() if _start_time(pid) == start}
    assert not left
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_a_user_error(tmp_path, capsys):
    good = tiny(tmp_path / "good.pt2", small_net())
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((40, 1, 8, 8), np.float32),
             y=np.arange(40) % 10)
    data = ["--data", str(tmp_path / "d.npz"), "--quiet"]
    assert main(["convert", str(good), *data, "--out", str(tmp_path / "net")]) == 0
    for argv in (["eval", str(good)], ["energy", str(tmp_path / "net"), "--timesteps", "8"]):
        capsys.readouterr()
        assert main([*argv, *data, "--device", "cuda"]) == 2
        assert capsys.readouterr().err.strip() == ("lavaconv: error: --device cuda: no CUDA "
                                                   "device is available (use cpu or auto)")
