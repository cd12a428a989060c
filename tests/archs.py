"""Architectures users bring, written here (torchvision is not a dependency), for CIFAR-size
inputs (3, 32, 32), with random weights and BatchNorm statistics.

The block structure follows the originals; ``width`` scales the channel counts (the tests use
narrow nets to stay fast; the graph is the same at any width).
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_SHAPE = (3, 32, 32)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics (eval mode), so that BN folding matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model.eval()


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block (also CIFAR ResNet-20's, with a 1x1-conv projection)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(*_conv_bn(cin, planes, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (1x1, 3x3 with the stride, 1x1 x4)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = _conv_bn(planes, planes * 4, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(*_conv_bn(cin, planes * 4, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet: 7x7/2 stem, max-pool, four stages, adaptive pool, fc; the forward
    flattens with ``torch.flatten(x, 1)`` as torchvision does."""

    def __init__(self, block: type, layers: list[int], width: int = 64,
                 classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, width, 7, 2)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = width, []
        for i, n in enumerate(layers):
            planes = width * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if i and not j else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2): 3x3 stem, three stages of n basic blocks (16, 32, 64
    channels x width/16), 1x1-conv projections (option B), global mean; ``x.view(x.size(0),
    -1)`` before the fc."""

    def __init__(self, n: int = 3, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.conv, self.bn = _conv_bn(3, width, 3)
        blocks, cin = [], width
        for i in range(3):
            for j in range(n):
                blocks.append(BasicBlock(cin, width * 2 ** i, 2 if i and not j else 1))
                cin = width * 2 ** i
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(torch.relu(self.bn(self.conv(x))))
        x = x.mean(dim=(2, 3), keepdim=True)
        return self.fc(x.view(x.size(0), -1))


VGG_CFGS = {11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
            16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                 512, 512, 512, "M"]}


class VGG(nn.Module):
    """torchvision's VGG-11/16-BN features; at 32x32 the last map is 1x1, so the adaptive pool
    is (1, 1) and the classifier (Linear-ReLU-Dropout x2, Linear) is sized for it."""

    def __init__(self, depth: int, width: int = 64, hidden: int = 512,
                 classes: int = 10) -> None:
        super().__init__()
        layers, cin = [], 3
        for v in VGG_CFGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                cout = v * width // 64
                layers += [*_conv_bn(cin, cout, 3), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(
            nn.Linear(cin, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(x.reshape(x.shape[0], -1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1 linear projection,
    identity shortcut (no ReLU after the add) when the shape allows."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True),
                   *_conv_bn(hidden, cout, 1)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 for CIFAR (stride-1 stem), torchvision's (t, c, n, s) table cut to
    ``stages``, channels x width/32; ReLU6 throughout, Hardtanh(0, 6) in the last layer."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1)]

    def __init__(self, width: int = 32, stages: int = 5, last: int = 1280,
                 classes: int = 10) -> None:
        super().__init__()
        scale = width / 32
        cin = width
        layers: list[nn.Module] = [*_conv_bn(3, cin, 3), nn.ReLU6(inplace=True)]
        for t, c, n, s in self.SETTINGS[:stages]:
            cout = max(int(c * scale), 4)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers += [*_conv_bn(cin, last, 1), nn.Hardtanh(0.0, 6.0)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-1x1 conv (bottleneck), BN-ReLU-3x3 conv, concatenated."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(torch.relu(self.norm1(x)))
        return torch.cat([x, self.conv2(torch.relu(self.norm2(y)))], 1)


class DenseNet(nn.Module):
    """A DenseNet-BC: stem, dense block, transition (BN-ReLU-1x1 conv-avg-pool), dense block,
    BN-ReLU, global pool, fc."""

    def __init__(self, growth: int = 8, layers: int = 3, classes: int = 10) -> None:
        super().__init__()
        cin = 2 * growth
        self.stem = nn.Conv2d(3, cin, 3, padding=1, bias=False)
        block1 = []
        for _ in range(layers):
            block1.append(DenseLayer(cin, growth))
            cin += growth
        self.block1 = nn.Sequential(*block1)
        self.trans = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(),
                                   nn.Conv2d(cin, cin // 2, 1, bias=False), nn.AvgPool2d(2))
        cin //= 2
        block2 = []
        for _ in range(layers):
            block2.append(DenseLayer(cin, growth))
            cin += growth
        self.block2 = nn.Sequential(*block2)
        self.norm = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.trans(self.block1(self.stem(x))))
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.norm(x)), 1)
        return self.fc(x.flatten(1))


def resnet18(width: int = 64) -> nn.Module:
    return randomize(ResNet(BasicBlock, [2, 2, 2, 2], width))


def resnet34(width: int = 64) -> nn.Module:
    return randomize(ResNet(BasicBlock, [3, 4, 6, 3], width))


def resnet50(width: int = 64) -> nn.Module:
    return randomize(ResNet(Bottleneck, [3, 4, 6, 3], width))


def vgg11_bn(width: int = 64) -> nn.Module:
    return randomize(VGG(11, width, hidden=8 * width))


def vgg16_bn(width: int = 64) -> nn.Module:
    return randomize(VGG(16, width, hidden=8 * width))


def resnet20(width: int = 16) -> nn.Module:
    return randomize(CifarResNet(3, width))


def mobilenet_v2(width: int = 32) -> nn.Module:
    return randomize(MobileNetV2(width, last=40 * width))


def densenet(growth: int = 12) -> nn.Module:
    return randomize(DenseNet(growth))
