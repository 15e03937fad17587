"""The fused-gather deformable attention equals the original's grid_sample formulation."""

from __future__ import annotations

import pytest
import torch
from conftest import multi_scale_deformable_attention, multi_scale_deformable_attention_grid_sample

import m2f_hf.modeling_deform_attn as msda
from m2f_hf import layers_config
from m2f_hf.modeling_deform_attn import MSDeformAttn

SHAPES = [(7, 9), (4, 5), (2, 3)]


def _inputs(batch=2, queries=11, heads=4, dim=8, points=3, seed=0, special_points=True):
    gen = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, total, heads, dim, generator=gen)
    # locations reach well outside [0, 1] so the zero padding and the clamping are exercised
    loc = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=gen) * 1.6 - 0.3
    if not special_points:
        return value, loc, torch.rand(batch, queries, heads, len(SHAPES), points, generator=gen)
    # exact borders and pixel centres
    loc[0, 0, 0, :, 0] = torch.tensor([1.0, 1.0])
    loc[0, 0, 1, :, 0] = torch.tensor([0.0, 0.0])
    loc[1, 1, 0, 0, 0] = torch.tensor([0.5 / 9, 0.5 / 7])
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=gen)
    return value, loc, weights


def test_fused_gather_matches_grid_sample():
    value, loc, weights = _inputs()
    with torch.no_grad():
        ours = multi_scale_deformable_attention(value, SHAPES, loc, weights)
    ref = multi_scale_deformable_attention_grid_sample(value, SHAPES, loc, weights)
    assert ours.shape == ref.shape == (2, 11, 4 * 8)
    assert (ours - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("sparse, block", [(True, None), (False, None), (False, 40)])
def test_fused_gradients_match_grid_sample(sparse, block):
    """The explicit backward of the fused gather (torch.sparse kernels, or the blocked loops used off CPU)
    equals autograd through the grid_sample formulation, for value, sampling locations and weights."""
    budget = {} if block is None else {"deform_backward_block": block}
    with layers_config.settings(sparse_backward=sparse, **budget):
        _check_fused_gradients()


def _check_fused_gradients():
    # random points only: at exact pixel centres the bilinear derivative jumps, and which side a formula
    # lands on depends on rounding (the fused path uses the original kernel's location·size - 0.5)
    value, loc, weights = _inputs(seed=1, special_points=False)
    grad_out = torch.randn(2, 11, 4 * 8, generator=torch.Generator().manual_seed(3))
    grads = []
    for fn in (multi_scale_deformable_attention, multi_scale_deformable_attention_grid_sample):
        tensors = [t.clone().requires_grad_() for t in (value, loc, weights)]
        out = fn(tensors[0], SHAPES, tensors[1], tensors[2])
        out.backward(grad_out)
        grads.append([t.grad for t in tensors])
    for ours, ref in zip(*grads, strict=True):
        scale = ref.abs().max().item()
        assert scale > 0
        assert (ours - ref).abs().max().item() <= 1e-5 * max(1.0, scale)


def test_fused_backward_keeps_only_indices_and_weights():
    """Autograd keeps no per-sample feature vectors for the fused gather (the grid_sample formulation
    keeps all B·M·D·Q·L·P samples), so it saves fewer bytes."""
    heads, dim, points = 8, 32, 4
    queries = sum(h * w for h, w in SHAPES)  # encoder-like: every pixel is a query
    value, loc, weights = _inputs(1, queries, heads, dim, points, seed=2, special_points=False)
    samples = queries * heads * dim * len(SHAPES) * points
    saved = {}
    for name, fn in (
        ("fused", multi_scale_deformable_attention),
        ("grid", multi_scale_deformable_attention_grid_sample),
    ):
        sizes = []

        def pack(t, sizes=sizes):
            sizes.append(t.numel() * t.element_size())
            return t

        tensors = [t.clone().requires_grad_() for t in (value, loc, weights)]
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(tensors[0], SHAPES, tensors[1], tensors[2])
        saved[name] = sizes
    assert max(saved["grid"]) >= 4 * samples
    assert max(saved["fused"]) < 4 * samples / 4
    assert sum(saved["fused"]) < 0.7 * sum(saved["grid"])


@pytest.mark.parametrize("training", [False, True])
def test_module_inference_and_training_paths_agree(training):
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=2)
    attn.reset_parameters()
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    total = sum(h * w for h, w in SHAPES)
    query = torch.randn(2, total, 32)
    refs = torch.rand(1, total, 3, 2)
    value = torch.randn(2, total, 32)
    with torch.no_grad():
        fused = attn(query, refs, value, SHAPES)
    grid = attn(query.requires_grad_(training), refs, value, SHAPES)  # parameters require grad
    assert (fused - grid).abs().max().item() < 1e-5
    if training:
        grid.square().sum().backward()
        assert query.grad is not None and query.grad.abs().sum() > 0
        assert all(p.grad is not None for p in attn.parameters())
    with pytest.raises(ValueError, match="spatial shapes"):
        attn(query, refs, value, SHAPES[:2])


