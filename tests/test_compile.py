"""torch.compile captures the transformer decoder, the pixel decoder and the whole model as single graphs.

No graph break under dynamo's default settings also means no data-dependent shapes and no host
synchronisation (`.item()`, `nonzero`, ... would break the graph): what CUDA-graph capture
(`mode="reduce-overhead"`) needs besides static input shapes."""

from __future__ import annotations

import pytest
import torch

from m2f_hf.configuration_m2f import Mask2FormerConfig
from m2f_hf.modeling_m2f import Mask2FormerForUniversalSegmentation

SWIN = dict(
    backbone_type="swin", backbone_config=dict(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8])
)
RESNET = dict(
    backbone_type="resnet", backbone_config=dict(depth=18, stem_out_channels=16, res2_out_channels=64)
)


def _config(backbone: dict) -> Mask2FormerConfig:
    return Mask2FormerConfig(
        **backbone,
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


def test_decoders_compile_without_graph_breaks():
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(_config(SWIN)).eval().model
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


@pytest.mark.parametrize("backbone", [SWIN, RESNET], ids=["swin", "resnet"])
def test_whole_model_is_one_graph_and_compiles_to_the_same_outputs(backbone):
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(_config(backbone)).eval()
    pixels = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(pixels)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)(pixels)
        torch._dynamo.reset()
        eager = model(pixels)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    torch.testing.assert_close(compiled.class_queries_logits, eager.class_queries_logits)
    torch.testing.assert_close(compiled.masks_queries_logits, eager.masks_queries_logits)
