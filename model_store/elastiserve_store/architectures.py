"""Our own CNN definitions, buildable at any per-slot width configuration.

Every model here is built from a *width configuration* (channel count per slot, see
:mod:`.slots`), so a nested level is a real, dense, smaller network and not a masked copy of
the full one. The structure (which layers exist, which blocks have projection shortcuts) depends
only on the architecture arguments, never on the widths: that is what lets the weights of one
level be a prefix slice of the next.

**Depth.** The ResNets can also be built with some residual blocks *skipped* (named by their
hidden slot, e.g. ``"s1.b2"``): a skipped block is an ``nn.Identity`` at its place in
``layers``, so it holds no tensors and costs no MACs, and the other blocks keep their
state-dict names (``layers.<i>.…``), which is what lets levels of different depth share weights.
Only blocks with an identity shortcut can be skipped: a block that downsamples or changes the
stream's width (the first block of stages 2 and 3) carries the projection every later layer
depends on, and dropping it would leave a different, not a shallower, network, so asking for
it is refused (:class:`BlockSkipError`) instead of silently keeping its shortcut.

All models end in global average pooling, so any input height/width works (Fashion-MNIST 28x28,
CIFAR 32x32, larger ImageFolder images); max-pools use ``ceil_mode`` so a 28x28 input survives
VGG's five halvings.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import constructors, external
from .slots import Widths, tag

ArchArgs = Mapping[str, Any]


def _ch(base: int, mult: float) -> int:
    return max(1, round(base * mult))


def _conv_bn(cin: int, cout: int, in_slot: str | None, out_slot: str, *, k: int = 3,
             stride: int = 1, depthwise: bool = False) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    groups = cin if depthwise else 1
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)
    tag(conv, in_slot, out_slot)
    bn = nn.BatchNorm2d(cout)
    tag(bn, out_slot, out_slot, per_level=True)
    return conv, bn


def _head(cin: int, num_classes: int, in_slot: str | None) -> nn.Linear:
    """The classifier: never pruned on its output side, and owned by each level."""
    return tag(nn.Linear(cin, num_classes), in_slot, None, per_level=True)  # type: ignore[return-value]


# --------------------------------------------------------------------------- ResNet (CIFAR)


class BasicBlock(nn.Module):
    """Two 3x3 convs; a 1x1 projection shortcut where the stream changes (stride or stage)."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int, in_slot: str, mid_slot: str,
                 out_slot: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, mid, in_slot, mid_slot, stride=stride)
        self.conv2, self.bn2 = _conv_bn(mid, cout, mid_slot, out_slot)
        self.shortcut: nn.Module
        if stride != 1 or in_slot != out_slot:
            conv, bn = _conv_bn(cin, cout, in_slot, out_slot, k=1, stride=stride)
            self.shortcut = nn.Sequential(conv, bn)
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))  # type: ignore[no-any-return]


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (6n+2 layers), option-B (projection) shortcuts.

    ``skipped`` names residual blocks (by hidden slot) replaced by the identity; see the module
    docstring for which blocks may be skipped.
    """

    def __init__(self, depth: int, widths: Widths, in_channels: int, num_classes: int,
                 skipped: frozenset[str] = frozenset()) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1, self.bn1 = _conv_bn(in_channels, widths["s1"], None, "s1")
        self.relu = nn.ReLU(inplace=True)
        blocks: list[nn.Module] = []
        prev = "s1"
        for stage in (1, 2, 3):
            out_slot = f"s{stage}"
            for b in range(n):
                stride = 2 if stage > 1 and b == 0 else 1
                mid = f"s{stage}.b{b}"
                if mid in skipped:
                    blocks.append(nn.Identity())
                else:
                    blocks.append(BasicBlock(widths[prev], widths[mid], widths[out_slot],
                                             stride, prev, mid, out_slot))
                prev = out_slot
        self.skipped_blocks: tuple[str, ...] = tuple(
            name for name, _ in _resnet_blocks(depth) if name in skipped)
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = _head(widths["s3"], num_classes, "s3")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))  # type: ignore[no-any-return]


def _resnet_blocks(depth: int) -> list[tuple[str, bool]]:
    """(block name, may be skipped) for each residual block, in ``layers`` order."""
    n = (depth - 2) // 6
    return [(f"s{stage}.b{b}", not (stage > 1 and b == 0))
            for stage in (1, 2, 3) for b in range(n)]


def _resnet_widths(depth: int, args: ArchArgs) -> Widths:
    mult = float(args.get("width_mult", 1.0))
    n = (depth - 2) // 6
    widths: Widths = {}
    for stage, base in ((1, 16), (2, 32), (3, 64)):
        widths[f"s{stage}"] = _ch(base, mult)
        for b in range(n):
            widths[f"s{stage}.b{b}"] = _ch(base, mult)
    return widths


# --------------------------------------------------------------------------- VGG-16-BN (CIFAR)

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG-16 with batch norm, CIFAR style: conv stack, global pool, one linear classifier."""

    def __init__(self, widths: Widths, in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev: str | None = None
        i = 0
        cin = in_channels
        for item in _VGG16:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            slot = f"conv{i}"
            conv, bn = _conv_bn(cin, widths[slot], prev, slot)
            layers += [conv, bn, nn.ReLU(inplace=True)]
            prev, cin, i = slot, widths[slot], i + 1
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = _head(cin, num_classes, prev)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))  # type: ignore[no-any-return]


