"""MSDeformAttn pixel decoder: deformable encoder over 1/8-1/32 features, FPN up to 1/4, mask features."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers_blocks import blockwise_inference, count_blocked, rows_per_block
from .layers_position import SinePositionEmbedding
from .modeling_deform_attn import MSDeformAttn
from .modeling_layers import CheckpointedLayer, CheckpointingSwitch
from .modeling_resnet import ConvNorm


def _group_norm(norm: str, channels: int) -> nn.Module | None:
    if norm == "GN":
        return nn.GroupNorm(32, channels)
    if norm in ("", None):
        return None
    raise ValueError(f"unsupported pixel decoder norm {norm!r}; expected 'GN' or ''")


class DeformableEncoderLayer(CheckpointedLayer):
    """Post-norm layer: deformable self-attention, then a ReLU FFN."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes):
        if self.training or not blockwise_inference(src, self.linear1.weight):
            attended = self.self_attn(src + pos, reference_points, src, spatial_shapes)
            src = self.norm1(src + self.dropout1(attended))
            return self.norm2(src + self.dropout3(self._ffn(src)))
        # inference: everything after the value projection is per token, so it runs a block of tokens at a
        # time (`inference_blocks`): the layer's many (B, S, C)-sized temporaries and the d_ffn-wide hidden
        # activations (90 MB at 800x1333) never exist whole
        value = self.self_attn.padded_value(src, spatial_shapes)
        out = torch.empty_like(src)
        step = rows_per_block(src.shape[0] * self.linear1.out_features)
        if step < src.shape[1]:
            count_blocked("pixel_decoder_layer")
        for start in range(0, src.shape[1], step):
            part = slice(start, start + step)
            x = src[:, part]
            x = self.norm1(
                x + self.self_attn.attend(x + pos[:, part], reference_points[:, part], value, spatial_shapes)
            )
            out[:, part] = self.norm2(x + self._ffn(x))
        return out

    def _ffn(self, src: torch.Tensor) -> torch.Tensor:
        """linear2(dropout(relu(linear1(x)))). The ReLU is in place only without autograd: linear1's output is
        a view of its 2-D product, and autograd replays an in-place op on a view with two full-size copies
        and a zero-filled buffer in the backward (~65 ms per layer at 384x384)."""
        hidden = self.linear1(src)
        return self.linear2(self.dropout2(F.relu(hidden, inplace=not hidden.requires_grad)))


class DeformableEncoder(CheckpointingSwitch, nn.Module):
    """Stack of deformable encoder layers (the original's `encoder.layers.*`); `gradient_checkpointing = True`
    recomputes every layer in the backward pass (each layer is a `GradientCheckpointingLayer`)."""

    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(**layer_kwargs) for _ in range(num_layers))

    @staticmethod
    def reference_points(spatial_shapes: list[tuple[int, int]], n_levels: int, device) -> torch.Tensor:
        """Pixel centres of every level normalised to [0, 1], repeated for all levels: (1, S, L, 2)."""
        refs = []
        for height, width in spatial_shapes:
            # arange + 0.5 equals the original's linspace(0.5, n - 0.5, n) bit for bit (the step is exactly
            # 1) and, unlike linspace, keeps n symbolic under torch.export
            ref_y, ref_x = torch.meshgrid(
                torch.arange(height, dtype=torch.float32, device=device) + 0.5,
                torch.arange(width, dtype=torch.float32, device=device) + 0.5,
                indexing="ij",
            )
            refs.append(torch.stack((ref_x.reshape(-1) / width, ref_y.reshape(-1) / height), -1))
        return torch.cat(refs, 0)[None, :, None, :].expand(1, -1, n_levels, 2)

    def forward(self, src, pos, spatial_shapes):
        reference_points = self.reference_points(spatial_shapes, len(spatial_shapes), src.device).to(
            src.dtype
        )
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes)
        return src


