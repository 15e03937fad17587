"""torch.compile captures the transformer decoder and the pixel decoder as single graphs (no breaks)."""

from __future__ import annotations

import torch

from m2f_hf.configuration_m2f import Mask2FormerConfig
from m2f_hf.modeling_m2f import Mask2FormerForUniversalSegmentation


def test_decoders_compile_without_graph_breaks():
    torch.manual_seed(0)
    config = Mask2FormerConfig(
        backbone_type="swin",
        backbone_config=dict(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8]),
        feature_size=64,
        mask_feature_size=64,
        hidden_dim=64,
        num_queries=6,
        decoder_layers=4,
        encoder_layers=1,
        dim_feedforward=64,
        encoder_feedforward_dim=64,
        num_labels=5,
    )
    model = Mask2FormerForUniversalSegmentation(config).eval().model
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 64, 96))
        mask_features, multi_scale = model.pixel_decoder(features)
        torch._dynamo.reset()
        decoder = torch._dynamo.explain(model.transformer_decoder)(multi_scale, mask_features)
        torch._dynamo.reset()
        pixel = torch._dynamo.explain(model.pixel_decoder)(features)
        torch._dynamo.reset()
    assert decoder.graph_break_count == 0, decoder.break_reasons
    assert decoder.graph_count == 1
    assert pixel.graph_break_count == 0, pixel.break_reasons
