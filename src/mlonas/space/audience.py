"""LeaSE's audience: a hand-designed network with learnable weights only (ResNet-18).

torchvision's ResNet with BasicBlocks; for 32x32 CIFAR images the stem is adapted as is
customary for CIFAR ResNets (He et al. 2016, section 4.2): a 3x3 stride-1 convolution and
no max-pool, so the last stage still sees 4x4 feature maps instead of 1x1. ``blocks`` =
[2, 2, 2, 2] and ``width`` = 64 is ResNet-18 (the papers' "R18").

``width`` (``schemes.lease.audience_width``) exists for the demo: at ResNet-18's width the
audience costs about as much as the rest of a LeaSE step at the demo's size (explainer C=4,
16x16 images), so the demo and the tests use [1, 1, 1, 1] at width 8.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


class AudienceResNet(ResNet):
    """torchvision's ResNet (its BasicBlock, stage builder, forward and initialisation) with
    the CIFAR stem and stage widths ``width``, 2, 4 and 8 x ``width`` (ResNet: 64).

    ``ResNet.__init__`` fixes the widths at 64-512, so this constructor repeats its few
    lines with ``width``; everything else is torchvision's. At width 64 the network has
    exactly the modules, names and shapes of ``resnet18`` with the CIFAR stem
    (tests/test_space.py loads one into the other and compares outputs).
    """

    def __init__(self, blocks: Sequence[int], num_classes: int, width: int) -> None:
        if len(blocks) != 4:
            raise ValueError(f"a torchvision ResNet has 4 stages, got blocks={list(blocks)}")
        nn.Module.__init__(self)
        # what ResNet._make_layer reads; BasicBlock accepts only base_width 64 and 1 group
        self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()  # type: ignore[assignment]
        self.layer1 = self._make_layer(BasicBlock, width, blocks[0])
        self.layer2 = self._make_layer(BasicBlock, 2 * width, blocks[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, 4 * width, blocks[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, 8 * width, blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
