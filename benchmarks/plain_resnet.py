"""A plain CIFAR ResNet-20, written as simply as possible, as the speed reference.

He et al. 2015, section 4.2: a 3x3 stem to 16 channels, three stages of three basic blocks at
16, 32 and 64 channels (stride 2 at the start of stages 2 and 3), option-A shortcuts (subsample
and zero-pad the new channels), global average pool, a linear layer. 269,722 parameters.

It imports nothing from cortexnet, so that the benchmarks compare cortexnet against code that
shares none of its abstractions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Block(nn.Module):
    """conv-bn-relu-conv-bn, plus the shortcut, then a ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.stride != 1 or self.pad:
            x = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.pad))
        return F.relu(out + x)


class PlainResNet20(nn.Module):
    """ResNet-20 for 32x32 images."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i, width in enumerate((16, 32, 64)):
            for j in range(3):
                layers.append(Block(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(x.mean(dim=(2, 3)))


if __name__ == "__main__":
    n = sum(p.numel() for p in PlainResNet20().parameters())
    print(f"PlainResNet20: {n} parameters")
    print(PlainResNet20()(torch.randn(2, 3, 32, 32)).shape)
