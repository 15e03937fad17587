"""Blocked and unblocked paths agree at a size where every blocked path is active.

The shared reference fixtures are small (at most 64x96 padded), so with the default block budgets none of
the blocked CPU paths switches on there. Shrinking the budgets (`layers_config.settings`) makes a small
Swin model's forward and post-processing take every blocked path; the outputs must equal the unblocked
ones within float32 noise (forward) or bit for bit (post-processing maps, labels and segment lists; the
instance scores, means over pixels, within 1e-6 relative). A counter per
blocked path (`layers_blocks.BLOCKED_CALLS`) proves each path ran, and that the reference run used none.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from tiny_m2f import HEAD, LABELS, PROCESSOR, THINGS

from m2f_hf import M2fHfImageProcessor, Mask2FormerConfig, Mask2FormerForUniversalSegmentation, layers_config
from m2f_hf import processing_postprocess as pp
from m2f_hf.layers_blocks import BLOCKED_CALLS

FORWARD_PATHS = {"swin_window_attention", "swin_mlp", "pixel_decoder_layer", "deformable_sample"}
POST_PATHS = {
    "semantic_argmax_low_res",
    "semantic_argmax_classes",
    "semantic_argmax_pixels",
    "masks_at_target",
    "query_chunks",
}
SMALL = dict(
    block_elements=2048,
    deform_inference_block=4096,
    postprocess_class_chunk=2,
    postprocess_pixel_block=500,
    postprocess_semantic_block=700,
    postprocess_query_block=20000,
    postprocess_semantic_tile_rows=8,
    postprocess_semantic_tile_cols=16,
)

# the reference: budgets so large that nothing is blocked
WHOLE = {name: 1 << 40 for name in SMALL}


@pytest.fixture(scope="module")
def swin_model():
    config = Mask2FormerConfig(
        backbone_type="swin",
        backbone_config=dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=7),
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
        thing_ids=THINGS,
        panoptic_on=True,
        instance_on=True,
        semantic_on=True,
        **HEAD,
    )
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():  # heads off their init, so queries and segments differ
        for name, param in model.model.named_parameters():
            if not name.startswith("backbone"):
                param.add_(torch.randn(param.shape, generator=noise) * 0.3)
    return model


def _counted(fn):
    BLOCKED_CALLS.clear()
    result = fn()
    return result, {name for name, count in BLOCKED_CALLS.items() if count}


def test_forward_blocked_equals_unblocked_with_every_blocked_path_taken(swin_model):
    pixels = torch.randn(2, 3, 160, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        with layers_config.settings(**WHOLE):
            whole, taken = _counted(lambda: swin_model(pixels))
        assert taken == set(), taken
        with layers_config.settings(**SMALL):
            blocked, taken = _counted(lambda: swin_model(pixels))
    assert FORWARD_PATHS <= taken, FORWARD_PATHS - taken
    for key in ("class_queries_logits", "masks_queries_logits"):
        a, b = getattr(blocked, key), getattr(whole, key)
        scale = b.abs().max().item()
        assert (a - b).abs().max().item() <= 2e-5 * max(1.0, scale), key


@pytest.mark.parametrize("before_inference", [True, False])
def test_post_processing_blocked_equals_unblocked_bit_for_bit(swin_model, before_inference):
    pixels = torch.randn(1, 3, 160, 224, generator=torch.Generator().manual_seed(2))
    processor = M2fHfImageProcessor(**PROCESSOR, sem_seg_postprocess_before_inference=before_inference)
    with torch.inference_mode():
        outputs = swin_model(pixels)
    outputs.image_sizes = torch.tensor([[150, 210]])
    targets = [(300, 420)]

    def run():
        class_logits, mask_logits = outputs.class_queries_logits[0], outputs.masks_queries_logits[0]
        return {
            "semantic": processor.post_process_semantic_segmentation(outputs, target_sizes=targets),
            # at the image size the resize is the identity: the tiled exact pass
            "semantic_tiles": processor.post_process_semantic_segmentation(
                outputs, target_sizes=[(150, 210)]
            ),
            "scores": processor.post_process_semantic_segmentation(
                outputs, target_sizes=targets, return_segmentation_scores=True
            ),
            "panoptic": processor.post_process_panoptic_segmentation(outputs, target_sizes=targets),
            "instance": processor.post_process_instance_segmentation(outputs, target_sizes=targets),
            "argmax": pp.semantic_argmax(class_logits, mask_logits),
            "argmax_resized": pp.semantic_argmax(
                class_logits, pp.upsample_to_padded(mask_logits, (160, 224)), (150, 210), (300, 420)
            ),
        }

    with layers_config.settings(**WHOLE):
        whole, taken = _counted(run)
    assert taken == set(), taken
    with layers_config.settings(**SMALL):
        blocked, taken = _counted(run)
    # without sem_seg_postprocess_before_inference the semantic scores are computed at the padded size
    expected = POST_PATHS - (set() if before_inference else {"semantic_argmax_low_res", "masks_at_target"})
    assert expected <= taken, expected - taken
    assert whole["panoptic"][0]["segments_info"], "no segment: the comparison would be empty"
    _assert_identical(blocked, whole)


def _assert_identical(a, b, path="result"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, Mapping):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_identical(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        # instance scores (mask score x class score) are means over each query's pixels: a query chunk of
        # another size may sum them in another order (measured: 1 ulp); every map and label is exact
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7), path
    else:
        assert a == b, path
