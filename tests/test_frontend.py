"""Front-end: file formats, canonical op set, BatchNorm folding, ReLU spellings, refusals.

The truth each test checks against is the original torch model itself, run in eval mode.
"""

from __future__ import annotations

import zipfile

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lavaconv.errors import LavaconvError
from lavaconv.frontend import canonicalize, load_model
from lavaconv.frontend.canon import export_module, prepare, verify
from lavaconv.frontend.passes import CANONICAL, PASSES, attr, propagate_shapes

aten = torch.ops.aten
SHAPE = (2, 8, 8)
# saving TorchScript/export archives in the tests themselves warns about deprecations
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

torch.set_num_threads(1)


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.3)
            if m.affine:
                m.weight.data.copy_(torch.randn(n, generator=g))
                m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


def targets(gm: torch.fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def run(gm: torch.fx.GraphModule, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = gm(x)
    return y[0] if isinstance(y, (tuple, list)) else y


def assert_same(model, gm: torch.fx.GraphModule, shape=SHAPE, tol: float = 1e-5) -> None:
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x)
    got = run(gm, x)
    assert torch.allclose(got, want, atol=tol, rtol=tol), (got - want).abs().max()


class Net(nn.Module):
    """Conv-BN-ReLU-maxpool, a residual block, global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.block = Residual(4, 4, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn(self.conv(x))))
        x = self.gap(self.block(x))
        return self.fc(self.drop(x.view(x.size(0), -1)))


class Residual(nn.Module):
    """ResNet basic block; a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


def net() -> Net:
    return randomise(Net())


# ---------------------------------------------------------------- file formats

def _save(model: nn.Module, kind: str, path) -> dict:
    x = torch.zeros(1, *SHAPE)
    if kind == "pt2":
        torch.export.save(torch.export.export(model, (x,)), path)
    elif kind == "script":
        torch.jit.save(torch.jit.script(model), path)
    elif kind == "trace":
        torch.jit.save(torch.jit.trace(model, x), path)
    elif kind == "pickle":
        torch.save(model, path)
        return {"trust_pickle": True}
    elif kind == "state_dict":
        torch.save(model.state_dict(), path)
        return {"arch": f"{Net.__module__}:Net"}
    return {}


@pytest.mark.parametrize("kind, source", [("pt2", "pt2"), ("script", "torchscript"),
                                          ("trace", "torchscript"), ("pickle", "pickle"),
                                          ("state_dict", "state_dict")])
def test_each_format_loads_and_reproduces_the_model(tmp_path, kind, source):
    model = net()
    path = tmp_path / f"model.{kind}"
    loaded = load_model(path, SHAPE, **_save(model, kind, path))
    assert loaded.source == source and loaded.input_shape == SHAPE
    assert set(targets(loaded.graph_module)) <= CANONICAL
    assert_same(model, loaded.graph_module)


def test_pickle_is_refused_without_trust(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(net(), path)
    with pytest.raises(LavaconvError, match="unpickling runs arbitrary code.*pt2.*state_dict"):
        load_model(path, SHAPE)


def test_state_dict_needs_arch(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(net().state_dict(), path)
    with pytest.raises(LavaconvError, match="--arch module.path:callable"):
        load_model(path, SHAPE)


class Smaller(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)


@pytest.mark.parametrize("arch, message", [
    ("no_such_module_xyz:Net", "cannot import no_such_module_xyz"),
    (f"{Net.__module__}:Missing", "has no attribute Missing"),
    (f"{Net.__module__}:Smaller", "unexpected keys"),
    ("Net", "expected 'module.path:callable'"),
])
def test_bad_arch_is_one_line(tmp_path, arch, message):
    path = tmp_path / "weights.pt"
    torch.save(net().state_dict(), path)
    with pytest.raises(LavaconvError, match=message) as info:
        load_model(path, SHAPE, arch=arch)
    assert "\n" not in str(info.value)


def _corrupt(path) -> None:
    torch.save(net(), path)
    data = bytearray(path.read_bytes())
    data[200:600] = b"x" * 400
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_text("not a model"), "cannot read as a torch.save file"),
    (lambda p: p.write_bytes(_zip_bytes(p)[:300]), "cannot read"),
    (_corrupt, "cannot read|unpickling failed"),
])
def test_bad_files_are_one_line_errors(tmp_path, make, message):
    path = tmp_path / "bad.pt"
    make(path)
    with pytest.raises(LavaconvError, match=message) as info:
        load_model(path, SHAPE, trust_pickle=True)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def _zip_bytes(path) -> bytes:
    torch.save(net().state_dict(), path)
    assert zipfile.is_zipfile(path)
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["pt2", "script", "state_dict"])
def test_wrong_input_shape_is_one_line_error(tmp_path, kind):
    path = tmp_path / f"model.{kind}"
    options = _save(net(), kind, path)
    with pytest.raises(LavaconvError, match=r"\(3, 8, 8\)") as info:
        load_model(path, (3, 8, 8), **options)
    assert "\n" not in str(info.value)


