"""Model intake: the architectures users bring (tests/archs.py), saved the usual ways, load to
the batch-1 canonical graph, convert exactly (composed linear paths, concatenation, clipped
ReLUs), quantize for Loihi 2 and run bit-exactly on Lava."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
import warnings
from pathlib import Path

import archs
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lavaconv.ann.probe import activations, population_nodes
from lavaconv.ann.stats import collect
from lavaconv.conversion import ConvertOptions, NormSpec, convert
from lavaconv.cost.profiles import load_profile
from lavaconv.errors import LavaconvError
from lavaconv.frontend import canonicalize, load_model
from lavaconv.ir.network import IF, Conv, Dense, Input, MaxPool, Network, Readout
from lavaconv.lava import run_lava
from lavaconv.quantize.integer import quantize
from lavaconv.sim.engine import encode_input, simulate

ROOT = Path(__file__).resolve().parents[1]
SHAPE = archs.INPUT_SHAPE
STEPS = 6  # Lava runs stay tiny
# name -> (factory, the forms it is saved in); narrow widths keep the suite fast. TorchScript
# loads cost the most (conversion to torch.export), so the deep nets get the .pt2 forms.
ALL_FORMS = ("pt2-batch4", "pt2-dynamic", "traced-batch2", "scripted")
ARCHS = {
    "resnet18": (lambda: archs.resnet18(8), ("pt2-batch4", "traced-batch2")),
    "resnet34": (lambda: archs.resnet34(4), ("pt2-batch4", "pt2-dynamic")),
    "resnet50": (lambda: archs.resnet50(4), ("pt2-batch4", "pt2-dynamic")),
    "vgg11_bn": (lambda: archs.vgg11_bn(8), ALL_FORMS),
    "vgg16_bn": (lambda: archs.vgg16_bn(4), ("pt2-dynamic", "traced-batch2")),
    "resnet20": (lambda: archs.resnet20(4), ALL_FORMS),
    "mobilenet_v2": (lambda: archs.mobilenet_v2(4), ("pt2-batch4", "pt2-dynamic")),
    "densenet": (lambda: archs.densenet(4), ("pt2-batch4", "traced-batch2", "scripted")),
}


def save(model: nn.Module, form: str, path: Path) -> Path:
    """``model`` saved the way users do."""
    if form == "pt2-batch4":
        torch.export.save(torch.export.export(model, (torch.zeros(4, *SHAPE),)), path)
    elif form == "pt2-dynamic":
        batch = torch.export.Dim("batch", min=1, max=256)
        ep = torch.export.export(model, (torch.zeros(4, *SHAPE),), dynamic_shapes=({0: batch},))
        torch.export.save(ep, path)
    elif form == "traced-batch2":
        torch.jit.save(torch.jit.trace(model, torch.zeros(2, *SHAPE)), path)
    else:
        torch.jit.save(torch.jit.script(model), path)
    return path


def signature(gm: torch.fx.GraphModule) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


def inputs(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def reference() -> dict[str, tuple[nn.Module, torch.fx.GraphModule]]:
    """Per architecture: the model and the canonical graph of its batch-1 fp32 export."""
    out = {}
    for name, (make, _) in ARCHS.items():
        model = make()
        out[name] = (model, canonicalize(model, SHAPE))
    return out


@pytest.mark.parametrize("arch,form", [(a, f) for a, (_, forms) in ARCHS.items() for f in forms])
def test_every_form_loads_to_the_batch1_graph(reference, tmp_path, arch, form):
    model, gm1 = reference[arch]
    loaded = load_model(save(model, form, tmp_path / f"{arch}.{form}"), SHAPE)
    assert signature(loaded.graph_module) == signature(gm1)
    x = inputs(3)
    with torch.no_grad():
        want, got = model(x), loaded.graph_module(x)
    assert torch.allclose(got, want, atol=1e-4 * float(want.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_load_to_the_float32_graph(reference, tmp_path, dtype):
    model, gm1 = reference["resnet20"]
    half = copy.deepcopy(model).to(dtype)
    path = tmp_path / "half.pt2"
    torch.export.save(torch.export.export(half, (torch.zeros(4, *SHAPE, dtype=dtype),)), path)
    gm = load_model(path, SHAPE).graph_module
    assert signature(gm) == signature(gm1)
    assert all(t.dtype == torch.float32 for t in gm.state_dict().values())
    x = inputs(3)
    with torch.no_grad():
        want, got = model(x), gm(x)  # the fp32 model against its rounded weights
    assert torch.allclose(got, want, atol=0.05 * float(want.abs().max()))
    assert not torch.equal(got, want)


def test_bundled_batch8_export_loads_to_the_batch1_graph():
    root = Path(__file__).resolve().parents[1] / "examples"
    one = load_model(root / "vgg_fmnist.pt2", (1, 28, 28)).graph_module
    eight = load_model(root / "vgg_fmnist_b8.pt2", (1, 28, 28)).graph_module
    assert signature(eight) == signature(one)
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(eight(x), one(x), atol=1e-5)


# ---------------------------------------------------------------- conversion


def calibrated(gm: torch.fx.GraphModule, x: torch.Tensor):
    names = population_nodes(gm)
    by_node = collect(gm, [x], sorted(set(names.values())))
    return {pop: by_node[node] for pop, node in names.items()}


def _synapse(syn: Conv | Dense, s: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    w = torch.as_tensor(syn.weight, dtype=torch.float64)
    if isinstance(syn, Dense):
        return (s.flatten(1) @ w.T).reshape(len(s), *shape)
    return F.conv2d(s, w, None, tuple(syn.stride), tuple(syn.padding), groups=syn.groups)


def _per_channel(a: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    return a.reshape(-1, *[1] * (len(shape) - 1)) if a.dim() == 1 and len(shape) > 1 else a


def assert_layers_exact(net: Network, gm: torch.fx.GraphModule, x: torch.Tensor) -> None:
    """Every population's normalised input, computed from the ANN activations of its sources
    through the network's synapses, gives back the ANN's own activation: relu (clipped at a
    clipped ReLU's ceiling) of it, times lambda, is that population's output in the ANN."""
    act = {k: v.double() for k, v in next(activations(gm, x.numpy())).items()}
    norm: dict[str, torch.Tensor] = {}
    clips = net.meta.get("clips", {})
    for name, node in net.nodes.items():
        if isinstance(node, Input):
            norm[name] = act[name] / node.scale
            continue
        if isinstance(node, MaxPool):
            norm[name] = F.max_pool2d(norm[node.source], node.kernel, node.stride, node.padding)
            continue
        z = sum(_synapse(s, norm[s.source], node.shape) for s in net.inputs_of(name))
        z = z + torch.as_tensor(np.asarray(node.bias), dtype=torch.float64)
        lam = _per_channel(node.scale, node.shape)
        value = z * lam
        if isinstance(node, IF):
            value = value.clamp(min=0, max=clips.get(name))
            norm[name] = act[name] / lam
        assert isinstance(node, (IF, Readout))
        err = float((value - act[name]).abs().max())
        assert err <= 1e-6 * max(1.0, float(act[name].abs().max())), (name, err)


def _converted(gm: torch.fx.GraphModule, **options) -> Network:
    return convert(gm, SHAPE, calibrated(gm, inputs(8, seed=1)), ConvertOptions(**options))


@pytest.mark.parametrize("arch", ARCHS)
def test_conversion_is_exact_quantizes_and_runs_bit_exactly(reference, arch):
    gm = reference[arch][1]
    x = inputs(8, seed=1)
    stats = calibrated(gm, x)
    net = convert(gm, SHAPE, stats, ConvertOptions(v_init=0.5))
    assert_layers_exact(net, gm, x[:4])
    q, _ = quantize(net, load_profile("loihi2").formats,
                    input_max=float(stats[net.input_name].max(False)), timesteps=STEPS)
    payload = encode_input(q, x[:1].numpy(), STEPS)
    eng = simulate(q, payload)
    assert sum(int(c.sum()) for c in eng.spike_counts.values()) > 0
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    lava = run_lava(q, payload.numpy())
    assert set(lava.spike_counts) == set(eng.spike_counts)
    for name, counts in eng.spike_counts.items():
        assert np.array_equal(counts.numpy(), lava.spike_counts[name]), name
    assert np.array_equal(eng.readout[STEPS].numpy(), lava.readout)
    assert time.perf_counter() - t0 < 120


def test_clipped_relu_scale_never_exceeds_the_clip(reference):
    gm = reference["mobilenet_v2"][1]
    clipped = [n for n in gm.graph.nodes if n.target == torch.ops.aten.hardtanh.default]
    assert len(clipped) > 10 and {n.args[2] for n in clipped} == {6.0}
    # without normalisation lambda is 1: above a clip of 0.5, so the clip must set it
    for node in clipped:
        node.args = (node.args[0], 0.0, 0.5)
    gm.recompile()
    try:
        net = convert(gm, SHAPE, {}, ConvertOptions(NormSpec.parse("none")))
        assert_layers_exact(net, gm, inputs(2))
    finally:
        for node in clipped:
            node.args = (node.args[0], 0.0, 6.0)
        gm.recompile()
    assert set(net.meta["clips"]) == {n.name for n in clipped}
    for name, node in net.nodes.items():
        if isinstance(node, IF):
            assert float(node.scale) == (0.5 if name in net.meta["clips"] else 1.0)


def test_concatenation_reads_channel_ranges_without_a_copy(reference):
    net = _converted(reference["densenet"][1])
    kinds = {type(v).__name__ for v in net.nodes.values()}
    assert kinds == {"Input", "IF", "Readout"}  # no concatenating process
    widths = {s.weight.shape[1] for s in net.synapses if isinstance(s, Conv)}
    assert 4 in widths  # a consumer reads one growth-rate wide part of a concatenation


def test_linear_bottlenecks_compose_into_synapses_from_each_source(reference):
    # MobileNetV2: the expand 1x1 after an identity-shortcut add reads every earlier
    # projection's source population through one composed 1x1 conv each
    net = _converted(reference["mobilenet_v2"][1])
    fan_in = max(len(net.inputs_of(n)) for n, v in net.nodes.items() if isinstance(v, IF))
    assert fan_in >= 3


def test_refusals_are_one_line_naming_op_place_file_and_what_to_do(tmp_path):
    class Gelu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.act = nn.GELU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.conv(x)).flatten(1)

    path = save(Gelu().eval(), "pt2-batch4", tmp_path / "gelu.pt2")
    with pytest.raises(LavaconvError) as info:
        load_model(path, SHAPE)
    message = str(info.value)
    assert message.startswith(f"{path}: unsupported op aten.gelu")
    assert "act (GELU)" in message and "instead" in message and "\n" not in message


def test_onnx_without_the_extra_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # the extra is not installed
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07")
    with pytest.raises(LavaconvError) as info:
        load_model(path, SHAPE)
    message = str(info.value)
    assert message.startswith(f"{path}: reading ONNX needs the optional extra 'onnx'")
    assert "pip install 'lavaconv[onnx]'" in message and "\n" not in message


def onnx_export(model: nn.Module, path: Path, batch: int = 1, **kwargs) -> Path:
    """``model`` exported the way ``torch.onnx.export`` users do (TorchScript-based exporter;
    the dynamo one needs onnxscript)."""
    pytest.importorskip("onnx", reason="the optional extra 'onnx' is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter
        torch.onnx.export(model, (torch.zeros(batch, *SHAPE),), path, dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"], **kwargs)
    return path


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet20", "mobilenet_v2", "densenet"])
def test_onnx_export_loads_to_the_batch1_graph(tmp_path, name):
    """VGG (BatchNorm, max-pool, Gemm, Dropout), ResNet-20 (adds, ReduceMean, Reshape),
    MobileNetV2 (ReLU6 as Clip), DenseNet (Concat, BatchNormalization after a Concat); the
    graph is the .pt2 one (compared for the cheap two: load_model verifies all four)."""
    model = ARCHS[name][0]()
    path = onnx_export(model, tmp_path / f"{name}.onnx")
    gm = load_model(path, SHAPE).graph_module
    if name in ("resnet20", "densenet"):
        assert signature(gm) == signature(canonicalize(model, SHAPE))
    x = inputs(3)
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-4)


class ViewNet(nn.Module):
    """conv, ReLU, max-pool, ``x.view(x.size(0), -1)``, Linear, ReLU, Linear, softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc1, self.fc2 = nn.Linear(4 * 8 * 8, 16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(self.conv(x)), 2)
        return torch.softmax(self.fc2(torch.relu(self.fc1(x.view(x.size(0), -1)))), -1)


@pytest.mark.parametrize("form", ["dynamic-batch", "batch2"])
def test_onnx_shape_arithmetic_keeps_the_batch_free(tmp_path, form):
    """``x.view(x.size(0), -1)`` exported with a dynamic batch (Shape, Gather, Unsqueeze,
    Concat, Reshape) or at batch 2 (Reshape to [2, -1]): the graph runs at any batch."""
    import onnx

    torch.manual_seed(0)
    model = ViewNet().eval()
    dynamic = {"dynamic_axes": {"x": {0: "batch"}, "y": {0: "batch"}}} \
        if form == "dynamic-batch" else {}
    path = onnx_export(model, tmp_path / "view.onnx", batch=2, **dynamic)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ("Shape" in ops) == (form == "dynamic-batch") and "Reshape" in ops
    gm = load_model(path, SHAPE).graph_module
    assert signature(gm) == signature(canonicalize(model, SHAPE))
    x = inputs(5)
    with torch.no_grad():
        assert torch.allclose(F.softmax(gm(x), -1), model(x), atol=1e-4)


def test_onnx_model_converts_and_runs_on_the_engine(tmp_path):
    """``lavaconv eval`` of an ONNX ResNet-20 on a tiny npz: loads, converts, simulates."""
    path = onnx_export(archs.resnet20(4), tmp_path / "resnet20.onnx")
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, x=rng.random((8, *SHAPE), dtype=np.float32), y=np.arange(8) % 10)
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "lavaconv", "eval", str(path), "--data",
                           str(data), "--samples", "8", "--calib-samples", "8", "--timesteps",
                           "8,16", "--quiet", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()


