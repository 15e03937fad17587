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
from unittest import mock

import pytest
import torch

pytest.importorskip("triton")

from m2f_hf import layers_config  # noqa: E402
from m2f_hf import modeling_deform_attn as mda  # noqa: E402
from m2f_hf import modeling_deform_attn_triton as ms_deform_attn_triton  # noqa: E402
from m2f_hf.layers_config import KERNEL_ENV  # noqa: E402
from m2f_hf.modeling_deform_attn import use_triton  # noqa: E402


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
        from m2f_hf import layers_config
        sys.path.insert(0, "tests")
        from tiny_m2f import tiny_model
        model, _ = tiny_model("panoptic")
        pixels = torch.randn(2, 3, 64, 96)
        with torch.inference_mode():
            kernels = model(pixels)
            layers_config.set_deformable_kernel("pytorch")
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


def test_selection():
    cpu = torch.ones(2)
    with layers_config.settings(deformable_kernel="auto"):
        assert not use_triton(cpu)  # auto: CUDA only
    with layers_config.settings(deformable_kernel="pytorch"):
        assert not use_triton(cpu)
    with pytest.raises(ValueError, match="deformable_kernel"):
        layers_config.set_settings(deformable_kernel="cuda-please")
    with pytest.raises(ValueError, match=KERNEL_ENV):
        layers_config.from_environment({KERNEL_ENV: "cuda-please"})
    assert layers_config.from_environment({KERNEL_ENV: " Triton ", "TRITON_INTERPRET": "1"}) == {
        "deformable_kernel": "triton",
        "triton_interpret": True,
    }
    with layers_config.settings(deformable_kernel="triton", triton_interpret=False):
        with pytest.raises(RuntimeError, match="CUDA tensors"):
            use_triton(cpu)
    with layers_config.settings(deformable_kernel="triton", triton_interpret=True):
        with pytest.raises(RuntimeError, match="float64"):
            use_triton(cpu.double())
        assert use_triton(cpu)
        with mock.patch.object(ms_deform_attn_triton, "triton", None):
            with pytest.raises(RuntimeError, match="not installed"):
                use_triton(cpu)


def test_auto_on_cuda_runs_the_self_check_once_and_falls_back_with_a_warning():
    """ "auto" on a CUDA tensor: the first call per (device, dtype) runs the self-check; a failing check
    keeps the PyTorch gather (with a warning), a passing one picks the kernels; both are cached until the
    kernel setting changes. The device test is patched (no GPU here); the check itself is the real one
    below."""
    cpu = torch.ones(2)
    calls = []

    def check(device, dtype, result):
        calls.append((str(device), dtype))
        return result

    auto = layers_config.settings(deformable_kernel="auto")
    with mock.patch.object(mda, "_on_cuda", return_value=True), auto:
        with mock.patch.object(mda, "triton_self_check", side_effect=lambda d, t: check(d, t, False)):
            assert not use_triton(cpu) and not use_triton(cpu)
            assert calls == [("cpu", torch.float32)]
            assert not use_triton(cpu.double())  # not a kernel dtype: no check
        layers_config.set_deformable_kernel("auto")  # a kernel change clears the cache
        with mock.patch.object(mda, "triton_self_check", side_effect=lambda d, t: check(d, t, True)):
            assert use_triton(cpu) and use_triton(cpu.half())
            assert calls[1:] == [("cpu", torch.float32), ("cpu", torch.float16)]
        with layers_config.settings(deformable_kernel="pytorch"):
            assert not use_triton(cpu)


def test_self_check_passes_for_the_kernels_and_fails_for_a_wrong_one():
    result = _run_interpreted(
        """
        import json, warnings, torch
        from unittest import mock
        from m2f_hf import modeling_deform_attn as mda
        good = mda.triton_self_check("cpu", torch.float32)
        apply = mda.TritonDeformableSample.apply
        with mock.patch.object(mda.TritonDeformableSample, "apply", lambda *a: apply(*a) * 1.001):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                bad = mda.triton_self_check("cpu", torch.float32)
        print(json.dumps([good, bad, [str(w.message) for w in caught]]))
        """
    )
    good, bad, messages = result
    assert good is True and bad is False
    assert len(messages) == 1 and "disagree" in messages[0] and "output" in messages[0]
