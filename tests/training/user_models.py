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
