"""Normalised sine position embedding shared by the pixel decoder and the transformer decoder."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinePositionEmbedding(nn.Module):
    """DETR-style 2-D sine/cosine embedding with coordinates normalised to (0, 2π] (no padding mask)."""

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, 2·num_pos_feats, H, W); depends only on H, W (the original ignores padding)."""
        batch, _, height, width = x.shape
        device = x.device
        eps = 1e-6
        # cumsum of ones == arange(1, n+1); normalised by the last value exactly as the original
        y_embed = torch.arange(1, height + 1, dtype=torch.float32, device=device)
        x_embed = torch.arange(1, width + 1, dtype=torch.float32, device=device)
        y_embed = y_embed / (y_embed[-1:] + eps) * self.scale
        x_embed = x_embed / (x_embed[-1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, None] / dim_t  # (W, F)
        pos_y = y_embed[:, None] / dim_t  # (H, F)
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
        pos = torch.cat(
            (pos_y[:, None, :].expand(height, width, -1), pos_x[None, :, :].expand(height, width, -1)), dim=2
        )
        return pos.permute(2, 0, 1).unsqueeze(0).expand(batch, -1, -1, -1).to(x.dtype)


class SinePositionEmbedding3D(nn.Module):
    """The video decoder's sine embedding over (frame, y, x), normalised to (0, 2π] on each axis.

    The spatial half is the 2-D embedding (y features then x features, `num_pos_feats` each); the frame
    coordinate is embedded over all 2·num_pos_feats channels (its own frequency ladder) and added on top.
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        self.spatial = SinePositionEmbedding(num_pos_feats, temperature, scale)
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) → (B, T, 2·num_pos_feats, H, W)."""
        batch, frames, channels, height, width = x.shape
        device = x.device
        spatial = self.spatial(x[:1, 0])[0]  # (2F, H, W)
        z_embed = torch.arange(1, frames + 1, dtype=torch.float32, device=device)
        z_embed = z_embed / (z_embed[-1:] + 1e-6) * self.scale
        feats = 2 * self.num_pos_feats
        dim_t = torch.arange(feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / feats)
        pos_z = z_embed[:, None] / dim_t  # (T, 2F)
        pos_z = torch.stack((pos_z[:, 0::2].sin(), pos_z[:, 1::2].cos()), dim=2).flatten(1)
        pos = spatial[None].float() + pos_z[:, :, None, None]
        return pos.unsqueeze(0).expand(batch, -1, -1, -1, -1).to(x.dtype)
