"""The fused-gather deformable attention equals the original's grid_sample formulation."""

from __future__ import annotations

import pytest
import torch

from m2f_hf.ms_deform_attn import (
    MSDeformAttn,
    multi_scale_deformable_attention,
    multi_scale_deformable_attention_grid_sample,
)

SHAPES = [(7, 9), (4, 5), (2, 3)]


def _inputs(batch=2, queries=11, heads=4, dim=8, points=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, total, heads, dim, generator=gen)
    # locations reach well outside [0, 1] so the zero padding and the clamping are exercised
    loc = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=gen) * 1.6 - 0.3
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


def test_gradients_use_the_grid_sample_path():
    value, loc, weights = _inputs(seed=1)
    tensors = [t.clone().requires_grad_() for t in (value, loc, weights)]
    out = multi_scale_deformable_attention(tensors[0], SHAPES, tensors[1], tensors[2])
    out.square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tensors)


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
    grid = attn(query.requires_grad_(training), refs, value, SHAPES)  # parameters require grad: grid path
    assert (fused - grid).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="spatial shapes"):
        attn(query, refs, value, SHAPES[:2])
