"""The streamed / banded post-processing paths against straightforward references of the original rules.

References here hold every Q x H x W plane at once: full upsample to the padded size, crop, resize, then the
rule (einsum + argmax, one argmax over all queries, masks of all queries). The fast paths upsample only
bands or the queries they need and must give the same labels, segments and masks.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from m2f_hf import layers_config
from m2f_hf import processing_postprocess as pp
from m2f_hf.image_processing_m2f import M2fHfImageProcessor

# (low-res mask size, image size inside the padded input, target size)
SIZES = [
    ((10, 14), (40, 56), (40, 56)),  # no padding, identity resize
    ((10, 14), (37, 53), (37, 53)),  # padding cropped, identity resize
    ((10, 14), (37, 53), (23, 31)),  # downscale
    ((10, 14), (38, 50), (61, 97)),  # odd upscale
    ((9, 13), (33, 49), (33, 50)),  # one axis resized only
]


def reference_masks(mask_logits, image_size, output_size):
    h, w = mask_logits.shape[-2:]
    up = F.interpolate(mask_logits[None], size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
    crop = up[:, :, : image_size[0], : image_size[1]]
    return F.interpolate(crop, size=output_size, mode="bilinear", align_corners=False)[0]


def make_logits(seed, queries=12, classes=20, low=(10, 14), peaked=False, scale=5.0):
    gen = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(queries, classes + 1, generator=gen)
    if peaked:  # one dominant class per query, about a third no-object
        pick = torch.randint(0, classes, (queries,), generator=gen)
        pick = torch.where(torch.rand(queries, generator=gen) < 1 / 3, classes, pick)
        class_logits[torch.arange(queries), pick] += 10.0
    coarse = torch.randn(1, queries, (low[0] + 1) // 2, (low[1] + 1) // 2, generator=gen)
    smooth = F.interpolate(coarse, size=low, mode="bilinear", align_corners=False)[0]
    mask_logits = scale * smooth + torch.randn(queries, *low, generator=gen)
    return class_logits, mask_logits.contiguous()


def reference_semantic(class_logits, masks):
    scores = torch.einsum("qc,qhw->chw", class_logits.softmax(-1)[:, :-1], masks.sigmoid())
    top2 = scores.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-5 * top2[0].clamp(min=1e-6)
    return scores.argmax(dim=0), clear


@pytest.mark.parametrize("low,image,target", SIZES)
@pytest.mark.parametrize("peaked", [False, True])
def test_semantic_low_res_matches_reference(low, image, target, peaked):
    for seed in range(3):
        class_logits, mask_logits = make_logits(seed, classes=40, low=low, peaked=peaked)
        masks = reference_masks(mask_logits, image, target)
        expected, clear = reference_semantic(class_logits, masks)
        assert clear.float().mean() > 0.9
        current = pp.semantic_argmax(class_logits, masks)  # the full pixel-major path, same float ops
        for block in (1, 97, 4096):
            got = pp.semantic_argmax_low_res(class_logits, mask_logits, image, target, pixel_block=block)
            assert got.shape == tuple(target) and got.dtype == torch.long
            assert torch.equal(got[clear], expected[clear])
            assert torch.equal(got, current)


def test_semantic_candidate_classes_and_their_fallback():
    # many classes, few of them with mass: only candidates are scored where the bound settles the pixel
    class_logits, mask_logits = make_logits(3, queries=10, classes=120, low=(8, 12), peaked=True)
    # in the top rows only no-object queries are on: there the winners are classes without mass (no
    # candidates), which the bound cannot exclude, so those pixels go through the full scoring
    no_object = class_logits.argmax(-1) == class_logits.shape[1] - 1
    assert no_object.any() and not no_object.all()
    mask_logits[:, :3] = torch.where(no_object[:, None, None], 5.0, -30.0)
    probs = class_logits.softmax(-1)[:, :-1]
    picked = pp._candidate_classes(probs)
    assert picked is not None and picked[0].numel() < 60
    for image, target in (((32, 48), (32, 48)), ((30, 41), (19, 27))):
        masks = reference_masks(mask_logits, image, target)
        expected, clear = reference_semantic(class_logits, masks)
        got = pp.semantic_argmax_low_res(class_logits, mask_logits, image, target, pixel_block=64)
        assert torch.equal(got[clear], expected[clear])
        assert torch.equal(got, pp.semantic_argmax(class_logits, masks))
        top = expected[:2][clear[:2]]
        assert top.numel() > 0 and not torch.isin(top, picked[0]).any()
        assert torch.isin(expected[-5:][clear[-5:]], picked[0]).float().mean() > 0.5


def test_semantic_low_res_ties_and_single_class():
    tie = torch.zeros(2, 5)
    zeros = torch.zeros(8, 12, dtype=torch.long)
    assert torch.equal(pp.semantic_argmax_low_res(tie, torch.ones(2, 2, 3), (8, 12), (8, 12)), zeros)
    one = torch.randn(3, 2)
    assert torch.equal(pp.semantic_argmax_low_res(one, torch.randn(3, 2, 3), (7, 9), (5, 4)), zeros[:5, :4])
    with pytest.raises(ValueError, match="does not fit"):
        pp.semantic_argmax_low_res(tie, torch.ones(2, 2, 3), (9, 12), (8, 12))


def test_banded_upsample_and_identity_resize_are_bit_exact():
    _, mask_logits = make_logits(5, low=(11, 9))
    full = pp.upsample_to_padded(mask_logits, (44, 36))
    for rows in ((0, 44), (0, 5), (3, 9), (4, 8), (13, 29), (40, 44), (43, 44)):
        up, (r, c) = pp._upsampled_window(mask_logits, rows, (0, 35))
        assert torch.equal(up[:, r : r + rows[1] - rows[0], c : c + 35], full[:, rows[0] : rows[1], :35])
    for image in ((44, 36), (41, 30)):
        assert torch.equal(
            pp.masks_at_target(mask_logits, image, image), reference_masks(mask_logits, image, image)
        )


def model_like_logits(seed, queries, classes, low, noise=0.0, scale=15.0):
    """Class logits with one peaked class per query (a third no-object) and mask logits that look like a
    trained model's: smooth, large and saturating (each pixel is clearly owned by a few queries), plus
    `noise` per low-resolution position."""
    gen = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(queries, classes + 1, generator=gen)
    pick = torch.randint(0, classes + 1, (queries,), generator=gen)
    class_logits[torch.arange(queries), pick] += 8.0
    coarse = torch.randn(1, queries, max(low[0] // 6, 1), max(low[1] // 6, 1), generator=gen) * scale
    smooth = F.interpolate(coarse, size=low, mode="bilinear", align_corners=False)[0]
    return class_logits, (smooth + noise * torch.randn(queries, *low, generator=gen)).contiguous()


# (low-res size, image size, target size): identity resizes with padding and with a 1-wide or 1-high
# low-res grid, downscales, upscales, anisotropic
SUPPORT_SIZES = [
    ((20, 30), (80, 120), (80, 120)),
    ((20, 30), (77, 113), (77, 113)),
    ((20, 30), (75, 118), (43, 41)),
    ((20, 30), (79, 111), (93, 239)),
    ((9, 70), (31, 278), (21, 94)),
    ((1, 40), (3, 157), (3, 157)),
    ((33, 1), (130, 2), (517, 5)),
    ((40, 12), (160, 45), (7, 3)),
    ((9, 13), (33, 49), (33, 50)),  # one axis resized only
]


@pytest.mark.parametrize("low,image,target", SUPPORT_SIZES)
def test_every_upsampled_value_lies_within_its_support_window(low, image, target):
    # the bound behind the settled pixels: each value of masks_at_target is between the minimum and the
    # maximum of the low-resolution logits in its window (rows and columns from `_axis_support`)
    _, mask_logits = make_logits(9, queries=5, low=low, scale=8.0)
    masks = reference_masks(mask_logits, image, target)
    bounds = []
    for size, crop, out in zip(low, image, target):
        start, span = pp._window_starts(*pp._axis_support(size, crop, out), size)
        assert start.shape == (out,) and 0 <= int(start.min()) and int(start.max()) + span <= size
        assert span <= (2 if crop == out else 4)
        bounds.append((start, span))
    (row_start, row_span), (col_start, col_span) = bounds
    high = pp._sliding_extreme(
        pp._sliding_extreme(mask_logits, 1, row_span, torch.maximum), 2, col_span, torch.maximum
    )
    low_ = pp._sliding_extreme(
        pp._sliding_extreme(mask_logits, 1, row_span, torch.minimum), 2, col_span, torch.minimum
    )
    high = high[:, row_start][:, :, col_start]
    low_ = low_[:, row_start][:, :, col_start]
    assert bool((masks <= high).all()) and bool((masks >= low_).all())
    # and the windows are tight for the x4 upsampling alone: two low-res rows and columns
    if image == target:
        assert bounds[0][1] == min(2, low[0]) and bounds[1][1] == min(2, low[1])


@pytest.mark.parametrize("low,image,target", SUPPORT_SIZES)
def test_settled_pixels_are_the_reference_labels_and_most_of_a_model_like_map(low, image, target):
    for seed in range(3):
        class_logits, mask_logits = model_like_logits(seed, queries=12, classes=30, low=low)
        probs = class_logits.softmax(-1)[:, :-1]
        for candidates in (pp._candidate_classes(probs), None):
            settled = pp._settled_labels(probs.t().contiguous(), candidates, mask_logits, image, target)
            expected = pp.semantic_argmax(class_logits, reference_masks(mask_logits, image, target))
            assert settled.shape == tuple(target) and settled.dtype == torch.long
            done = settled >= 0
            assert torch.equal(settled[done], expected[done])
            # away from segment borders the bounds settle the pixel (windows are wider when resized)
            assert done.float().mean() > (0.6 if image == target else 0.4)
    # flat scores (every class equal everywhere) settle nothing: the exact pass decides ties
    tie = pp._settled_labels(torch.full((3, 2), 0.5), None, torch.zeros(2, 20, 30), (80, 120), (80, 120))
    assert bool((tie == -1).all())


def test_bounds_are_skipped_where_they_would_settle_nothing():
    # model-like logits: the bounds are computed; independent noise at every position: skipped (the
    # exact pass alone, same labels; `test_semantic_tiles_equal_the_full_stack_rule` covers both)
    for noise, expected in ((0.0, True), (60.0, False)):
        class_logits, mask_logits = model_like_logits(1, 40, 25, (48, 64), noise=noise)
        probs = class_logits.softmax(-1)[:, :-1]
        candidates = pp._candidate_classes(probs)
        assert pp._bounds_pay(probs.t().contiguous(), candidates, mask_logits) is expected


@pytest.mark.parametrize("queries", [1, 3, 12, 40])
@pytest.mark.parametrize("noise", [0.0, 3.0, 30.0])
@pytest.mark.parametrize("threads", [1, 2])
def test_semantic_tiles_equal_the_full_stack_rule(queries, noise, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_semantic_tiles(queries, noise)
    finally:
        torch.set_num_threads(before)


def _check_semantic_tiles(queries, noise):
    # sizes where the identity resize runs in tiles (upsampled output height + width > 128): settled
    # pixels, tiles of open pixels (gathered or whole), and the band fallback when most tiles are open
    low = (23, 37)
    for image in ((92, 148), (89, 141)):
        class_logits, mask_logits = model_like_logits(queries + int(noise), queries, 25, low, noise=noise)
        expected = pp.semantic_argmax(class_logits, reference_masks(mask_logits, image, image))
        for tile, block in ((None, None), ((8, 8), 50), ((4, 200), 1 << 20), ((32, 12), 7)):
            got = pp.semantic_argmax_low_res(
                class_logits, mask_logits, image, image, pixel_block=block, tile=tile
            )
            assert torch.equal(got, expected), (image, tile, block)
        resized = (61, 203)
        expected = pp.semantic_argmax(class_logits, reference_masks(mask_logits, image, resized))
        assert torch.equal(
            pp.semantic_argmax_low_res(class_logits, mask_logits, image, resized, pixel_block=333), expected
        )


@pytest.mark.parametrize("queries", [1, 2, 5, 12])
@pytest.mark.parametrize("threads", [1, 2])
def test_upsampled_windows_are_bit_exact(queries, threads):
    _, mask_logits = make_logits(7, queries=queries, low=(30, 41))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        full = pp.upsample_to_padded(mask_logits, (120, 164))
        windows = (((0, 32), (0, 128)), ((37, 41), (161, 164)), ((116, 120), (0, 4)), ((50, 51), (77, 78)))
        for rows, cols in windows:
            up, (r, c) = pp._upsampled_window(mask_logits, rows, cols, min_size=128)
            assert sum(up.shape[-2:]) > 128
            window = up[:, r : r + rows[1] - rows[0], c : c + cols[1] - cols[0]]
            assert torch.equal(window, full[:, rows[0] : rows[1], cols[0] : cols[1]])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "low,image,target", [((11, 9), (41, 30), (23, 50)), ((12, 40), (45, 157), (90, 161))]
)
@pytest.mark.parametrize("threads", [1, 2])
def test_query_masks_equal_the_full_stack(low, image, target, threads):
    # F.interpolate's kernel (and rounding) depends on the channel count for small outputs and for 3
    # channels on one thread: the planes of a few queries must still be those of the full stack
    _, mask_logits = make_logits(5, queries=12, low=low)
    full = reference_masks(mask_logits, image, target)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        masks = pp.query_masks(mask_logits, image, target)
        for subset in ([7, 2, 2], [4], [0, 5], [1, 2, 3, 4, 5, 6, 7], list(range(12))):
            assert torch.equal(masks(torch.tensor(subset)), full[subset])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("queries", [5, 7, 11, 12])
@pytest.mark.parametrize("threads", [1, 2])
def test_masks_at_target_in_query_chunks_equal_the_full_stack(queries, threads):
    # four planes per chunk through the reused padded buffer, a last chunk of 3 redone as 4, into `out`
    low, image, target = (12, 40), (45, 157), (90, 161)
    _, mask_logits = make_logits(6, queries=queries, low=low)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with layers_config.settings(postprocess_query_block=4 * 4 * low[0] * 4 * low[1]):
            _check_masks_at_target(mask_logits, queries, image, target)
    finally:
        torch.set_num_threads(before)


def _check_masks_at_target(mask_logits, queries, image, target):
    for size in (target, image):
        full = reference_masks(mask_logits, image, size)
        assert torch.equal(pp.masks_at_target(mask_logits, image, size), full)
        out = torch.full((queries, *size), float("nan"))
        assert pp.masks_at_target(mask_logits, image, size, out=out) is out
        assert torch.equal(out, full)


def reference_panoptic(class_logits, masks, fuse, object_threshold, overlap, mask_threshold):
    """The original loop, query by query (kept queries in order, stuff merging by class)."""
    scores, labels = class_logits.softmax(-1).max(-1)
    num_classes = class_logits.shape[1] - 1
    keep = labels.ne(num_classes) & (scores > object_threshold)
    kept = keep.nonzero()[:, 0]
    panoptic = torch.zeros(masks.shape[1:], dtype=torch.int32)
    segments = []
    if kept.numel() == 0:
        return panoptic, segments
    probs = masks[kept].sigmoid()
    winner = (scores[kept][:, None, None] * probs).argmax(0)
    stuff_segment = {}
    for k in range(kept.numel()):
        label = int(labels[kept[k]])
        mask = (winner == k) & (probs[k] >= mask_threshold)
        mask_area, original_area = int((winner == k).sum()), int((probs[k] >= mask_threshold).sum())
        if mask_area == 0 or original_area == 0 or int(mask.sum()) == 0:
            continue
        if mask_area / original_area < overlap:
            continue
        if bool(fuse[label]) and label in stuff_segment:
            panoptic[mask] = stuff_segment[label]
            continue
        segments.append((int(kept[k]), label))
        panoptic[mask] = len(segments)
        if bool(fuse[label]):
            stuff_segment[label] = len(segments)
    return panoptic, segments


@pytest.mark.parametrize("low,image,target", SIZES[1:4])
def test_panoptic_streamed_matches_reference(low, image, target):
    total = 0
    for seed in range(4):
        class_logits, mask_logits = make_logits(seed, queries=16, classes=6, low=low, peaked=True)
        class_logits[5] = class_logits[3]  # a duplicate query: ties go to the earlier one
        mask_logits[5] = mask_logits[3]
        fuse = torch.tensor([False, False, False, True, True, True])
        masks = reference_masks(mask_logits, image, target)
        ref_map, ref_segments = reference_panoptic(class_logits, masks, fuse, 0.8, 0.15, 0.5)
        total += len(ref_segments)
        for chunk in (None, 1, 3, 100):
            query_masks = pp.query_masks(mask_logits, image, target)
            for source in (masks, query_masks):
                panoptic, segments = pp.panoptic_inference(
                    class_logits, source, fuse, 0.8, 0.15, 0.5, output_size=target, chunk=chunk
                )
                assert torch.equal(panoptic, ref_map)
                assert list(zip(segments["query"].tolist(), segments["label"].tolist(), strict=True)) == (
                    ref_segments
                )
    assert total >= 8


def reference_instances(class_logits, masks, topk, things, score_threshold):
    num_classes = class_logits.shape[1] - 1
    probs = class_logits.softmax(-1)[:, :-1]
    top, index = probs.flatten().topk(topk)
    labels, queries = index % num_classes, index // num_classes
    if things is not None:
        ok = things[labels]
        top, labels, queries = top[ok], labels[ok], queries[ok]
    binary = masks[queries] > 0
    inside = binary.flatten(1).float()
    mask_scores = (masks[queries].sigmoid().flatten(1) * inside).sum(1) / (inside.sum(1) + 1e-6)
    scores = top * mask_scores
    if score_threshold is not None:
        ok = scores >= score_threshold
        scores, labels, queries, binary = scores[ok], labels[ok], queries[ok], binary[ok]
    order = torch.sort(scores, descending=True, stable=True).indices
    return scores[order], labels[order], queries[order], binary[order]


@pytest.mark.parametrize("low,image,target", SIZES[1:4])
def test_instances_per_distinct_query_match_reference(low, image, target):
    for seed in range(3):
        class_logits, mask_logits = make_logits(seed, queries=14, classes=8, low=low, peaked=True)
        class_logits[2, 4] = class_logits[2, :-1].max() - 0.1  # a query with two strong classes
        things = torch.tensor([True] * 6 + [False] * 2)
        masks = reference_masks(mask_logits, image, target)
        for topk, thing, threshold in (
            (20, None, None),
            (30, things, None),
            (25, None, 0.3),
            (112, things, 0.05),
        ):
            ref = reference_instances(class_logits, masks, topk, thing, threshold)
            query_masks = pp.query_masks(mask_logits, image, target)
            found = pp.instance_detections(
                class_logits, query_masks, topk, thing, 0.5, threshold, output_size=target, chunk=3
            )
            assert torch.equal(found["labels"], ref[1]) and torch.equal(found["queries"], ref[2])
            torch.testing.assert_close(found["scores"], ref[0], rtol=1e-6, atol=1e-7)
            assert found["masks"].shape[0] == found["queries"].unique().numel()
            assert torch.equal(found["masks"][found["mask_index"]], ref[3])
            plain = pp.instance_inference(class_logits, masks, topk, thing, 0.5, threshold)
            assert torch.equal(plain["masks"], ref[3]) and torch.equal(plain["labels"], ref[1])
            expected = torch.zeros(target, dtype=torch.int32)
            for i in reversed(range(ref[3].shape[0])):
                expected[ref[3][i]] = i + 1
            assert torch.equal(pp.instance_map(found["masks"], found["mask_index"]), expected)


def test_processor_outputs_match_full_stack_references():
    processor = M2fHfImageProcessor(
        thing_ids=[0, 1, 2, 3, 4], object_mask_threshold=0.8, overlap_threshold=0.5, segment_ids="original"
    )
    class_logits, mask_logits = make_logits(11, queries=16, classes=8, low=(10, 14), peaked=True)
    outputs = SimpleNamespace(
        class_queries_logits=class_logits[None],
        masks_queries_logits=mask_logits[None],
        image_sizes=torch.tensor([[37, 53]]),
    )
    for target in ((37, 53), (29, 71)):
        masks = reference_masks(mask_logits, (37, 53), target)
        sem = processor.post_process_semantic_segmentation(outputs, target_sizes=[target])[0]
        expected, clear = reference_semantic(class_logits, masks)
        assert torch.equal(sem[clear], expected[clear])
        pan = processor.post_process_panoptic_segmentation(outputs, target_sizes=[target])[0]
        fuse = torch.tensor([False] * 5 + [True] * 3)
        ref_map, ref_segments = reference_panoptic(class_logits, masks, fuse, 0.8, 0.5, 0.5)
        assert torch.equal(pan["segmentation"], ref_map)
        assert [s["label_id"] for s in pan["segments_info"]] == [label for _, label in ref_segments]
        things = torch.tensor([True] * 5 + [False] * 3)
        scores, labels, _, binary = reference_instances(class_logits, masks, 100, things, None)
        inst = processor.post_process_instance_segmentation(outputs, target_sizes=[target])[0]
        maps = processor.post_process_instance_segmentation(
            outputs, target_sizes=[target], return_binary_maps=True
        )[0]
        rle = processor.post_process_instance_segmentation(
            outputs, target_sizes=[target], return_coco_annotation=True
        )[0]
        assert torch.equal(maps["segmentation"], binary)
        assert [r["counts"] for r in rle["segmentation"]] == [r["counts"] for r in pp.rle_encode(binary)]
        assert [s["label_id"] for s in inst["segments_info"]] == labels.tolist()
        torch.testing.assert_close(
            torch.tensor([s["score"] for s in inst["segments_info"]]), scores, rtol=1e-6, atol=1e-7
        )
        expected_map = torch.zeros(target, dtype=torch.int32)
        for i in reversed(range(binary.shape[0])):
            expected_map[binary[i]] = i + 1
        assert torch.equal(inst["segmentation"], expected_map)