def test_verification_names_the_difference():
    model = net()
    gm = canonicalize(model, SHAPE)
    with pytest.raises(LavaconvError, match="model.pt: the canonical graph differs .* by 1"):
        verify(lambda x: model(x) + 1, gm, SHAPE, 1e-4, "model.pt")


# ---------------------------------------------------------------- canonical op set

class AllOps(nn.Module):
    """Uses every canonical op once, spelled the non-canonical way where there is one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding="same")
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.conv3 = nn.Conv2d(4, 2, 1)
        self.fc = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv(x), 2).clamp(min=0)
        x = x + F.relu(self.conv2(F.avg_pool2d(x, 1)))
        x = torch.cat([x, F.relu6(self.conv3(x))], 1)
        x = F.adaptive_avg_pool2d(x, 2)
        return F.log_softmax(self.fc(torch.flatten(x, 1)), dim=1)


def test_canonical_graph_holds_exactly_the_canonical_ops():
    model = AllOps().eval()
    gm = canonicalize(model, SHAPE)
    assert set(targets(gm)) == CANONICAL
    assert gm.meta["output_activation"] is not None  # log_softmax stripped for the readout
    x = torch.randn(4, *SHAPE)
    assert torch.allclose(torch.log_softmax(run(gm, x), 1), model(x), atol=1e-5)


def test_every_pass_alone_preserves_the_function():
    """Each pass is checked on its own: outputs before == outputs after (BN folds included)."""
    model = randomise(nn.Sequential(
        nn.BatchNorm2d(2), nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Softmax(dim=1)))
    gm = prepare(export_module(model, SHAPE, "m"), SHAPE)
    x = torch.randn(1, *SHAPE)
    for pass_ in PASSES:
        pass_(gm)
        gm.recompile()
        tail = gm.meta.get("output_activation") or (lambda y: y)
        assert torch.allclose(tail(run(gm, x)), model(x), atol=1e-5), pass_.__name__
    assert set(targets(gm)) <= CANONICAL


# ---------------------------------------------------------------- BatchNorm folding

class AddThenBN(nn.Module):
    """BN after a residual add: a conv branch, an identity branch, and conv + conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 3, padding=1)
        self.conv2 = nn.Conv2d(2, 2, 1)
        self.bn1 = nn.BatchNorm2d(2)
        self.bn2 = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x) + x))
        return self.bn2(self.conv1(y) + self.conv2(y))