class DeformableTransformer(nn.Module):
    """Holds the level embedding and the encoder (state-dict prefix `transformer.`)."""

    def __init__(self, d_model, n_heads, num_layers, d_ffn, dropout, n_levels, n_points):
        super().__init__()
        self.encoder = DeformableEncoder(
            num_layers,
            d_model=d_model,
            d_ffn=d_ffn,
            dropout=dropout,
            n_levels=n_levels,
            n_heads=n_heads,
            n_points=n_points,
        )
        self.level_embed = nn.Parameter(torch.zeros(n_levels, d_model))

    def forward(self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]):
        spatial_shapes = [tuple(src.shape[-2:]) for src in srcs]
        src_flat = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        pos_flat = torch.cat(
            [
                pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                for lvl, pos in enumerate(pos_embeds)
            ],
            1,
        )
        return self.encoder(src_flat, pos_flat, spatial_shapes), spatial_shapes


class MSDeformAttnPixelDecoder(nn.Module):
    """The original `MSDeformAttnPixelDecoder` with its state-dict names.

    Returns (mask_features at 1/4, multi-scale features [1/32, 1/16, 1/8] for the transformer decoder).
    """

    def __init__(self, config, feature_channels: dict[str, int], feature_strides: dict[str, int]):
        super().__init__()
        conv_dim, mask_dim = config.feature_size, config.mask_feature_size
        self.in_features = sorted(feature_channels, key=lambda k: feature_strides[k])
        missing = [f for f in config.deformable_in_features if f not in feature_channels]
        if missing:
            raise ValueError(
                f"deformable_in_features {missing} not produced by the backbone {self.in_features}"
            )
        self.transformer_in_features = sorted(config.deformable_in_features, key=lambda k: feature_strides[k])
        n_levels = len(self.transformer_in_features)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(feature_channels[f], conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for f in self.transformer_in_features[::-1]
        )
        self.transformer = DeformableTransformer(
            conv_dim,
            config.num_attention_heads,
            config.encoder_layers,
            config.encoder_feedforward_dim,
            config.dropout,
            n_levels,
            config.encoder_n_points,
        )
        self.pe_layer = SinePositionEmbedding(conv_dim // 2)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        self.num_feature_levels = 3  # the transformer decoder always consumes 3 scales
        min_stride = min(feature_strides[f] for f in self.transformer_in_features)
        self.num_fpn_levels = int(math.log2(min_stride) - math.log2(config.common_stride))
        norm = config.pixel_decoder_norm
        use_bias = norm in ("", None)
        self.fpn_features = self.in_features[: self.num_fpn_levels]
        for idx, name in enumerate(self.fpn_features):
            self.add_module(
                f"adapter_{idx + 1}",
                ConvNorm(
                    feature_channels[name], conv_dim, 1, bias=use_bias, norm=_group_norm(norm, conv_dim)
                ),
            )
            self.add_module(
                f"layer_{idx + 1}",
                ConvNorm(
                    conv_dim,
                    conv_dim,
                    3,
                    padding=1,
                    bias=use_bias,
                    norm=_group_norm(norm, conv_dim),
                    activation=functools.partial(F.relu, inplace=True),  # on the fresh norm output
                ),
            )

    def forward(self, features: dict[str, torch.Tensor]):
        srcs, pos = [], []
        for idx, name in enumerate(self.transformer_in_features[::-1]):
            x = features[name]
            srcs.append(self.input_proj[idx](x))
            pos.append(self.pe_layer(x))
        memory, spatial_shapes = self.transformer(srcs, pos)
        batch = memory.shape[0]
        outs = [
            level.transpose(1, 2).reshape(batch, -1, h, w)
            for level, (h, w) in zip(memory.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes)
        ]
        for idx in reversed(range(self.num_fpn_levels)):
            name = self.fpn_features[idx]
            lateral = getattr(self, f"adapter_{idx + 1}")(features[name])
            # outs[-1] is a transposed (channels-last) view of the encoder memory: interpolating it
            # contiguous takes the planar kernel, 6x faster here (values equal up to float rounding)
            top_down = F.interpolate(
                outs[-1].contiguous(), size=lateral.shape[-2:], mode="bilinear", align_corners=False
            )
            # in place: the fresh conv/norm output is not needed by autograd, and at 1/4 resolution each
            # full-size temporary is tens of MB
            outs.append(getattr(self, f"layer_{idx + 1}")(lateral.add_(top_down)))
        return self.mask_features(outs[-1]), outs[: self.num_feature_levels]
