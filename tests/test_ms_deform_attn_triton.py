"""The Triton deformable-sampling kernels, run on the CPU through Triton's interpreter.

The interpreter is chosen when a kernel is defined (at import), so the comparisons run in a subprocess
with TRITON_INTERPRET=1. On a GPU the same kernels are compiled; the numbers checked here are the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

from m2f_hf import modeling_deform_attn_triton as ms_deform_attn_triton  # noqa: E402
from m2f_hf.modeling_deform_attn_triton import KERNEL_ENV, use_triton  # noqa: E402


def _run_interpreted(code: str) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", KERNEL_ENV: "triton"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_kernels_match_the_original_formulation_values_and_gradients():
    # 70 queries (a partial block of 64), head_dim 6 (masked to a tile of 8), points outside the maps
    # (clamped: zero padding and zero position gradient), three levels of different sizes
    diffs = _run_interpreted(
        """
        import json, os, sys, torch
        from m2f_hf import modeling_deform_attn as mda
        sys.path.insert(0, "tests")
        from conftest import multi_scale_deformable_attention, multi_scale_deformable_attention_grid_sample
        torch.manual_seed(0)
        shapes = [(6, 5), (3, 4), (2, 2)]
        B, M, D, P, Q = 2, 3, 6, 3, 70
        S = sum(h * w for h, w in shapes)
        value = torch.randn(B, S, M, D, requires_grad=True)
        loc = (torch.rand(B, Q, M, len(shapes), P, 2) * 1.6 - 0.3).requires_grad_()
        attn = torch.rand(B, Q, M, len(shapes), P).softmax(-1).requires_grad_()
        grad = torch.randn(B, Q, M * D)
        def run(fn):
            out = fn(value, shapes, loc, attn)
            return (out, *torch.autograd.grad(out, (value, loc, attn), grad))
        assert mda.use_triton(value)
        ours = run(multi_scale_deformable_attention)
        reference = run(multi_scale_deformable_attention_grid_sample)
        scale = [r.abs().max().item() for r in reference]
        print(json.dumps([(o - r).abs().max().item() / s for o, r, s in zip(ours, reference, scale)]))
        """
    )
    names = ["output", "value gradient", "location gradient", "weight gradient"]
    for name, diff in zip(names, diffs, strict=True):
        assert diff < 2e-6, f"{name}: relative max difference {diff}"


def test_model_forward_through_the_kernels_matches_the_pytorch_gather():
    diff = _run_interpreted(
        """
        import json, os, sys, torch
        sys.path.insert(0, "tests")
        from tiny_m2f import tiny_model
        model, _ = tiny_model("panoptic")
        pixels = torch.randn(2, 3, 64, 96)
        with torch.inference_mode():
            kernels = model(pixels)
            os.environ["M2F_HF_DEFORMABLE_KERNEL"] = "pytorch"
            gather = model(pixels)
        print(json.dumps([
            ((a - b).abs().max() / b.abs().max()).item()
            for a, b in [
                (kernels.class_queries_logits, gather.class_queries_logits),
                (kernels.masks_queries_logits, gather.masks_queries_logits),
            ]
        ]))
        """
    )
    assert max(diff) < 1e-5, diff


def test_selection(monkeypatch):
    cpu = torch.ones(2)
    monkeypatch.delenv(KERNEL_ENV, raising=False)
    assert not use_triton(cpu)  # auto: CUDA only
    monkeypatch.setenv(KERNEL_ENV, "pytorch")
    assert not use_triton(cpu)
    monkeypatch.setenv(KERNEL_ENV, "cuda-please")
    with pytest.raises(ValueError, match=KERNEL_ENV):
        use_triton(cpu)
    monkeypatch.setenv(KERNEL_ENV, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        use_triton(cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="float64"):
        use_triton(cpu.double())
    monkeypatch.setattr(ms_deform_attn_triton, "triton", None)
    with pytest.raises(RuntimeError, match="not installed"):
        use_triton(cpu)
    monkeypatch.setenv(KERNEL_ENV, "auto")
    assert not use_triton(cpu)
