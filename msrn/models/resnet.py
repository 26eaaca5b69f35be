"""ResNet in torchvision's key layout, so ImageNet files such as resnet101-5d3b4d8f.pth load as-is.

Written here because torchvision is an install hazard (it must match torch's build exactly).
`forward_features` returns the outputs of layer2, layer3 and layer4: the three depths MSRN reads.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, as torchvision's v1.5) -> 1x1 with 4x expansion."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


# name -> (block, blocks per stage, stem/stage widths)
Block = type[BasicBlock] | type[Bottleneck]
RESNETS: dict[str, tuple[Block, tuple[int, ...], tuple[int, ...]]] = {
    "resnet101": (Bottleneck, (3, 4, 23, 3), (64, 64, 128, 256, 512)),
    "resnet50": (Bottleneck, (3, 4, 6, 3), (64, 64, 128, 256, 512)),
    "resnet18": (BasicBlock, (2, 2, 2, 2), (64, 64, 128, 256, 512)),
    "resnet_tiny": (BasicBlock, (1, 1, 1, 1), (16, 16, 32, 64, 128)),
}


class ResNet(nn.Module):
    def __init__(self, arch: str = "resnet101"):
        super().__init__()
        block, blocks, widths = RESNETS[arch]
        self.arch = arch
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = widths[0]
        self.layer1 = self._stage(block, widths[1], blocks[0], 1)
        self.layer2 = self._stage(block, widths[2], blocks[1], 2)
        self.layer3 = self._stage(block, widths[3], blocks[2], 2)
        self.layer4 = self._stage(block, widths[4], blocks[3], 2)
        # channels at the three depths MSRN reads (after layer2, layer3, layer4)
        self.channels = tuple(w * block.expansion for w in widths[2:])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        del self.inplanes

    def _stage(self, block: Block, planes: int, n: int, stride: int) -> nn.Sequential:
        down: nn.Module | None = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, down)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(n - 1)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor, depth: int = 3) -> tuple[torch.Tensor, ...]:
        """The outputs of layer2, layer3, layer4; with depth < 3 only the first `depth` (deeper ones unrun)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # B x 64 x H/4 x W/4
        x = self.layer1(x)
        c2 = self.layer2(x)  # B x 512 x H/8 x W/8 (resnet101)
        if depth == 1:
            return (c2,)
        c3 = self.layer3(c2)  # B x 1024 x H/16 x W/16
        if depth == 2:
            return c2, c3
        c4 = self.layer4(c3)  # B x 2048 x H/32 x W/32
        return c2, c3, c4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled last-stage features, B x channels[-1]."""
        return self.forward_features(x)[2].mean((2, 3))
