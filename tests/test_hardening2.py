"""Hardening round 2 (issue 16): crafted archives, --out, YAML, network directories, output
paths, numeric options, signals, concurrency. Every user error: exit 2, one line, nothing of
the user's deleted or overwritten, no code from a file run."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import assert_nir_matches_engine, chain, payload
from test_hardening import ROOT, _descendants, _start_time, small_net, tiny

from lavaconv.ann.stats import activation_stats
from lavaconv.app.cli import main
from lavaconv.app.outputs import MARKER, atomic_dir
from lavaconv.conversion import (
    ConvertOptions,
    NormSpec,
    balance,
    build_network,
    correction,
    diagnostics,
)
from lavaconv.errors import LavaconvError
from lavaconv.export.nir import nir_graph
from lavaconv.frontend import load_model
from lavaconv.frontend.archive import check_pt2
from lavaconv.ir.network import Network, Readout
from lavaconv.sim import evaluation


class Evil:
    """Unpickling this runs a shell command (creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_bytes(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save(Evil(marker), buf)
    return buf.getvalue()


def rewrite(src: Path, dst: Path, edit: Callable[[dict[str, bytes], str], None]) -> Path:
    """A copy of the zip ``src`` whose members ``edit(files, root)`` changed."""
    with zipfile.ZipFile(src) as archive:
        files = {i.filename: archive.read(i.filename) for i in archive.infolist()}
    edit(files, next(iter(files)).split("/")[0])
    with zipfile.ZipFile(dst, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return dst


def _pickled_weight(files: dict[str, bytes], root: str, marker: Path) -> None:
    config = f"{root}/data/weights/model_weights_config.json"
    doc = json.loads(files[config])
    doc["config"]["0.weight"]["use_pickle"] = True
    files[config] = json.dumps(doc).encode()
    files[f"{root}/data/weights/{doc['config']['0.weight']['path_name']}"] = evil_bytes(marker)


def _pickled_constant(files: dict[str, bytes], root: str, marker: Path) -> None:
    files[f"{root}/data/constants/model_constants_config.json"] = json.dumps({"config": {
        "c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True}}}).encode()
    files[f"{root}/data/constants/opaque_obj_0"] = pickle.dumps(Evil(marker))


def _sample_inputs(files: dict[str, bytes], root: str, marker: Path) -> None:
    files[f"{root}/data/sample_inputs/model.pt"] = evil_bytes(marker)


def _legacy_weights(files: dict[str, bytes], root: str, marker: Path) -> None:
    files[f"{root}/data/weights/model.pt"] = evil_bytes(marker)


def _aoti(files: dict[str, bytes], root: str, marker: Path) -> None:
    files[f"{root}/data/aotinductor/model/model.so"] = b"\x7fELF" + bytes(64)


PAYLOADS = {"pickled weight": _pickled_weight, "pickled constant": _pickled_constant,
            "sample inputs": _sample_inputs, "legacy weights file": _legacy_weights,
            "AOTInductor library": _aoti}
RUNS_IN_TORCH = ["pickled weight", "sample inputs", "legacy weights file"]


def crafted(tmp: Path, kind: str, marker: Path) -> Path:
    good = tmp / "good.pt2"
    if not good.exists():
        tiny(good, small_net())
    return rewrite(good, tmp / f"{kind.replace(' ', '_')}.pt2",
                   lambda files, root: PAYLOADS[kind](files, root, marker))


@pytest.mark.parametrize("kind", RUNS_IN_TORCH)
def test_crafted_archive_really_runs_code_in_torch(tmp_path, kind):
    """The payloads are real: torch.export.load alone runs them (so the tests below can fail)."""
    marker = tmp_path / "pwned"
    path = crafted(tmp_path, kind, marker)
    try:
        torch.export.load(path)
    except Exception:  # noqa: BLE001 - the payload runs before torch notices the damage
        pass
    assert marker.exists()


def _npz(path: Path, shape=(1, 8, 8), n: int = 40, labels=None) -> Path:
    x = np.random.default_rng(0).random((n, *shape), np.float32)
    np.savez(path, x=x, y=np.arange(n) % 10 if labels is None else labels)
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """good.pt2, data.npz and a converted network ``net`` (with a marker) in one folder."""
    tmp = tmp_path_factory.mktemp("base")
    tiny(tmp / "good.pt2", small_net())
    _npz(tmp / "data.npz")
    assert main(["convert", str(tmp / "good.pt2"), "--data", str(tmp / "data.npz"), "--out",
                 str(tmp / "net"), "--quiet", "--v-init", "0"]) == 0
    return tmp


def network_copy(base: Path, dst: Path, edit: Callable[[dict, dict], None] | None = None) -> Path:
    """A copy of the base network whose JSON document and arrays ``edit(doc, arrays)`` changed."""
    shutil.copytree(base / "net", dst)
    if edit is not None:
        doc = json.loads((dst / "network.json").read_text())
        with np.load(dst / "arrays.npz") as npz:
            arrays = dict(npz)
        edit(doc, arrays)
        (dst / "network.json").write_text(json.dumps(doc))
        np.savez(dst / "arrays.npz", **arrays)
    return dst


def _first(doc: dict, kind: str) -> dict:
    return next(e for e in doc["nodes"].values() if e["type"] == kind)


def _array_of(doc: dict, arrays: dict, kind: str, field: str) -> str:
    return _first(doc, kind)[field]["array"]


def _set(kind: str, field: str, value) -> Callable[[dict, dict], None]:
    return lambda doc, arrays: _first(doc, kind).__setitem__(field, value)


def _set_array(kind: str, field: str, value: Callable[[np.ndarray], np.ndarray]):
    def edit(doc: dict, arrays: dict) -> None:
        key = _array_of(doc, arrays, kind, field)
        arrays[key] = value(arrays[key])
    return edit


def _weight(value: Callable[[np.ndarray], np.ndarray]):
    def edit(doc: dict, arrays: dict) -> None:
        key = doc["synapses"][0]["weight"]["array"]
        arrays[key] = value(arrays[key])
    return edit


def _npy_v3_claiming(shape: tuple[int, ...]) -> bytes:
    header = repr({"descr": "<f4", "fortran_order": False, "shape": shape}).encode()
    header += b" " * (64 - (len(header) + 13) % 64) + b"\n"
    return b"\x93NUMPY\x03\x00" + len(header).to_bytes(4, "little") + header + bytes(64)


NETWORK_CASES: dict[str, tuple[Callable | None, Callable[[Path], None] | None, str]] = {
    # name -> (edit of doc and arrays, edit of the directory, text the error names)
    "truncated arrays.npz": (None, lambda d: (d / "arrays.npz").write_bytes(
        (d / "arrays.npz").read_bytes()[:300]), "arrays.npz"),
    "network.json not JSON": (None, lambda d: (d / "network.json").write_text("{nodes"),
                              "not valid JSON"),
    "network.json not UTF-8": (None, lambda d: (d / "network.json").write_bytes(b"\xff\xfe{"),
                               "not valid JSON"),
    "not a network file": (lambda doc, a: doc.__setitem__("format", "x"), None,
                           "not a lavaconv network"),
    "missing array": (lambda doc, a: a.pop(_array_of(doc, a, "IF", "bias")), None,
                      "missing from arrays.npz"),
    "wrong bias shape": (_set_array("IF", "bias", lambda b: np.zeros(7)), None, ".bias"),
    "wrong weight shape": (_weight(lambda w: w[:2]), None, "synapses[0].weight"),
    "string field": (_set("IF", "t_start", "1"), None, ".t_start"),
    "float delay": (lambda doc, a: doc["synapses"][0].__setitem__("delay", 1.5), None,
                    "synapses[0].delay"),
    "negative threshold": (_set_array("IF", "v_threshold", lambda t: -np.abs(t)), None,
                           ".v_threshold"),
    "NaN weight": (_weight(lambda w: np.where(w == w.flat[0], np.nan, w)), None,
                   "NaN or inf"),
    "inf bias": (_set_array("IF", "bias", lambda b: b + np.inf), None, "NaN or inf"),
    "unknown node type": (_set("IF", "type", "Evil"), None, ".type"),
    "unknown field": (_set("IF", "surprise", 1), None, ".surprise"),
    "synapse to nowhere": (lambda doc, a: doc["synapses"][0].__setitem__("target", "x" * 999),
                           None, "no node 'xxxx"),
    "huge shape": (_set("IF", "shape", [2**20, 2**20, 2]), None, ".shape"),
    "object array": (_set_array("IF", "bias", lambda b: np.array(["a"] * b.size)), None,
                     "non-numeric"),
    "npz v3 header claiming 100 GB": (None, lambda d: _replace_member(
        d / "arrays.npz", _npy_v3_claiming((50_000, 1000, 1000))), "claims shape"),
}


def _replace_member(path: Path, data: bytes) -> None:
    """The first array of the npz at ``path`` replaced by the raw ``.npy`` bytes ``data``."""
    rewrite(path, path.with_suffix(".tmp"), lambda files, root: files.__setitem__(
        next(iter(files)), data))
    path.with_suffix(".tmp").replace(path)


def run_cli(argv: list[str], capsys) -> str:
    """Run the CLI; assert exit 2 with one line; return the line."""
    capsys.readouterr()
    assert main([*argv, "--quiet"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("lavaconv: error: ") and "\n" not in err, err
    assert len(err) < 600, err
    return err


@pytest.mark.parametrize("case", list(NETWORK_CASES))
@pytest.mark.parametrize("command", ["export", "energy"])
def test_damaged_network_directory(base, tmp_path, capsys, case, command):
    edit, touch, needle = NETWORK_CASES[case]
    net = network_copy(base, tmp_path / "net", edit)
    if touch is not None:
        touch(net)
    argv = (["export", str(net), "--format", "nir", "--out", str(tmp_path / "x.nir")]
            if command == "export" else
            ["energy", str(net), "--data", str(base / "data.npz"), "--samples", "4"])
    assert needle in run_cli(argv, capsys)
    assert not (tmp_path / "x.nir").exists()


def test_network_load_round_trip_still_exact(base):
    net = Network.load(base / "net")
    assert isinstance(net.nodes[net.output_name], Readout) and (base / "net" / MARKER).is_file()


@pytest.mark.parametrize("kind", list(PAYLOADS))
@pytest.mark.parametrize("via", ["convert", "energy MODEL", "energy DIR"])
def test_no_code_runs_without_trust_pickle(base, tmp_path, capsys, kind, via):
    marker = tmp_path / "pwned"
    model = crafted(tmp_path, kind, marker)
    if via == "convert":
        argv = ["convert", str(model), "--data", str(base / "data.npz"), "--out",
                str(tmp_path / "out")]
    elif via == "energy MODEL":
        argv = ["energy", str(model), "--input-shape", "1,8,8"]
    else:  # an untrusted network directory names the model: --trust-pickle does not cover it
        net = network_copy(base, tmp_path / "net",
                           lambda doc, a: doc["meta"].__setitem__("model", str(model)))
        argv = ["energy", str(net), "--data", str(base / "data.npz"), "--samples", "4",
                "--trust-pickle"]
    assert "--trust-pickle" in run_cli(argv, capsys)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_trust_pickle_lets_the_archive_through(tmp_path):
    path = crafted(tmp_path, "pickled weight", tmp_path / "pwned")
    with pytest.raises(LavaconvError, match="--trust-pickle"):
        check_pt2(path, trust_pickle=False)
    check_pt2(path, trust_pickle=True)
    check_pt2(tmp_path / "good.pt2", trust_pickle=False)
    assert not (tmp_path / "pwned").exists()  # the check itself unpickles nothing


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script / save
def test_torchscript_unpickler_refuses_foreign_globals(base, tmp_path, capsys):
    """torch.jit.load resolves only TorchScript types: a data.pkl calling os.system fails."""
    script = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(small_net().eval()), script)
    marker = tmp_path / "pwned"
    evil = rewrite(script, tmp_path / "evil_ts.pt", lambda files, root: files.__setitem__(
        f"{root}/data.pkl", pickle.dumps(Evil(marker), protocol=2)))
    err = run_cli(["convert", str(evil), "--data", str(base / "data.npz"), "--out",
                   str(tmp_path / "out")], capsys)
    assert "evil_ts.pt" in err and not marker.exists()


def _user_dir(tmp: Path) -> Path:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "thesis.tex").write_text("precious")
    return tmp / "mine"


OUT_CASES: dict[str, tuple[Callable[[Path], str], str]] = {
    # name -> (the --out value, made in the test folder; text the error names)
    ".": (lambda tmp: ".", "lavaconv did not write"),
    "empty": (lambda tmp: "", "''"),
    "the model's folder": (lambda tmp: str(tmp), "lavaconv did not write"),
    "an existing file": (lambda tmp: str(tmp / "mine" / "thesis.tex"), "not a directory"),
    "a user's directory": (lambda tmp: str(tmp / "mine"), "lavaconv did not write"),
    "a file in the parent path": (lambda tmp: str(tmp / "mine" / "thesis.tex" / "out"),
                                  "thesis.tex"),
    "under /proc": (lambda tmp: "/proc/lavaconv-test-out", "/proc/lavaconv-test-out"),
}


@pytest.mark.parametrize("case", list(OUT_CASES))
@pytest.mark.parametrize("command", ["convert", "deploy"])
def test_out_never_replaces_what_lavaconv_did_not_write(base, tmp_path, capsys, monkeypatch,
                                                       case, command):
    shutil.copy(base / "good.pt2", tmp_path / "model.pt2")
    mine = _user_dir(tmp_path)
    monkeypatch.chdir(tmp_path)
    out, needle = OUT_CASES[case]
    err = run_cli([command, str(tmp_path / "model.pt2"), "--data", str(base / "data.npz"),
                   "--out", out(tmp_path)], capsys)
    assert needle in err
    assert (mine / "thesis.tex").read_text() == "precious"
    assert (tmp_path / "model.pt2").is_file()
    assert not [p for p in tmp_path.rglob(".*") if p.name != MARKER]


def test_out_holding_the_model_is_refused(base, tmp_path, capsys):
    """A previous lavaconv output that the user put the model into is not replaced."""
    out = tmp_path / "out"
    assert main(["convert", str(base / "good.pt2"), "--data", str(base / "data.npz"), "--out",
                 str(out), "--quiet"]) == 0
    shutil.copy(base / "good.pt2", out / "model.pt2")
    err = run_cli(["convert", str(out / "model.pt2"), "--data", str(base / "data.npz"),
                   "--out", str(out)], capsys)
    assert "holds the input" in err and (out / "model.pt2").is_file()


def test_failure_inside_atomic_dir_keeps_the_previous_output(base, tmp_path, capsys,
                                                              monkeypatch):
    out = tmp_path / "out"
    args = ["convert", str(base / "good.pt2"), "--data", str(base / "data.npz"), "--out",
            str(out), "--quiet"]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def half_written(self, directory):
        (Path(directory) / "network.json").write_text("{")
        raise LavaconvError("disk full (simulated)")

    monkeypatch.setattr(Network, "save", half_written)
    assert "disk full" in run_cli(args[:-1], capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_concurrent_commits_of_one_output(tmp_path):
    target, errors = tmp_path / "out", []

    def commit(k: int) -> None:
        try:
            for i in range(10):
                with atomic_dir(target) as tmp:
                    (tmp / "who").write_text(f"{k}.{i}")
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=commit, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "who"]


def _read_only(tmp: Path) -> Path:
    (tmp / "ro").mkdir()
    (tmp / "ro").chmod(0o500)
    return tmp / "ro" / "x"


OUTPUT_PATH_CASES: dict[str, Callable[[Path], Path]] = {
    "missing parent": lambda tmp: tmp / "no" / "such" / "x",
    "a file in the way": lambda tmp: tmp / "file" / "x",
    "read-only folder": _read_only,
    "/proc": lambda tmp: Path("/proc/lavaconv-test/x"),
    "a directory": lambda tmp: tmp,
}


@pytest.mark.parametrize("case", list(OUTPUT_PATH_CASES))
@pytest.mark.parametrize("what", ["export --out", "eval --json", "energy --html"])
def test_output_path_os_errors(base, tmp_path, capsys, case, what):
    if case == "read-only folder" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    (tmp_path / "file").write_text("mine")
    path = OUTPUT_PATH_CASES[case](tmp_path)
    argv = {"export --out": ["export", str(base / "net"), "--format", "nir", "--out", str(path)],
            "eval --json": ["eval", str(base / "good.pt2"), "--data", str(base / "data.npz"),
                            "--samples", "8", "--timesteps", "4", "--json", str(path)],
            "energy --html": ["energy", str(base / "good.pt2"), "--input-shape", "1,8,8",
                              "--html", str(path)]}[what]
    err = run_cli(argv, capsys)
    assert str(path) in err or path.name in err
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("argv, needle", [
    (["deploy", "M", "--lava-samples", "-3"], "--lava-samples"),
    (["deploy", "M", "--lava-samples", "0"], "--lava-samples"),
    (["deploy", "M", "--timesteps", "0"], "--timesteps"),
    (["convert", "M", "--calib-steps", "0"], "--calib-steps"),
    (["convert", "M", "--calib-items", "0"], "--calib-items"),
    (["convert", "M", "--samples", "0"], "--samples"),
    (["convert", "M", "--max-seconds", "-1"], "--max-seconds"),
    (["convert", "M", "--max-seconds", "nan"], "--max-seconds"),
    (["convert", "M", "--v-init", "nan"], "--v-init"),
    (["convert", "M", "--v-init", "inf"], "--v-init"),
    (["convert", "M", "--zeta", "inf"], "--zeta"),
    (["convert", "M", "--zeta", "-1"], "--zeta"),
    (["convert", "M", "--balance", "0"], "--balance"),
    (["convert", "M", "--burst", "99"], "--burst"),
    (["convert", "M", "--seed", "-1"], "--seed"),
    (["convert", "M", "--seed", "1.5"], "--seed"),
    (["energy", "M", "--samples", "-1"], "--samples"),
    (["frobnicate"], "invalid choice"),
    (["convert", "M"], "required"),
    (["convert", "M", "--neuron", "lif"], "--neuron"),
])
def test_options_out_of_range_and_usage_errors_are_one_line(base, tmp_path, capsys, argv,
                                                             needle):
    argv = [str(base / "good.pt2") if a == "M" else a for a in argv]
    if argv[0] in ("convert", "deploy") and "required" not in needle:
        argv += ["--data", str(base / "data.npz"), "--out", str(tmp_path / "out")]
    assert needle in run_cli(argv, capsys)
    assert "usage:" not in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("labels, needle", [
    (np.full(40, 10), "label 10"), (np.full(40, -1), "label -1"),
    (np.full(40, 2**62), "label 4611686018427387904")])
def test_labels_outside_the_models_classes(base, tmp_path, capsys, labels, needle):
    data = _npz(tmp_path / "d.npz", labels=labels)
    assert needle in run_cli(["eval", str(base / "good.pt2"), "--data", str(data),
                              "--timesteps", "4"], capsys)


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(9))


@pytest.mark.parametrize("text, needle", [
    ("sources:\n" + "\n".join(f"  {line}" for line in BOMB.splitlines()), "aliases"),
    ("name: x\nkind: &k ann\n", "anchors"),
    (b"name: caf\xe9\n", "not UTF-8"),
    ("name: x\ndescription: d\nsources: {}\nenergy: {}\nkind: " + "k" * 100_000, "kind"),
    ("name: x\nkind: ann\ndescription: d\nsources: {}\nenergy: " + "[1, " * 50 + "1" + "]" * 50,
     "expected a mapping"),
])
def test_hostile_profile_yaml(tmp_path, capsys, text, needle):
    path = tmp_path / "p.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    start = time.monotonic()
    err = run_cli(["profiles", str(path)], capsys)
    assert needle in err and time.monotonic() - start < 10


def test_successful_run_writes_nothing_to_stderr(base, tmp_path):
    run = subprocess.run([sys.executable, "-m", "lavaconv", "eval", str(base / "good.pt2"),
                          "--data", str(base / "data.npz"), "--timesteps", "4", "--profile",
                          "loihi2", "--quiet", "--json", str(tmp_path / "r.json")],
                         cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0 and run.stderr == ""


def test_sighup_during_lava_leaves_no_workers_nor_temp_dirs(tmp_path):
    model = tiny(tmp_path / "m.pt2", small_net())
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "lavaconv", "deploy", str(model), "--data",
                             "digits", "--samples", "40", "--calib-samples", "20",
                             "--timesteps", "1000", "--lava-samples", "40", "--out", str(out),
                             "--quiet"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 300
        while len(_descendants(proc.pid)) < 4:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        lava = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGHUP)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and err.strip() == "lavaconv: interrupted", err
    deadline = time.monotonic() + 10
    left = lava
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {pid for pid, start in lava.items() if _start_time(pid) == start}
    assert not left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2"]


def test_seed_reaches_the_calibration_runs(monkeypatch, base):
    gm = load_model(base / "good.pt2", (1, 8, 8)).graph_module
    x = np.random.default_rng(0).random((40, 1, 8, 8), np.float32)
    stats = activation_stats(gm, x, progress=False)
    seen: list[int] = []
    for module in (balance, correction, diagnostics):
        monkeypatch.setattr(module, "encode_input", lambda *a, seed, real=module.encode_input,
                            **k: seen.append(seed) or real(*a, seed=seed, **k))
    options = ConvertOptions(NormSpec.parse("max"), "rmp", "poisson", balance=1.0,
                             correction="bias", zeta="auto", calib_steps=8, calib_items=40)
    build_network(gm, x, stats, options, seed=7)
    assert seen and set(seen) == {7}  # one batch of 40 items: seed + 0


def test_softmax_readout_draws_differ_per_batch(monkeypatch, base):
    net = Network.load(base / "net")
    net.nodes[net.output_name].mode = "softmax"
    seeds: list[int] = []
    real = evaluation.simulate
    monkeypatch.setattr(evaluation, "simulate",
                        lambda *a, seed, **k: seeds.append(seed) or real(*a, seed=seed, **k))
    x = np.random.default_rng(0).random((12, 1, 8, 8), np.float32)
    evaluation.evaluate(net, x, None, [8], seed=5, batch_size=4, progress=False)
    assert seeds == [5, 9, 13]


def test_nir_graded_payloads_match_the_engine():
    net = chain("subtract")
    net.nodes["a"].payload = np.resize([0.5, 1.0, 2.0], (3, 4, 4))  # per neuron
    net.nodes["c"].payload = np.asarray(0.5)
    assert net.is_graded("a") and net.is_graded("c") and not net.is_graded("b")
    assert_nir_matches_engine(net, nir_graph(net), payload(net))


@pytest.mark.parametrize("mode", ["count", "softmax"])
def test_nir_refuses_spiking_readouts(mode):
    net = chain("subtract")
    net.nodes[net.output_name].mode = mode
    with pytest.raises(LavaconvError, match="--readout"):
        nir_graph(net)


@pytest.mark.parametrize("field, value", [("v_init", float("nan")), ("v_init", 2.0),
                                          ("zeta", float("inf")), ("calib_steps", 0),
                                          ("calib_items", -1)])
def test_library_options_are_range_checked_too(field, value):
    with pytest.raises(LavaconvError, match=f"--{field.replace('_', '-')}"):
        ConvertOptions(**{field: value})


@pytest.mark.parametrize("field,value", [("samples", 0), ("calib_samples", -3), ("seed", -1),
                                         ("seed", 2**40), ("samples", 2.5), ("seed", True)])
def test_run_config_from_python_is_range_checked(field, value):
    from lavaconv.app.session import RunConfig

    with pytest.raises(LavaconvError, match=f"^{field} .*expected an integer"):
        RunConfig("m.pt2", "digits", **{field: value})


@pytest.mark.parametrize("field,value", [("timesteps", 0), ("lava_samples", -3)])
def test_deploy_config_from_python_is_range_checked(field, value):
    from lavaconv.app.deploy import DeployConfig

    with pytest.raises(LavaconvError, match=f"^{field} .*expected an integer"):
        DeployConfig(**{field: value})