def _vgg_widths(args: ArchArgs) -> Widths:
    mult = float(args.get("width_mult", 1.0))
    convs = [c for c in _VGG16 if c != "M"]
    return {f"conv{i}": _ch(int(c), mult) for i, c in enumerate(convs)}


# --------------------------------------------------------------------------- AlexNet (CIFAR)

_ALEX = ((64, True), (192, True), (384, False), (256, False), (256, True))


class AlexNet(nn.Module):
    """AlexNet for small images: five 3x3 conv+BN layers, three pools, a 3-layer classifier.

    Batch norm is added (as in most CIFAR ports) so that each level can keep its own
    statistics; the two hidden fully connected layers are prunable slots, the last is the head.
    """

    def __init__(self, widths: Widths, in_channels: int, num_classes: int,
                 dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev: str | None = None
        cin = in_channels
        for i, (_, pool) in enumerate(_ALEX):
            slot = f"conv{i}"
            conv, bn = _conv_bn(cin, widths[slot], prev, slot)
            layers += [conv, bn, nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            prev, cin = slot, widths[slot]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        fc1 = tag(nn.Linear(cin, widths["fc1"]), prev, "fc1")
        fc2 = tag(nn.Linear(widths["fc1"], widths["fc2"]), "fc1", "fc2")
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), fc1, nn.ReLU(inplace=True),
            nn.Dropout(dropout), fc2, nn.ReLU(inplace=True),
            _head(widths["fc2"], num_classes, "fc2"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))  # type: ignore[no-any-return]


def _alexnet_widths(args: ArchArgs) -> Widths:
    mult = float(args.get("width_mult", 1.0))
    widths = {f"conv{i}": _ch(c, mult) for i, (c, _) in enumerate(_ALEX)}
    widths["fc1"] = _ch(1024, mult)
    widths["fc2"] = _ch(1024, mult)
    return widths


# --------------------------------------------------------------------------- MobileNetV2 (CIFAR)

# (expansion t, output channels c, repeats n, first stride s); CIFAR: stem and stage 2 stride 1.
_MBV2 = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
         (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (3x3), project (1x1); residual when the stream is unchanged."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int, expand: bool,
                 in_slot: str, hid_slot: str, out_slot: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expand:
            conv, bn = _conv_bn(cin, hidden, in_slot, hid_slot, k=1)
            layers += [conv, bn, nn.ReLU6(inplace=True)]
        else:
            hid_slot, hidden = in_slot, cin
        conv, bn = _conv_bn(hidden, hidden, hid_slot, hid_slot, stride=stride, depthwise=True)
        layers += [conv, bn, nn.ReLU6(inplace=True)]
        conv, bn = _conv_bn(hidden, cout, hid_slot, out_slot, k=1)
        layers += [conv, bn]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and in_slot == out_slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al.) adapted to 32x32 inputs as in the common CIFAR ports."""

    def __init__(self, widths: Widths, in_channels: int, num_classes: int) -> None:
        super().__init__()
        conv, bn = _conv_bn(in_channels, widths["stem"], None, "stem")
        layers: list[nn.Module] = [conv, bn, nn.ReLU6(inplace=True)]
        prev, b = "stem", 0
        for stage, (t, _, n, s) in enumerate(_MBV2):
            out_slot = f"st{stage}"
            for i in range(n):
                hid = f"b{b}.hidden"
                layers.append(InvertedResidual(
                    widths[prev], widths.get(hid, widths[prev]), widths[out_slot],
                    s if i == 0 else 1, t != 1, prev, hid, out_slot))
                prev, b = out_slot, b + 1
        conv, bn = _conv_bn(widths[prev], widths["last"], prev, "last", k=1)
        layers += [conv, bn, nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = _head(widths["last"], num_classes, "last")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))  # type: ignore[no-any-return]


def _mbv2_widths(args: ArchArgs) -> Widths:
    mult = float(args.get("width_mult", 1.0))
    widths: Widths = {"stem": _ch(32, mult)}
    prev, b = "stem", 0
    for stage, (t, c, n, _) in enumerate(_MBV2):
        widths[f"st{stage}"] = _ch(c, mult)
        for _i in range(n):
            if t != 1:
                widths[f"b{b}.hidden"] = widths[prev] * t
            prev, b = f"st{stage}", b + 1
    widths["last"] = _ch(1280, mult)
    return widths


# --------------------------------------------------------------------------- registry


class BlockSkipError(ValueError):
    """A requested skipped block does not exist or cannot be skipped."""


@dataclass(frozen=True)
class Block:
    """One residual block: its name (= its hidden slot), index in ``layers``, skippability."""

    name: str
    index: int
    skippable: bool

    @property
    def prefix(self) -> str:
        """State-dict prefix of the block's tensors."""
        return f"layers.{self.index}."


