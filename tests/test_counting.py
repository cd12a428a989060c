"""MAC counts against published figures; SOP counts against an independent recount."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lavaconv.cost.counting import ann_macs, fan_out, snn_synops
from lavaconv.frontend import canonicalize
from lavaconv.ir.network import IF, Conv, Dense, Input, Network, Readout


def _bn_conv(cin, cout, k, stride=1):
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride):
        super().__init__()
        self.body = nn.Sequential(*_bn_conv(cin, width, 3, stride), nn.ReLU(),
                                  *_bn_conv(width, width, 3))
        self.short = (nn.Sequential(*_bn_conv(cin, width, 1, stride))
                      if stride != 1 or cin != width else nn.Identity())

    def forward(self, x):
        return F.relu(self.body(x) + self.short(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride):
        super().__init__()
        out = width * 4
        self.body = nn.Sequential(*_bn_conv(cin, width, 1), nn.ReLU(),
                                  *_bn_conv(width, width, 3, stride), nn.ReLU(),  # v1.5
                                  *_bn_conv(width, out, 1))
        self.short = (nn.Sequential(*_bn_conv(cin, out, 1, stride))
                      if stride != 1 or cin != out else nn.Identity())

    def forward(self, x):
        return F.relu(self.body(x) + self.short(x))


def resnet(block, depths) -> nn.Module:
    layers = [*_bn_conv(3, 64, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, n in enumerate(depths):
        width = 64 * 2**i
        for j in range(n):
            layers.append(block(cin, width, 2 if (j == 0 and i > 0) else 1))
            cin = width * block.expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)


def vgg16() -> nn.Module:
    layers, cin = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    layers += [nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
               nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 1000)]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("name,build,gmacs", [
    ("resnet18", lambda: resnet(Basic, [2, 2, 2, 2]), 1.814),
    ("resnet34", lambda: resnet(Basic, [3, 4, 6, 3]), 3.664),
    ("resnet50", lambda: resnet(Bottleneck, [3, 4, 6, 3]), 4.089),
    ("vgg16", vgg16, 15.47),
])
def test_published_mac_counts(name, build, gmacs):
    torch.manual_seed(0)
    gm = canonicalize(build().eval(), (3, 224, 224), atol=1e-2)
    total = sum(layer.ops for layer in ann_macs(gm, (3, 224, 224))) / 1e9
    assert total == pytest.approx(gmacs, rel=0.005), name


@pytest.mark.parametrize("stride,padding,groups", [(1, 1, 1), (2, 1, 1), (2, 0, 2), (3, 2, 1)])
def test_conv_fan_out_matches_recount(stride, padding, groups):
    rng = np.random.default_rng(stride + padding)
    src = (4, 9, 11)
    syn = Conv("a", "b", rng.normal(size=(6, 4 // groups, 3, 3)), (stride, stride),
               (padding, padding), groups)
    counts = rng.integers(0, 5, size=src).astype(np.float64)
    # independent recount: convolve the spike-count map with an all-ones kernel
    recount = F.conv2d(torch.from_numpy(counts)[None], torch.ones(6, 4 // groups, 3, 3,
                       dtype=torch.float64), stride=stride, padding=padding, groups=groups).sum()
    assert float((counts * fan_out(syn, src)).sum()) == float(recount)


def test_snn_synops_per_item_and_graded_input():
    w1 = np.ones((2, 1, 3, 3))
    dense = np.array([[1.0, 0.0] * 9, [0.0, 1.0] * 9])
    net = Network({
        "x": Input((1, 3, 3)),
        "h": IF((2, 3, 3), np.zeros((2, 1, 1))),
        "output": Readout((2,), np.zeros(2)),
    }, [Conv("x", "h", w1, padding=(1, 1)), Dense("h", "output", dense)])
    spikes = {"h": np.full((2, 3, 3), 4.0)}
    events = np.full((1, 3, 3), 10.0)
    ops = snn_synops(net, spikes, events, items=2)
    # every input pixel of a 3x3 map reaches 2 channels x (4/6/9 positions); total 2 * 49
    assert ops[0].ops == pytest.approx(10 * 2 * 49 / 2) and ops[0].graded
    assert ops[1].ops == pytest.approx(4 * 18 / 2) and not ops[1].graded
