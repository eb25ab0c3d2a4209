"""LeaSE's audience: a hand-designed network with learnable weights only (ResNet-18).

torchvision's ResNet with BasicBlocks; for 32x32 CIFAR images the stem is adapted as is
customary for CIFAR ResNets (He et al. 2016, section 4.2): a 3x3 stride-1 convolution and
no max-pool, so the last stage still sees 4x4 feature maps instead of 1x1. ``blocks`` =
[2, 2, 2, 2] is ResNet-18 (the papers' "R18"); the demo uses [1, 1, 1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


def audience_resnet(blocks: Sequence[int], num_classes: int) -> ResNet:
    if len(blocks) != 4:
        raise ValueError(f"a torchvision ResNet has 4 stages, got blocks={list(blocks)}")
    net = ResNet(BasicBlock, list(blocks), num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()  # type: ignore[assignment]
    return net
