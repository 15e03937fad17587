"""detectron2's ResNet (the backbone of the R50/R101 Mask2Former zoo), with its exact state-dict names.

Module names mirror detectron2 (`stem.conv1.norm.running_mean`, `res3.0.shortcut.weight`, ...) so that
original checkpoints load by a prefix change only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .modeling_layers import CheckpointedLayer

BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (detectron2 `FrozenBN`); all are buffers."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class BatchNorm2d(nn.BatchNorm2d):
    """detectron2 `BN` / `SyncBN` at inference: no `num_batches_tracked` (a training-only counter).

    torch's BatchNorm inserts that counter into any state dict loaded without `_metadata` versions, so a
    plain `load_state_dict(model.state_dict())` would report it as unexpected; this class loads exactly
    the keys its own `state_dict()` writes. Original checkpoints that carry the counter go through the
    converter, which drops and reports it.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.register_buffer("num_batches_tracked", None)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        # skip _NormBase's version upgrade (it adds `num_batches_tracked`); a plain module load
        nn.Module._load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs)


def make_norm(norm: str, channels: int) -> nn.Module:
    """detectron2 `get_norm` for the kinds the zoo uses. BN/SyncBN keep no `num_batches_tracked`."""
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm in ("BN", "SyncBN", "nnSyncBN", "naiveSyncBN"):
        return BatchNorm2d(channels)
    if norm == "GN":
        return nn.GroupNorm(32, channels)
    if norm in ("", None):
        return nn.Identity()
    raise ValueError(f"unsupported ResNet norm {norm!r}; expected FrozenBN, BN, SyncBN or GN")


class ConvNorm(nn.Conv2d):
    """detectron2's `Conv2d`: a convolution with an optional `norm` child and activation, same key names."""

    def __init__(self, *args, norm: nn.Module | None = None, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation
        # weights drawn now (PyTorch's conv default); a model built on the meta device draws them in
        # `_init_weights` after `to_empty` instead
        self.initialized_at_construction = not self.weight.is_meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def conv_norm(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    norm: str,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
) -> ConvNorm:
    """The backbone's bias-free convolution + norm, "same" padding (dilation x kernel_size // 2)."""
    return ConvNorm(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=dilation * (kernel_size // 2),
        dilation=dilation,
        groups=groups,
        bias=False,
        norm=make_norm(norm, out_channels),
    )


class BasicStem(nn.Module):
    """7x7/2 convolution, ReLU, 3x3/2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        self.conv1 = conv_norm(in_channels, out_channels, 7, norm, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class DeepLabStem(nn.Module):
    """Three 3x3 convolutions (the first strided) then a 3x3/2 max-pool, as DeepLab's ResNet-C."""

    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        half = out_channels // 2
        self.conv1 = conv_norm(in_channels, half, 3, norm, stride=2)
        self.conv2 = conv_norm(half, half, 3, norm)
        self.conv3 = conv_norm(half, out_channels, 3, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> ConvNorm | None:
    if in_channels == out_channels:
        return None
    return conv_norm(in_channels, out_channels, 1, norm, stride=stride)


class BottleneckBlock(CheckpointedLayer):
    """1x1 → 3x3 (grouped, dilated) → 1x1 residual block; the stride sits in the 1x1 or the 3x3 conv."""

    def __init__(
        self,
        in_channels,
        out_channels,
        bottleneck_channels,
        stride,
        num_groups,
        norm,
        stride_in_1x1,
        dilation,
    ):
        super().__init__()
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv_norm(in_channels, bottleneck_channels, 1, norm, stride=stride_1x1)
        self.conv2 = conv_norm(
            bottleneck_channels, bottleneck_channels, 3, norm, stride_3x3, dilation, groups=num_groups
        )
        self.conv3 = conv_norm(bottleneck_channels, out_channels, 1, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + shortcut)


class BasicBlock(CheckpointedLayer):
    """Two 3x3 convolutions (ResNet-18/34)."""

    def __init__(self, in_channels, out_channels, stride, norm, dilation=1):
        super().__init__()
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = conv_norm(in_channels, out_channels, 3, norm, stride, dilation)
        self.conv2 = conv_norm(out_channels, out_channels, 3, norm, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + shortcut)


class ResNetBackbone(nn.Module):
    """detectron2 `build_resnet_backbone` (plus DeepLab's stem, res4 dilation and res5 multi-grid options).

    Returns a dict res2..res5 of channels-first maps at strides 4, 8, 16, 32 (less with dilation).
    """

    def __init__(
        self,
        depth: int = 50,
        stem_type: str = "basic",
        stem_out_channels: int = 64,
        res2_out_channels: int = 256,
        num_groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
        res4_dilation: int = 1,
        res5_dilation: int = 1,
        res5_multi_grid: Sequence[int] = (1, 1, 1),
        norm: str = "FrozenBN",
        in_channels: int = 3,
    ):
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"unsupported ResNet depth {depth}; expected one of {sorted(BLOCKS_PER_STAGE)}")
        if res4_dilation not in (1, 2) or res5_dilation not in (1, 2, 4):
            raise ValueError(f"unsupported dilations res4={res4_dilation} res5={res5_dilation}")
        stems = {"basic": BasicStem, "deeplab": DeepLabStem}
        if stem_type not in stems:
            raise ValueError(f"unknown ResNet stem_type {stem_type!r}; expected 'basic' or 'deeplab'")
        self.stem = stems[stem_type](in_channels, stem_out_channels, norm)
        bottleneck = depth >= 50
        if not bottleneck and res2_out_channels != 64:
            raise ValueError("ResNet-18/34 need res2_out_channels=64")
        in_ch, out_ch = stem_out_channels, res2_out_channels
        mid_ch = num_groups * width_per_group
        stride_total = 4
        self.out_channels: dict[str, int] = {}
        self.out_strides: dict[str, int] = {}
        self.stage_names = ["res2", "res3", "res4", "res5"]
        for idx, (name, num_blocks) in enumerate(zip(self.stage_names, BLOCKS_PER_STAGE[depth])):
            dilation = {"res4": res4_dilation, "res5": res5_dilation}.get(name, 1)
            first_stride = 1 if idx == 0 or dilation > 1 else 2
            stride_total *= first_stride
            grid = [1] * num_blocks
            if name == "res5" and any(g != 1 for g in res5_multi_grid):
                if len(res5_multi_grid) != num_blocks:
                    raise ValueError(
                        f"res5_multi_grid needs {num_blocks} entries, got {list(res5_multi_grid)}"
                    )
                grid = list(res5_multi_grid)
            blocks = []
            for b in range(num_blocks):
                block_dilation = dilation * grid[b]
                stride = first_stride if b == 0 else 1
                if bottleneck:
                    blocks.append(
                        BottleneckBlock(
                            in_ch, out_ch, mid_ch, stride, num_groups, norm, stride_in_1x1, block_dilation
                        )
                    )
                else:
                    blocks.append(BasicBlock(in_ch, out_ch, stride, norm, block_dilation))
                in_ch = out_ch
            self.add_module(name, nn.Sequential(*blocks))
            self.out_channels[name] = out_ch
            self.out_strides[name] = stride_total
            out_ch *= 2
            mid_ch *= 2

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(pixel_values)
        features = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            features[name] = x
        return features
