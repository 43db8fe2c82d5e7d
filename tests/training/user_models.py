"""Small user-written models for ``--model package.module:factory`` tests: one the nested
bundle can hold, and one per structure it refuses."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class TinyResidual(nn.Module):
    """Stem, a residual block with a depthwise conv inside, pooled linear head."""

    def __init__(self, num_classes: int, norm: type[nn.Module] | None = None,
                 groups: int = 1) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 8)
        self.body = nn.Sequential(_conv_bn(8, 8, groups=groups), _conv_bn(8, 8, groups=8))
        self.norm = norm(8) if norm is not None else nn.Identity()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.norm(x + self.body(x))
        out: torch.Tensor = self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
        return out


def tiny_residual(num_classes: int = 4) -> nn.Module:
    return TinyResidual(num_classes)


def with_layer_norm(num_classes: int = 4) -> nn.Module:
    return TinyResidual(num_classes, norm=lambda c: nn.GroupNorm(2, c))  # type: ignore[arg-type]


def with_grouped_conv(num_classes: int = 4) -> nn.Module:
    return TinyResidual(num_classes, groups=2)


class Concat(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.a, self.b = _conv_bn(3, 4), _conv_bn(3, 4)
        self.mix = _conv_bn(8, 8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mix(torch.cat([self.a(x), self.b(x)], dim=1))
        out: torch.Tensor = self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
        return out


def with_concat(num_classes: int = 4) -> nn.Module:
    return Concat(num_classes)


class ConvHead(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = _conv_bn(3, 8)
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.head(self.body(x)), 1), 1)


def with_conv_head(num_classes: int = 4) -> nn.Module:
    return ConvHead(num_classes)


def _pooled_head(x: torch.Tensor, fc: nn.Module) -> torch.Tensor:
    out: torch.Tensor = fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
    return out


class DenseBlock(nn.Module):
    """DenseNet-style: each layer's output is concatenated onto everything before it."""

    def __init__(self, num_classes: int, growth: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 8)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(8 + i * growth), nn.ReLU(),
                          nn.Conv2d(8 + i * growth, 2 * growth, 1, bias=False),
                          nn.BatchNorm2d(2 * growth), nn.ReLU(),
                          nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False))
            for i in range(layers))
        self.fc = nn.Linear(8 + layers * growth, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return _pooled_head(x, self.fc)


def dense_block(num_classes: int = 4) -> nn.Module:
    return DenseBlock(num_classes)


class InceptionBlock(nn.Module):
    """Inception-style: parallel branches of different widths concatenated, then mixed."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 8)
        self.b1 = nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.b3 = nn.Sequential(_conv_bn(8, 4), _conv_bn(4, 6))
        self.mix = nn.Sequential(nn.Conv2d(10, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return _pooled_head(self.mix(torch.cat([self.b1(x), self.b3(x)], dim=1)), self.fc)


def inception_block(num_classes: int = 4) -> nn.Module:
    return InceptionBlock(num_classes)


class ResNeXtBlock(nn.Module):
    """ResNeXt-style bottleneck: 1x1 to 16, a 3x3 with groups=4 (not depthwise: 4 channels a
    group, so the narrowest of 4 levels keeps one in each), 1x1 back to 8, add."""

    def __init__(self, num_classes: int, groups: int = 4) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 8)
        self.reduce = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16),
                                    nn.ReLU())
        self.grouped = _conv_bn(16, 16, groups=groups)
        self.expand = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = nn.functional.relu(x + self.expand(self.grouped(self.reduce(x))))
        return _pooled_head(x, self.fc)


def resnext_block(num_classes: int = 4) -> nn.Module:
    return ResNeXtBlock(num_classes)


class ChunkBlock(nn.Module):
    """ShuffleNet-style split: half the channels bypass, half go through a conv."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 8)
        self.branch = _conv_bn(4, 4)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.chunk(self.stem(x), 2, dim=1)
        return _pooled_head(torch.cat([a, self.branch(b)], dim=1), self.fc)


def chunk_block(num_classes: int = 4) -> nn.Module:
    return ChunkBlock(num_classes)


def small_densenet(num_classes: int = 4) -> nn.Module:
    """torchvision's own DenseNet (dense blocks: every layer's output concatenated onto its
    input, transitions between blocks), two blocks of two layers: a few seconds to prune."""
    from torchvision.models import DenseNet

    model: nn.Module = DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16,
                                bn_size=2, num_classes=num_classes)
    return model


def small_resnext(num_classes: int = 4) -> nn.Module:
    """torchvision's own ResNeXt bottlenecks (3x3 convolutions in 8 groups of 4 channels at
    the first stage), one block a stage."""
    from torchvision.models.resnet import Bottleneck, ResNet

    model: nn.Module = ResNet(Bottleneck, [1, 1, 1, 1], groups=8, width_per_group=4,
                              num_classes=num_classes)
    return model


class ImageConcat(nn.Module):
    """The image itself concatenated beside a conv's output: a part no level cuts."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.a = _conv_bn(3, 8)
        self.mix = _conv_bn(11, 8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pooled_head(self.mix(torch.cat([x, self.a(x)], dim=1)), self.fc)


def image_concat(num_classes: int = 4) -> nn.Module:
    return ImageConcat(num_classes)


class MixedGroups(nn.Module):
    """One slot read by a conv in 2 groups and one in 4: no one cut fits both."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16)
        self.two = _conv_bn(16, 16, groups=2)
        self.four = _conv_bn(16, 16, groups=4)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return _pooled_head(self.two(x) + self.four(x), self.fc)


def mixed_groups(num_classes: int = 4) -> nn.Module:
    return MixedGroups(num_classes)


class GroupedAfterConcat(nn.Module):
    """A grouped conv reading a concatenation: its groups would straddle the parts."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.a, self.b = _conv_bn(3, 8), _conv_bn(3, 8)
        self.grouped = _conv_bn(16, 16, groups=2)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pooled_head(self.grouped(torch.cat([self.a(x), self.b(x)], dim=1)), self.fc)


def grouped_after_concat(num_classes: int = 4) -> nn.Module:
    return GroupedAfterConcat(num_classes)
