"""Opt-in CPU fast modes (`m2f_hf.optimize_for_cpu`): each runs the real computation on a tiny model and
stays within a stated bound of the fp32 outputs; the fp32 model is left untouched."""

from __future__ import annotations

import pytest
import torch
from tiny_m2f import tiny_model

from m2f_hf import optimize_for_cpu
from m2f_hf.ecosystem_fast import CPU_MODES

# max |Δ| of the logits relative to the fp32 logits' largest magnitude, on the trained demo model and its
# held-out images (bf16 keeps 8 mantissa bits, int8 weights 7 bits plus a per-batch activation scale;
# measured on the first demo model: 3e-3 / 6e-3 for bf16, 1.7e-2 / 2.3e-2 for int8, class / mask logits;
# on the retrained demo model int8 reaches 8.7e-2 / 3.4e-2). Random weights amplify
# rounding through the 10 decoder layers (up to 0.4 on the random tiny model), so the bound is stated on
# the trained model; the tiny model checks the mechanics.
BOUNDS = {"bf16": 0.02, "int8": 0.12, "compile": 1e-5}
# PQ points a fast mode may lose on the demo model's held-out synthetic images
PQ_BOUND = 1.0


def _relative_errors(out, ref) -> list[float]:
    return [
        ((getattr(out, k) - getattr(ref, k)).abs().max() / getattr(ref, k).abs().max()).item()
        for k in ("class_queries_logits", "masks_queries_logits")
    ]


def _demo():
    from m2f_hf.ecosystem_cli import DEMO_MODEL
    from m2f_hf.image_processing_m2f import M2fHfImageProcessor
    from m2f_hf.modeling_m2f import Mask2FormerForUniversalSegmentation

    if not (DEMO_MODEL / "config.json").exists():
        pytest.skip("no demo model in this checkout")
    model = Mask2FormerForUniversalSegmentation.from_pretrained(DEMO_MODEL).eval()
    return model, M2fHfImageProcessor.from_pretrained(DEMO_MODEL)


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_fast_mode_stays_within_its_bound_of_fp32(mode):
    from m2f_hf.training_synthetic import make_synthetic_dataset

    model, processor = _demo()
    images = [s["image"] for s in make_synthetic_dataset(2, seed=1)]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        ref = model(pixels)
        fast = optimize_for_cpu(model, mode)
        out = fast(pixels)
        again = model(pixels)
    assert fast is not model
    assert out.class_queries_logits.dtype == torch.float32 and out.masks_queries_logits.dtype == torch.float32
    assert out.masks_queries_logits.shape == ref.masks_queries_logits.shape
    errors = _relative_errors(out, ref)
    assert max(errors) < BOUNDS[mode], errors
    assert max(errors) > 0  # the mode really changed the arithmetic
    # the fp32 model is unchanged: same parameters, same outputs
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(again.class_queries_logits, ref.class_queries_logits)


def test_bf16_runs_matrix_products_in_bf16_and_the_pixel_decoder_in_fp32():
    model, _ = tiny_model("panoptic")
    fast = optimize_for_cpu(model, "bf16")
    seen = {}

    def record(name, pick):
        def hook(module, args, output):
            seen[name] = pick(output).dtype  # returns None: the output is kept

        return hook

    fast.model.transformer_decoder.class_embed.register_forward_hook(record("class_embed", lambda o: o))
    fast.model.pixel_decoder.register_forward_hook(record("pixel_decoder", lambda o: o[0]))
    with torch.inference_mode():
        fast(torch.randn(1, 3, 64, 64))
    assert seen == {"class_embed": torch.bfloat16, "pixel_decoder": torch.float32}


def test_int8_quantises_every_linear_layer():
    model, _ = tiny_model("panoptic")
    fast = optimize_for_cpu(model, "int8")
    linears = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]
    quantised = {n for n, m in fast.named_modules() if type(m).__module__.startswith("torch.ao.nn.quantized")}
    assert linears and set(linears) <= quantised


def test_compile_mode_wraps_the_model_and_matches_fp32():
    # the eager backend keeps this test fast; the benchmark's compile rows use the default (inductor)
    model, _ = tiny_model("panoptic")
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    compiled = optimize_for_cpu(model, "compile", backend="eager", dynamic=False)
    assert compiled._orig_mod is model
    with torch.no_grad():
        ref = model(pixels)
        out = compiled(pixels)
    assert max(_relative_errors(out, ref)) < BOUNDS["compile"]


def test_unknown_mode_and_fp32():
    model, _ = tiny_model("panoptic")
    assert optimize_for_cpu(model, "fp32") is model
    assert set(BOUNDS) | {"fp32"} == set(CPU_MODES)
    with pytest.raises(ValueError, match="unknown CPU mode"):
        optimize_for_cpu(model, "int4")


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_fast_mode_keeps_the_demo_models_panoptic_quality(mode):
    from m2f_hf.training_data import SegmentationEvalCollator, normalize_sample
    from m2f_hf.training_evaluation import evaluate
    from m2f_hf.training_synthetic import CATEGORY_ID_TO_CONTIGUOUS, make_synthetic_dataset

    model, processor = _demo()
    samples = [normalize_sample(s, CATEGORY_ID_TO_CONTIGUOUS) for s in make_synthetic_dataset(8, seed=1)]
    batches = [SegmentationEvalCollator(processor)(samples[i : i + 4]) for i in (0, 4)]
    with torch.inference_mode():
        base = evaluate(model, processor, batches, "panoptic", metrics=["panoptic"])["PQ"]
        fast = evaluate(optimize_for_cpu(model, mode), processor, batches, "panoptic", metrics=["panoptic"])[
            "PQ"
        ]
    assert base > 20  # a trained model: the comparison means something
    assert abs(fast - base) <= PQ_BOUND, (base, fast)
