"""Backbone selection: detectron2 ResNet, the original Swin, or any transformers AutoBackbone."""

from __future__ import annotations

import torch
from torch import nn

from .configuration_m2f import FEATURE_NAMES, backbone_config_dict


class AutoBackboneAdapter(nn.Module):
    """Wraps a transformers `AutoBackbone` (e.g. ConvNeXt, Swin) so it returns res2..res5 like detectron2."""

    def __init__(self, backbone_config):
        super().__init__()
        from transformers import AutoBackbone, AutoConfig, PreTrainedConfig

        if isinstance(backbone_config, PreTrainedConfig):
            hf_config, model_type = backbone_config, backbone_config.model_type
        else:
            cfg = dict(backbone_config)
            model_type = cfg.pop("model_type")
            hf_config = AutoConfig.for_model(model_type, **cfg)
        self.body = AutoBackbone.from_config(hf_config)
        channels = list(self.body.channels)
        if len(channels) != 4:
            raise ValueError(
                f"the {model_type} backbone returns {len(channels)} feature maps; Mask2Former needs 4 "
                "(strides 4, 8, 16, 32): set out_features/out_indices to four stages"
            )
        self.out_channels = dict(zip(FEATURE_NAMES, channels))
        self.out_strides = dict(zip(FEATURE_NAMES, (4, 8, 16, 32)))

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.body(pixel_values).feature_maps
        return dict(zip(FEATURE_NAMES, maps))


def build_backbone(config) -> nn.Module:
    """Backbone named by `config.backbone_type`, built from `config.backbone_config`."""
    if config.backbone_type == "resnet":
        from .modeling_resnet import ResNetBackbone

        return ResNetBackbone(**backbone_config_dict(config.backbone_config))
    if config.backbone_type == "swin":
        from .modeling_swin import SwinBackbone

        return SwinBackbone(**backbone_config_dict(config.backbone_config))
    return AutoBackboneAdapter(config.backbone_config)
