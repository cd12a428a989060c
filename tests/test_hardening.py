"""A corpus of bad inputs through the CLI: each ends in one line, exit code 2, nothing written."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lavaconv import pipeline
from lavaconv.cli import main

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
    tiny(tmp / "sigmoid.pt2", nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid(), nn.Flatten(),
                                            nn.Linear(72, 10)))
    np.savez(tmp / "data.npz", x=np.random.default_rng(0).random((40, 1, 8, 8), np.float32),
             y=np.arange(40) % 10)
    (tmp / "truncated.npz").write_bytes((tmp / "data.npz").read_bytes()[:500])
    np.savez(tmp / "strings.npz", x=np.array([["a"] * 64] * 4).reshape(4, 1, 8, 8), y=np.zeros(4))
    np.savez(tmp / "nan.npz", x=np.full((4, 1, 8, 8), np.nan, np.float32), y=np.zeros(4))
    (tmp / "hostile.yaml").write_text(f"!!python/object/apply:os.system ['touch {tmp}/pwned']\n")
    profile = (ROOT / "hw_profiles" / "loihi2.yaml").read_text()
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
    }


CASES = ["missing model", "garbage archive", "truncated archive", "malicious pickle",
         "state_dict without --arch", "NaN weights", "unsupported op", "wrong input shape",
         "truncated npz", "string data", "NaN data", "empty calibration", "bad norm",
         "hostile yaml", "profile out of range", "energy-only profile", "T below depth"]


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
    monkeypatch.setattr(pipeline, "MEMORY_BUDGET", 1000)
    assert main(["eval", str(good), "--data", str(tmp_path / "d.npz"), "--quiet"]) == 2
    assert "memory" in capsys.readouterr().err


def test_max_seconds_stops_cleanly(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((400, 1, 28, 28), np.float32),
             y=np.arange(400) % 10)
    code = main(["deploy", str(RESNET), "--data", str(tmp_path / "d.npz"), "--max-seconds", "2",
                 "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2 and "--max-seconds" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
