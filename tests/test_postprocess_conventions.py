"""Post-processing as transformers' Mask2Former returns it (types, map conventions), on outputs that track
gradients, with the original's convention as an explicit option."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput

from m2f_hf import M2fHfImageProcessor


def _outputs(seed: int = 0, requires_grad: bool = False, batch: int = 2):
    gen = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(batch, 12, 6, generator=gen) * 4
    class_logits[..., :2, 2] += 12  # a few confident queries
    mask_logits = torch.randn(batch, 12, 16, 20, generator=gen) * 3
    if requires_grad:  # as returned by a model called without torch.no_grad()
        class_logits = class_logits.clone().requires_grad_() * 1.0
        mask_logits = mask_logits.clone().requires_grad_() * 1.0
    return transformers.utils.ModelOutput(class_queries_logits=class_logits, masks_queries_logits=mask_logits)


def _all(processor, outputs):
    sizes = [(30, 41), (64, 80)]
    return {
        "semantic": processor.post_process_semantic_segmentation(outputs, target_sizes=sizes),
        "scores": processor.post_process_semantic_segmentation(
            outputs, target_sizes=sizes, return_segmentation_scores=True
        ),
        "panoptic": processor.post_process_panoptic_segmentation(outputs, target_sizes=sizes, threshold=0.5),
        "instance": processor.post_process_instance_segmentation(outputs, target_sizes=sizes, threshold=0.3),
        "binary": processor.post_process_instance_segmentation(
            outputs, target_sizes=sizes, threshold=0.3, return_binary_maps=True
        ),
    }


def test_outputs_that_require_grad_are_post_processed_without_autograd():
    processor = M2fHfImageProcessor()
    plain = _all(processor, _outputs())
    tracked = _all(processor, _outputs(requires_grad=True))
    for key in plain:
        for a, b in zip(plain[key], tracked[key], strict=True):
            seg_a = a if isinstance(a, torch.Tensor) else a["segmentation"]
            seg_b = b if isinstance(b, torch.Tensor) else b["segmentation"]
            assert not seg_b.requires_grad and seg_b.grad_fn is None, key
            assert torch.equal(seg_a, seg_b), key


def test_return_types_and_conventions_match_transformers():
    ours = M2fHfImageProcessor()
    theirs = transformers.Mask2FormerImageProcessor()
    outputs = _outputs(1)
    got = _all(ours, outputs)
    ref = _all(theirs, outputs)
    for key in got:
        for a, b in zip(got[key], ref[key], strict=True):
            assert type(a) is type(b), key
            seg_a = a if isinstance(a, torch.Tensor) else a["segmentation"]
            seg_b = b if isinstance(b, torch.Tensor) else b["segmentation"]
            assert seg_a.dtype == seg_b.dtype and seg_a.shape[-2:] == seg_b.shape[-2:], key
            if isinstance(a, dict) or isinstance(a, SemanticSegmentationPostProcessorOutput):
                assert sorted(a.keys()) == sorted(b.keys()), key
    for key in ("scores",):
        for item in got[key]:
            assert isinstance(item, SemanticSegmentationPostProcessorOutput)
            assert torch.equal(item.segmentation, item["segmentation"])
            assert item.segmentation_scores.shape[0] == 5
    for result, reference in zip(got["instance"], ref["instance"], strict=True):
        ids = [s["id"] for s in result["segments_info"]]
        assert ids == list(range(len(ids))) and len(ids) > 0  # ids from 0, as transformers
        assert [s["id"] for s in reference["segments_info"]][:1] == [0]
        values = set(torch.unique(result["segmentation"]).tolist())
        assert values <= {-1.0, *map(float, ids)}  # -1 = no instance
    sparse = ours.post_process_instance_segmentation(outputs, threshold=0.95)
    assert all((r["segmentation"] == -1).any() for r in sparse)
    for result in got["binary"]:
        assert result["segmentation"].dtype == torch.float32
        assert set(torch.unique(result["segmentation"]).tolist()) <= {0.0, 1.0}


def test_panoptic_without_candidates_is_a_minus_one_map_as_transformers():
    outputs = _outputs(2)
    outputs["class_queries_logits"][..., -1] = 50.0  # every query says "no object"
    ours = M2fHfImageProcessor().post_process_panoptic_segmentation(outputs, target_sizes=[(8, 9)] * 2)
    ref = transformers.Mask2FormerImageProcessor().post_process_panoptic_segmentation(
        outputs, target_sizes=[(8, 9)] * 2
    )
    for a, b in zip(ours, ref, strict=True):
        assert a["segments_info"] == b["segments_info"] == []
        assert a["segmentation"].dtype == b["segmentation"].dtype and torch.equal(
            a["segmentation"], b["segmentation"]
        )
    original = M2fHfImageProcessor(segment_ids="original").post_process_panoptic_segmentation(
        outputs, target_sizes=[(8, 9)] * 2
    )
    assert all(r["segmentation"].dtype == torch.int32 and not r["segmentation"].any() for r in original)


def test_original_convention_is_an_explicit_option():
    outputs = _outputs(3)
    default = M2fHfImageProcessor().post_process_instance_segmentation(outputs, threshold=0.3)
    original = M2fHfImageProcessor(segment_ids="original").post_process_instance_segmentation(
        outputs, threshold=0.3
    )
    per_call = M2fHfImageProcessor().post_process_instance_segmentation(
        outputs, threshold=0.3, segment_ids="original"
    )
    for a, b, c in zip(default, original, per_call, strict=True):
        assert b["segmentation"].dtype == torch.int32
        assert torch.equal(b["segmentation"], c["segmentation"])
        assert torch.equal(a["segmentation"], b["segmentation"].float() - 1)  # the same instances
        assert [s["id"] + 1 for s in a["segments_info"]] == [s["id"] for s in b["segments_info"]]
    binary = M2fHfImageProcessor(segment_ids="original").post_process_instance_segmentation(
        outputs, threshold=0.3, return_binary_maps=True
    )
    assert binary[0]["segmentation"].dtype == torch.bool
    with pytest.raises(ValueError, match="segment_ids"):
        M2fHfImageProcessor(segment_ids="detectron2")