def test_onnx_unsupported_op_is_refused_in_one_line(tmp_path):
    """A LeakyReLU: exit 2 and one line naming the ONNX node and its op."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(0.1), nn.Flatten(),
                          nn.Linear(4 * 30 * 30, 10)).eval()
    path = onnx_export(model, tmp_path / "leaky.onnx")
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, x=rng.random((4, *SHAPE), dtype=np.float32), y=np.arange(4))
    proc = subprocess.run([sys.executable, "-m", "lavaconv", "eval", str(path), "--data",
                           str(data), "--samples", "4", "--quiet"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line, line
    assert f"{path}: ONNX node /1/LeakyRelu (LeakyRelu) is not supported by lavaconv" in line
    assert "supported: " in line and "export the model as .pt2 with torch.export" in line


class LinearPaths(nn.Module):
    """conv -> add -> conv without ReLUs between: a projection shortcut (1x1, stride 2) summed
    with a 3x3 stride-2 main path, then a 1x1 conv; then a 1x1 -> 3x3 chain."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.main = nn.Conv2d(6, 6, 3, 2, 1)
        self.short = nn.Conv2d(6, 6, 1, 2)
        self.mix = nn.Conv2d(6, 6, 1)
        self.squeeze = nn.Conv2d(6, 4, 1, 2)
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.relu(self.stem(x))
        z = torch.relu(self.mix(self.main(p) + self.short(p)))
        w = torch.relu(self.conv(self.squeeze(z)))
        return self.fc(w.mean((2, 3)))


