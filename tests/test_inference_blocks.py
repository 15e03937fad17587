"""Blocked inference paths (`m2f_hf.layers_blocks`) give the outputs of the whole-tensor paths.

(The pixel decoder's FFN blocks are tested in test_ms_deform_attn.py.)

The blocks are made tiny here so that every loop runs many iterations; the whole-tensor path is the one
taken when autograd records (the training path).
"""

from __future__ import annotations

import numpy as np
import torch
from test_backbone_swin import FIXTURE, _fixture_model

from m2f_hf import layers_blocks as inference_blocks
from m2f_hf import layers_config
from m2f_hf.modeling_swin import SwinBackbone


def test_add_blockwise_in_place_equals_whole():
    x = torch.randn(37, 5)
    expected = x + torch.tanh(x) * 3
    out = inference_blocks.add_blockwise_(x, lambda t: torch.tanh(t) * 3, x, rows=4)
    assert out is x and torch.equal(x, expected)
    assert inference_blocks.rows_per_block(1000, budget=4096) == 4
    assert inference_blocks.rows_per_block(10**9) == 1


def test_blockwise_inference_only_on_cpu_without_autograd():
    weight = torch.nn.Parameter(torch.ones(2))
    assert inference_blocks.blockwise_inference(torch.ones(2))
    assert not inference_blocks.blockwise_inference(torch.ones(2), torch.ones(2, device="meta"))
    assert not inference_blocks.blockwise_inference(torch.ones(2), weight)
    with torch.no_grad():
        assert inference_blocks.blockwise_inference(torch.ones(2), weight)


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_swin_blocks_match_whole_path_and_oracle():
    model = _fixture_model()
    first = model.layers[0].blocks[0]
    mlp_calls, qkv_calls = _count_calls(first.mlp), _count_calls(first.attn.qkv)
    batch = torch.from_numpy(np.load(FIXTURE / "inputs.npz")["normalized_padded_batch"])
    expected = np.load(FIXTURE / "intermediates.npz")
    whole = {k: v.detach() for k, v in model(batch).items()}  # autograd on: whole tensors
    # one window per attention block, a few dozen tokens per MLP block
    with layers_config.settings(block_elements=4096), torch.inference_mode():
        blocked = model(batch)
    assert mlp_calls[0] > 10 and qkv_calls[0] > 10  # 1 + 1 for the whole path, the rest blocks
    for name, feat in blocked.items():
        assert feat.shape == whole[name].shape and feat.is_contiguous()
        assert torch.allclose(feat, whole[name], rtol=1e-5, atol=1e-5), name
        assert np.abs(feat.numpy() - expected[f"backbone_{name}"]).max() < 1e-3, name


def test_swin_blocks_with_padding_and_batch():
    torch.manual_seed(0)
    model = SwinBackbone(embed_dim=16, num_heads=(1, 2, 4, 8), depths=(2, 2, 2, 2), window_size=7).eval()
    x = torch.randn(2, 3, 75, 101)  # sizes that need window padding at every stage
    whole = {k: v.detach() for k, v in model(x).items()}
    with layers_config.settings(block_elements=3000), torch.no_grad():
        blocked = model(x)
    for name in whole:
        assert torch.allclose(blocked[name], whole[name], rtol=1e-5, atol=1e-5), name