class LinearBN(nn.Module):
    """BatchNorm1d after a linear and before a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm1d(128)
        self.fc1 = nn.Linear(128, 6)
        self.bn1 = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.bn1(self.fc1(self.bn0(x.flatten(1))))))


@pytest.mark.parametrize("model, bias_map", [
    (nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)), False),  # conv -> BN
    (AddThenBN(), False),  # add -> BN
    (nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 4, 3, padding=1)), True),  # BN -> conv
    (nn.Sequential(nn.ReLU(), nn.BatchNorm2d(2), nn.Conv2d(2, 4, 3, groups=2)), False),
    (LinearBN(), False),
], ids=["conv-bn", "add-bn", "bn-conv-padded", "bn-grouped-conv-unpadded", "linear"])
def test_batch_norm_folds_exactly(model, bias_map):
    model = randomise(model)
    gm = canonicalize(model, SHAPE)
    assert set(targets(gm)) <= CANONICAL
    assert_same(model, gm)
    maps = [n for n in gm.graph.nodes if n.op == "get_attr" and attr(gm, n).shape == (4, 8, 8)]
    assert bool(maps) == bias_map


def test_bn_before_padded_conv_uses_a_bias_free_conv_plus_a_map():
    model = randomise(nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 4, 3, padding=1)))
    gm = canonicalize(model, SHAPE)
    conv, add = (n for n in gm.graph.nodes if n.op == "call_function")
    assert conv.target == aten.conv2d.default and conv.args[2] is None
    assert add.target == aten.add.Tensor and add.args[0] is conv
    bias_map = attr(gm, add.args[1])
    assert bias_map.shape == (4, 8, 8)
    assert not torch.allclose(bias_map[:, 0, 0], bias_map[:, 4, 4])  # the border differs


def test_bn_after_add_turns_the_identity_branch_into_a_depthwise_conv():
    gm = canonicalize(randomise(AddThenBN()), SHAPE)
    first_add = next(n for n in gm.graph.nodes if n.target == aten.add.Tensor)
    identity = first_add.args[1]
    assert identity.target == aten.conv2d.default and identity.args[0].op == "placeholder"
    assert identity.args[6] == 2 and attr(gm, identity.args[1]).shape == (2, 1, 1, 1)


@pytest.mark.parametrize("shortcut", ["identity", "conv1x1"])
def test_residual_block(shortcut):
    block = Residual(2, 2, 1) if shortcut == "identity" else Residual(2, 4, 2)
    model = randomise(block)
    gm = canonicalize(model, SHAPE)
    assert set(targets(gm)) == {aten.conv2d.default, aten.relu.default, aten.add.Tensor}
    assert targets(gm).count(aten.conv2d.default) == (2 if shortcut == "identity" else 3)
    assert_same(model, gm)


# ---------------------------------------------------------------- ReLU spellings, pooling

class Spelled(nn.Module):
    """conv -> act -> conv -> act -> linear with ``act`` one ReLU spelling."""

    def __init__(self, act) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3)
        self.conv2 = nn.Conv2d(3, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 2)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc(x.flatten(1))


SPELLINGS = {
    "module": nn.ReLU(), "inplace": nn.ReLU(inplace=True), "F.relu": F.relu,
    "F.relu_inplace": lambda x: F.relu(x, inplace=True), "torch.relu": torch.relu,
    "relu_": lambda x: x.relu_(), "clamp_min": lambda x: x.clamp_min(0),
    "clamp": lambda x: torch.clamp(x, min=0), "threshold": nn.Threshold(0.0, 0.0),
}


def _structure(gm: torch.fx.GraphModule) -> list:
    """Ops, targets and arguments, with nodes replaced by their position in the graph."""
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    return [(n.op, n.target if n.op == "call_function" else None,
             torch.fx.node.map_arg(n.args, lambda a: index[a])) for n in gm.graph.nodes]


def test_every_relu_spelling_gives_the_same_graph():
    graphs = {}
    for name, act in SPELLINGS.items():
        torch.manual_seed(0)
        model = Spelled(act).eval()
        graphs[name] = canonicalize(model, SHAPE)
        assert_same(model, graphs[name])
    reference = _structure(graphs["module"])
    assert [t for _, t, _ in reference].count(aten.relu.default) == 2
    for name, gm in graphs.items():
        assert _structure(gm) == reference, name


def test_max_pool_before_relu_is_moved_after_it():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
                          nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)).eval()
    gm = canonicalize(model, SHAPE)
    assert targets(gm) == [aten.conv2d.default, aten.relu.default, aten.max_pool2d.default,
                           aten.max_pool2d.default, aten.flatten.using_ints,
                           aten.linear.default]
    assert_same(model, gm)


def test_avg_pool_gets_a_relu_unless_it_feeds_a_linear():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Conv2d(3, 3, 1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(12, 2)).eval()
    gm = canonicalize(model, SHAPE)
    assert targets(gm) == [aten.conv2d.default, aten.relu.default, aten.avg_pool2d.default,
                           aten.relu.default, aten.conv2d.default, aten.relu.default,
                           aten.avg_pool2d.default, aten.flatten.using_ints,
                           aten.linear.default]
    assert_same(model, gm)


class MeanPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).mean(dim=[-1, -2]))


def test_mean_over_space_becomes_avg_pool_and_flatten():
    model = MeanPool().eval()
    gm = canonicalize(model, SHAPE)
    pool = next(n for n in gm.graph.nodes if n.target == aten.avg_pool2d.default)
    assert pool.args[1:] == ([6, 6], [6, 6])
    assert aten.flatten.using_ints in targets(gm)
    assert_same(model, gm)


def test_where_is_recorded_for_every_op():
    gm = canonicalize(net(), SHAPE)
    places = {n.target: n.meta["lavaconv_where"] for n in gm.graph.nodes
              if n.op == "call_function"}
    assert places[aten.linear.default] == "fc (Linear)"
    assert places[aten.max_pool2d.default] == "pool (MaxPool2d)"
    assert places[aten.add.Tensor].startswith("block (Residual)")


# ---------------------------------------------------------------- refusals

class Functional(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


@pytest.mark.parametrize("layer, op, place", [
    (nn.Sigmoid(), "aten.sigmoid", "1 (Sigmoid)"),
    (nn.Tanh(), "aten.tanh", "1 (Tanh)"),
    (Functional(lambda x: x * x), "aten.mul", "1 (Functional)"),
    (Functional(lambda x: torch.cat([x, x], 2)), "aten.cat", "1 (Functional)"),
    (nn.ConvTranspose2d(3, 3, 2), "aten.conv_transpose2d", "1 (ConvTranspose2d)"),
    (nn.LeakyReLU(), "aten.leaky_relu", "1 (LeakyReLU)"),
    (nn.Upsample(scale_factor=2), "aten.upsample_nearest2d", "1 (Upsample)"),
    (nn.GELU(), "aten.gelu", "1 (GELU)"),
    (nn.Hardtanh(), "aten.hardtanh", "1 (Hardtanh)"),
    (Functional(lambda x: F.relu(x.reshape(-1, 12, 4, 4))), "aten.view", "1 (Functional)"),
    (nn.AdaptiveAvgPool2d(5), "aten.adaptive_avg_pool2d", "1 (AdaptiveAvgPool2d)"),
    (nn.Softmax(dim=1), "aten.softmax", "1 (Softmax)"),
    (Functional(lambda x: x.clamp(-1, 6)), "aten.clamp", "1 (Functional)"),
])
def test_unsupported_op_is_named_with_its_place(layer, op, place):
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), layer, nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, *SHAPE))
    with pytest.raises(LavaconvError) as info:
        canonicalize(model.eval(), SHAPE)
    message = str(info.value)
    assert message.startswith(f"Sequential: unsupported op {op}")
    assert f"at {place}" in message and "supported: Conv2d" in message and "\n" not in message
    assert "instead" in message


class PreActivation(nn.Module):
    """The conv before a BN also feeds the shortcut: BN folds into a copy of the conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv0(x)
        return self.conv1(F.relu(self.bn(y))) + y