def _plain(make: Callable[[Widths, int, int], nn.Module]
           ) -> Callable[[Widths, int, int, frozenset[str]], nn.Module]:
    """Adapter for architectures without skippable blocks (the skip set is validated empty)."""
    return lambda w, c, k, _skipped: make(w, c, k)


@dataclass(frozen=True)
class Architecture:
    """How to compute an architecture's full widths and build it at any widths and depth."""

    full_widths: Callable[[ArchArgs], Widths]
    make: Callable[[Widths, int, int, frozenset[str]], nn.Module]
    blocks: tuple[Block, ...] = ()


def _resnet(depth: int) -> Architecture:
    return Architecture(
        lambda a: _resnet_widths(depth, a),
        lambda w, c, k, skipped: CifarResNet(depth, w, c, k, skipped),
        tuple(Block(name, i, ok) for i, (name, ok) in enumerate(_resnet_blocks(depth))),
    )


REGISTRY: dict[str, Architecture] = {
    "resnet20": _resnet(20),
    "resnet56": _resnet(56),
    "vgg16_bn": Architecture(_vgg_widths, _plain(VGG)),
    "alexnet": Architecture(_alexnet_widths, _plain(AlexNet)),
    "mobilenetv2": Architecture(_mbv2_widths, _plain(MobileNetV2)),
}

ARCHITECTURES: tuple[str, ...] = tuple(REGISTRY)


def _lookup(arch: str) -> Architecture:
    try:
        return REGISTRY[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(REGISTRY)}") from None


def full_widths(arch: str, arch_args: ArchArgs) -> Widths:
    """The unpruned width configuration (``arch_args['width_mult']`` scales it, default 1).

    A constructor reference (``torchvision:resnet18``, ``pkg.mod:factory``) is built by
    :mod:`.external` from its allow-listed constructor and recorded layout.
    """
    if constructors.is_external(arch):
        return external.full_widths(arch, arch_args)
    return _lookup(arch).full_widths(arch_args)


def blocks(arch: str) -> tuple[Block, ...]:
    """The residual blocks of ``arch`` (empty for architectures without them)."""
    if constructors.is_external(arch):
        return ()
    return _lookup(arch).blocks


def check_skipped(arch: str, skipped: Collection[str]) -> frozenset[str]:
    """Validate a set of blocks to skip; raises :class:`BlockSkipError` naming the culprit."""
    known = {b.name: b for b in blocks(arch)}
    for name in skipped:
        block = known.get(name)
        if block is None:
            hint = (f"its blocks are {', '.join(known)}" if known
                    else "it has no skippable residual blocks")
            raise BlockSkipError(f"{arch} has no residual block {name!r}; {hint}")
        if not block.skippable:
            raise BlockSkipError(
                f"block {name!r} of {arch} cannot be skipped: it has a projection shortcut "
                f"(it downsamples or changes the stream width), so removing it would change "
                f"the network's shape rather than its depth")
    return frozenset(skipped)


def skipped_blocks_of(model: nn.Module) -> tuple[str, ...]:
    """Names of the blocks a model built by :func:`build` skips (in ``layers`` order)."""
    value = getattr(model, "skipped_blocks", ())
    return tuple(value) if isinstance(value, tuple) else ()


def build(arch: str, arch_args: ArchArgs, widths: Mapping[str, int] | None = None,
          skipped_blocks: Collection[str] = ()) -> nn.Module:
    """Build ``arch`` at ``widths`` (default: full) without ``skipped_blocks`` (default: none).

    ``arch_args`` holds in_channels, num_classes and optionally width_mult. ``widths`` names
    every slot, a skipped block's hidden slot too (its value is then unused). A constructor
    reference is built by :func:`.external.build` (``arch_args``: its kwargs and layout).
    """
    if constructors.is_external(arch):
        check_skipped(arch, skipped_blocks)
        return external.build(arch, arch_args, widths)
    spec = _lookup(arch)
    skip = check_skipped(arch, skipped_blocks)
    full = spec.full_widths(arch_args)
    chosen = dict(full if widths is None else widths)
    if set(chosen) != set(full):
        extra, missing = set(chosen) - set(full), set(full) - set(chosen)
        raise ValueError(f"widths for {arch} do not match its slots: missing {sorted(missing)}, "
                         f"unknown {sorted(extra)}")
    bad = {k: v for k, v in chosen.items() if v < 1 or v > full[k]}
    if bad:
        raise ValueError(f"widths out of range (1..full) for {arch}: {bad}")
    in_ch = int(arch_args.get("in_channels", 3))
    classes = int(arch_args.get("num_classes", 10))
    return spec.make(chosen, in_ch, classes, skip)
