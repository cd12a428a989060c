"""The two bundled example networks for 1x28x28 Fashion-MNIST (see examples/README.md)."""

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    """Bias-free "same" convolution followed by BatchNorm."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(cout))


class VGGStyle(nn.Module):
    """conv16-conv16-maxpool-conv32-conv32-maxpool-fc64-fc10, BatchNorm after every conv."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(conv_bn(1, 16), nn.ReLU(), conv_bn(16, 16))
        self.block2 = nn.Sequential(conv_bn(16, 32), nn.ReLU(inplace=True), conv_bn(32, 32))
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.block1(x)))
        x = self.pool(torch.relu(self.block2(x)))
        x = self.drop(F.relu(self.fc1(torch.flatten(x, 1))))
        return self.fc2(x)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus an identity or 1x1-conv+BN shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride)
        self.relu = nn.ReLU(inplace=True)  # one module used twice
        self.conv2 = conv_bn(cout, cout)
        self.shortcut = (conv_bn(cin, cout, stride, kernel=1) if stride != 1 or cin != cout
                         else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        return self.relu(out + self.shortcut(x))


class ResNetStyle(nn.Module):
    """Stem conv16, blocks 16 (identity), 32 (stride 2, 1x1 shortcut), 32 (identity), GAP, fc10."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(1, 16), nn.ReLU())
        self.layers = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, 2), BasicBlock(32, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))