def test_bn_after_a_shared_conv_folds_into_a_copy():
    model = randomise(PreActivation())
    gm = canonicalize(model, SHAPE)
    assert targets(gm).count(aten.conv2d.default) == 3 and set(targets(gm)) <= CANONICAL
    assert_same(model, gm)


def test_bn_with_nothing_to_fold_into_becomes_a_depthwise_conv():
    # after a ReLU, before the output: an exact depthwise 1x1 conv carrying scale and shift
    model = randomise(nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.BatchNorm2d(3)))
    gm = canonicalize(model, SHAPE)
    convs = [n for n in gm.graph.nodes if n.target == aten.conv2d.default]
    assert len(convs) == 2 and convs[1].args[-1] == 3
    assert_same(model, gm)


def test_unsupported_op_from_a_file_names_the_file(tmp_path):
    path = tmp_path / "sig.pt2"
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Sigmoid()).eval()
    torch.export.save(torch.export.export(model, (torch.zeros(1, *SHAPE),)), path)
    with pytest.raises(LavaconvError, match=rf"^{path}: unsupported op aten.sigmoid at 1"):
        load_model(path, SHAPE)


def test_shapes_propagate_on_the_result():
    gm = canonicalize(net(), SHAPE)
    propagate_shapes(gm)
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0][0]
    assert tuple(out.meta["tensor_meta"].shape) == (1, 3)


def test_an_exported_program_canonicalises_too():
    model = net()
    ep = torch.export.export(model, (torch.zeros(1, *SHAPE),))
    assert_same(model, canonicalize(ep, SHAPE))


def test_core_aten_program_is_normalised(tmp_path):
    """A .pt2 saved after core-ATen decomposition: convolution, addmm, mm (bias-free linear),
    max_pool2d_with_indices, _adaptive_avg_pool2d, view."""
    model = randomise(nn.Sequential(Net(), nn.ReLU(), nn.Linear(3, 2, bias=False)))
    ep = torch.export.export(model, (torch.zeros(1, *SHAPE),)).run_decompositions()
    seen = {n.target for n in ep.graph.nodes if n.op == "call_function"}
    assert {aten.convolution.default, aten.addmm.default, aten.mm.default} <= seen
    path = tmp_path / "core.pt2"
    torch.export.save(ep, path)
    gm = load_model(path, SHAPE).graph_module
    assert set(targets(gm)) <= CANONICAL
    assert_same(model, gm)


def test_avg_pool_into_the_output_needs_no_relu():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4),
                          nn.Flatten()).eval()
    gm = canonicalize(model, SHAPE)
    assert targets(gm) == [aten.conv2d.default, aten.relu.default, aten.avg_pool2d.default,
                           aten.flatten.using_ints]
    assert_same(model, gm)


def test_attributes_are_top_level():
    gm = canonicalize(net(), SHAPE)
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            assert isinstance(getattr(gm, node.target), torch.Tensor)
