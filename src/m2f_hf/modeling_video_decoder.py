"""Video masked transformer decoder (the original `VideoMultiScaleMaskedTransformerDecoder`).

Same layers and state-dict names as the image decoder; what changes is the memory and the masks:
every decoder level attends over the tokens of ALL frames of the clip at once (frame-major, then row-major
pixels), positions are the 3-D sine embedding over (frame, y, x), and each query predicts one mask tube
(Q, T, h, w) by dotting its embedding with every frame's mask features. The attention mask of the next
layer is that tube resized per frame and thresholded at 0.5 exactly as in the image decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layers_position import SinePositionEmbedding3D
from .modeling_transformer_decoder import MaskedTransformerDecoder


def video_attention_mask_from_logits(mask_logits: torch.Tensor, target_size: tuple[int, int]) -> torch.Tensor:
    """(B, Q, T, h, w) mask logits → (B, Q, T·H·W) bool "may attend".

    An all-blocked query attends everywhere, as in the image decoder."""
    batch, queries, frames = mask_logits.shape[:3]
    resized = F.interpolate(mask_logits.flatten(0, 1), size=target_size, mode="bilinear", align_corners=False)
    blocked = resized.view(batch, queries, -1).sigmoid() < 0.5
    fully_blocked = blocked.all(dim=-1, keepdim=True)
    return (~blocked | fully_blocked).detach()


class VideoMaskedTransformerDecoder(MaskedTransformerDecoder):
    """Masked-attention decoder over a clip; inputs are per-frame features of ONE or more clips."""

    def __init__(self, config):
        super().__init__(config)
        self.pe_layer = SinePositionEmbedding3D(config.hidden_dim // 2)

    def mask_logits(self, mask_embed: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """(B, Q, D) query embeddings · (B, T, D, h, w) per-frame mask features → tubes (B, Q, T, h, w)."""
        return torch.einsum("bqc,btchw->bqthw", mask_embed, mask_features)

    def attention_mask(self, mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return video_attention_mask_from_logits(mask_logits, size)

    def forward(
        self,
        multi_scale_features: list[torch.Tensor],
        mask_features: torch.Tensor,
        num_frames: int | None = None,
        output_hidden_states: bool = False,
    ):
        """multi_scale_features / mask_features: per frame, (B·T, C, h, w), clips frame-contiguous.

        num_frames: frames per clip (default: all frames form one clip, the original's inference).
        Returns (class logits per prediction, mask logits (B, Q, T, h, w) per prediction, and with
        `output_hidden_states` the normed queries each prediction was read from).
        """
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(
                f"expected {self.num_feature_levels} feature levels, got {len(multi_scale_features)}"
            )
        total = mask_features.shape[0]
        frames = total if num_frames is None else num_frames
        if total % frames:
            raise ValueError(f"{total} frames do not split into clips of {frames}")
        batch = total // frames
        srcs, poss, sizes = [], [], []
        for i, x in enumerate(multi_scale_features):
            h, w = x.shape[-2:]
            sizes.append((h, w))
            pos = self.pe_layer(x.view(batch, frames, -1, h, w))  # (B, T, C, h, w)
            poss.append(pos.permute(0, 1, 3, 4, 2).reshape(batch, frames * h * w, -1))
            src = self.input_proj[i](x).flatten(2) + self.level_embed.weight[i][None, :, None]  # (BT, C, hw)
            srcs.append(
                src.view(batch, frames, -1, h * w).permute(0, 1, 3, 2).reshape(batch, frames * h * w, -1)
            )
        mask_features = mask_features.view(batch, frames, *mask_features.shape[1:])
        result = self.decode(srcs, poss, sizes, mask_features)
        hidden = result["intermediate"] if output_hidden_states else []
        return result["class_logits"], result["mask_logits"], hidden


__all__ = ["VideoMaskedTransformerDecoder", "video_attention_mask_from_logits"]
