"""Mask2Former for video instance segmentation (the original VideoMaskFormer meta-architecture).

Each frame goes through the image backbone and pixel decoder (the same modules as the image model, applied
to the frames as a batch); the video decoder then lets 100 learnable queries attend over all frames of the
clip together, so each query predicts one class for the whole clip and one mask tube (T, h, w).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .configuration_m2f import Mask2FormerConfig
from .modeling_backbone import build_backbone
from .modeling_m2f import Mask2FormerPreTrainedModel
from .modeling_pixel_decoder import MSDeformAttnPixelDecoder
from .modeling_video_criterion import Mask2FormerVideoLoss
from .modeling_video_decoder import VideoMaskedTransformerDecoder


@dataclass
class Mask2FormerVideoModelOutput(ModelOutput):
    """Per-clip predictions of the final decoder layer plus, optionally, every auxiliary prediction.

    class_queries_logits: (B, Q, K+1), last column = no-object (one class per query for the whole clip).
    masks_queries_logits: (B, Q, T, H/4, W/4) of the padded frames.
    auxiliary_logits: one dict per earlier prediction (the learnable-query one first), same keys.
    """

    class_queries_logits: torch.FloatTensor | None = None
    masks_queries_logits: torch.FloatTensor | None = None
    auxiliary_logits: list[dict[str, torch.FloatTensor]] | None = None
    pixel_decoder_last_hidden_state: torch.FloatTensor | None = None
    transformer_decoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    pixel_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class Mask2FormerForVideoInstanceSegmentationOutput(Mask2FormerVideoModelOutput):
    loss: torch.FloatTensor | None = None
    loss_dict: dict[str, torch.FloatTensor] | None = None


def _frames(pixel_values: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(B, T, 3, H, W) or (T, 3, H, W) (one clip) → (B·T, 3, H, W), B, T."""
    if pixel_values.dim() == 4 and pixel_values.shape[1] == 3:
        return pixel_values, 1, pixel_values.shape[0]
    if pixel_values.dim() == 5 and pixel_values.shape[2] == 3:
        batch, frames = pixel_values.shape[:2]
        return pixel_values.flatten(0, 1), batch, frames
    raise ValueError(
        "pixel_values must be (batch, frames, 3, height, width) or (frames, 3, height, width), "
        f"got {tuple(pixel_values.shape)}"
    )


class Mask2FormerVideoModel(Mask2FormerPreTrainedModel):
    """Per-frame backbone + pixel decoder, and the clip-level masked transformer decoder."""

    main_input_name = "pixel_values_videos"
    input_modalities = ("video",)
    _no_split_modules = ["MSDeformAttnPixelDecoder", "VideoMaskedTransformerDecoder"]

    def __init__(self, config: Mask2FormerConfig):
        super().__init__(config)
        self.backbone = build_backbone(config)
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            config, self.backbone.out_channels, self.backbone.out_strides
        )
        self.transformer_decoder = VideoMaskedTransformerDecoder(config)
        self.post_init()

    def encode_frames(self, frames: torch.Tensor):
        """(N, 3, H, W) frames → backbone features, mask features (N, D, H/4, W/4), multi-scale list."""
        features = self.backbone(frames)
        mask_features, multi_scale = self.pixel_decoder(features)
        return features, mask_features, multi_scale

    def forward(
        self,
        pixel_values_videos: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_auxiliary_logits: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Mask2FormerVideoModelOutput | tuple:
        frames, _, num_frames = _frames(pixel_values_videos)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_auxiliary_logits is None:
            output_auxiliary_logits = self.config.output_auxiliary_logits
        if output_auxiliary_logits is None:
            output_auxiliary_logits = True
        features, mask_features, multi_scale = self.encode_frames(frames)
        class_logits, mask_logits, decoder_states = self.transformer_decoder(
            multi_scale, mask_features, num_frames=num_frames, output_hidden_states=output_hidden_states
        )
        auxiliary = None
        if output_auxiliary_logits:
            auxiliary = [
                {"class_queries_logits": c, "masks_queries_logits": m}
                for c, m in zip(class_logits[:-1], mask_logits[:-1])
            ]
        output = Mask2FormerVideoModelOutput(
            class_queries_logits=class_logits[-1],
            masks_queries_logits=mask_logits[-1],
            auxiliary_logits=auxiliary,
            pixel_decoder_last_hidden_state=mask_features,
            transformer_decoder_last_hidden_state=decoder_states[-1] if decoder_states else None,
            encoder_hidden_states=tuple(features.values()) if output_hidden_states else None,
            pixel_decoder_hidden_states=tuple(multi_scale) if output_hidden_states else None,
            transformer_decoder_hidden_states=tuple(decoder_states) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


class Mask2FormerForVideoInstanceSegmentation(Mask2FormerPreTrainedModel):
    """Video instance segmentation: per clip, Q (class, mask tube) predictions; optional training loss.

    `forward(pixel_values_videos, mask_labels=..., class_labels=...)` returns the loss of the original's
    video criterion (`modeling_video_criterion.Mask2FormerVideoLoss`); mask_labels are per clip
    (N, T, H, W) at the padded clip size, class_labels (N,).
    """

    main_input_name = "pixel_values_videos"
    input_modalities = ("video",)
    _no_split_modules = ["MSDeformAttnPixelDecoder", "VideoMaskedTransformerDecoder"]

    def __init__(self, config: Mask2FormerConfig):
        if not config.video:
            config.video = True
        super().__init__(config)
        self.model = Mask2FormerVideoModel(config)
        self.criterion = Mask2FormerVideoLoss(config)
        self.post_init()

    def forward(
        self,
        pixel_values_videos: torch.Tensor,
        mask_labels: list[torch.Tensor] | None = None,
        class_labels: list[torch.Tensor] | None = None,
        output_hidden_states: bool | None = None,
        output_auxiliary_logits: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Mask2FormerForVideoInstanceSegmentationOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        compute_loss = mask_labels is not None or class_labels is not None
        if compute_loss and (mask_labels is None or class_labels is None):
            raise ValueError("training needs both mask_labels and class_labels")
        outputs = self.model(
            pixel_values_videos,
            output_hidden_states=output_hidden_states,
            output_auxiliary_logits=True if compute_loss else output_auxiliary_logits,
            return_dict=True,
        )
        loss = loss_dict = None
        if compute_loss:
            aux = outputs.auxiliary_logits if self.config.use_auxiliary_loss else None
            loss_dict = self.criterion(
                outputs.masks_queries_logits, outputs.class_queries_logits, mask_labels, class_labels, aux
            )
            loss = self.criterion.total_loss(loss_dict)
            if output_auxiliary_logits is False:
                outputs.auxiliary_logits = None
        result = Mask2FormerForVideoInstanceSegmentationOutput(loss=loss, loss_dict=loss_dict, **outputs)
        return result if return_dict else result.to_tuple()


__all__ = [
    "Mask2FormerForVideoInstanceSegmentation",
    "Mask2FormerForVideoInstanceSegmentationOutput",
    "Mask2FormerVideoModel",
    "Mask2FormerVideoModelOutput",
]