def test_linear_paths_through_adds_compose_exactly_and_run_on_lava():
    torch.manual_seed(0)
    model = LinearPaths().eval()
    shape = (3, 8, 8)
    gm = canonicalize(model, shape)
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(2))
    stats = calibrated(gm, x)
    net = convert(gm, shape, stats, ConvertOptions(v_init=0.5))
    into = {n: net.inputs_of(n) for n, v in net.nodes.items() if isinstance(v, IF)}
    z, w = list(into)[1:]
    assert [s.source for s in into[z]] == [list(into)[0]] * 2  # main and shortcut, composed
    assert into[w][0].weight.shape[2:] == (5, 5)  # 3x3 after a stride-2 1x1: kernel dilated
    assert_layers_exact(net, gm, x[:4])
    q, _ = quantize(net, load_profile("loihi2").formats,
                    input_max=float(stats[net.input_name].max(False)), timesteps=STEPS)
    payload = encode_input(q, x[:1].numpy(), STEPS)
    eng = simulate(q, payload)
    lava = run_lava(q, payload.numpy(), fast=False)  # Lava's stock process models
    for name, counts in eng.spike_counts.items():
        assert np.array_equal(counts.numpy(), lava.spike_counts[name]), name
    assert np.array_equal(eng.readout[STEPS].numpy(), lava.readout)