def test_inference_blocks_give_identical_results():
    """Queries processed a few at a time (bounded temporaries) give the same bits as one gather."""
    value, loc, weights = _inputs(seed=4)
    with torch.no_grad():
        whole = multi_scale_deformable_attention(value, SHAPES, loc, weights)
        # 3 queries per block
        with layers_config.settings(deform_inference_block=2 * 4 * len(SHAPES) * 3 * 4 * 3):
            blocked = multi_scale_deformable_attention(value, SHAPES, loc, weights)
    assert torch.equal(whole, blocked)


def test_encoder_ffn_blocks_match_the_whole_computation():
    """The pixel decoder layer at inference, attention and FFN in token blocks, equals the unblocked layer
    (float noise)."""
    import m2f_hf.modeling_pixel_decoder as pixel_decoder

    torch.manual_seed(0)
    layer = pixel_decoder.DeformableEncoderLayer(32, 64, 0.0, len(SHAPES), 4, 2).eval()
    total = sum(h * w for h, w in SHAPES)
    src, pos = torch.randn(2, total, 32), torch.randn(2, total, 32)
    refs = torch.rand(1, total, len(SHAPES), 2)
    with torch.no_grad():
        whole = layer(src, pos, refs, SHAPES)
        calls = []
        layer.self_attn.sampling_offsets.register_forward_hook(lambda *_: calls.append(1))
        layer.linear1.register_forward_hook(lambda *_: calls.append(2))
        with layers_config.settings(block_elements=2 * 64 * 5):  # 5 tokens (x batch 2) per block
            blocked = layer(src, pos, refs, SHAPES)
        assert calls == [1, 2] * ((total + 4) // 5)
    with torch.enable_grad():
        grad_path = layer(src, pos, refs, SHAPES)  # the unblocked path
    assert (whole - blocked).abs().max().item() < 1e-5
    assert (whole - grad_path).abs().max().item() < 1e-5


def test_corner_weights_same_with_and_without_autograd():
    """The inference products and the autograd outer product give the same bits, corners in gather order."""
    gen = torch.Generator().manual_seed(3)
    frac, attention = torch.rand(2, 5, 4, 3, 2, 2, generator=gen), torch.rand(2, 5, 4, 3, 2, generator=gen)
    with torch.no_grad():
        fast = msda._corner_weights(frac, attention)
    slow = msda._corner_weights(frac.requires_grad_(), attention)
    assert slow.requires_grad and torch.equal(fast, slow.detach())
    fx, fy, a = frac[..., 0].detach(), frac[..., 1].detach(), attention
    assert torch.equal(fast[..., 1], (1 - fy) * a * fx) and torch.equal(fast[..., 2], fy * a * (1 - fx))
