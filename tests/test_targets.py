"""Training targets from semantic / instance / panoptic annotations (m2f_hf.processing_targets)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from m2f_hf.processing_targets import (
    id_to_rgb,
    instance_to_targets,
    pad_targets,
    panoptic_to_targets,
    rgb_to_id,
    semantic_to_targets,
)


def _reference_semantic(seg: np.ndarray, ignore: int) -> tuple[np.ndarray, np.ndarray]:
    """The original semantic mapper's construction: sorted classes, one equality mask each."""
    classes = np.unique(seg)
    classes = classes[classes != ignore]
    return np.stack([seg == c for c in classes]) if len(classes) else np.zeros(
        (0,) + seg.shape, bool
    ), classes


def _assert_targets(masks: torch.Tensor, labels: torch.Tensor, shape: tuple[int, int]) -> None:
    assert masks.dtype == torch.bool and labels.dtype == torch.long
    assert masks.shape[1:] == shape and masks.shape[0] == labels.shape[0]


# ------------------------------------------------------------------------------------------------ semantic
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_semantic_matches_original_construction(dtype):
    rng = np.random.default_rng(0)
    seg = rng.choice(np.array([0, 2, 7, 19, 255]), size=(37, 53)).astype(dtype)
    masks, labels = semantic_to_targets(seg, ignore_index=255)
    ref_masks, ref_classes = _reference_semantic(seg.astype(np.int64), 255)
    _assert_targets(masks, labels, (37, 53))
    assert labels.tolist() == [0, 2, 7, 19] == ref_classes.tolist()
    assert np.array_equal(masks.numpy(), ref_masks)
    # every labelled pixel belongs to exactly one mask, ignore pixels to none
    coverage = masks.sum(0).numpy()
    assert np.array_equal(coverage, (seg != 255).astype(coverage.dtype))


def test_semantic_torch_input_and_image_size():
    seg = torch.tensor([[1, 1, 3], [3, 255, 1]])
    masks, labels = semantic_to_targets(seg, image_size=(2, 3))
    assert labels.tolist() == [1, 3]
    assert masks[0].tolist() == [[True, True, False], [False, False, True]]
    assert masks[1].tolist() == [[False, False, True], [True, False, False]]


def test_semantic_reduce_labels_ade_convention():
    seg = np.array([[0, 1, 2], [150, 255, 1]], dtype=np.uint8)
    masks, labels = semantic_to_targets(seg, ignore_index=255, do_reduce_labels=True)
    assert labels.tolist() == [0, 1, 149]  # 0 -> ignore, others shifted, 255 stays ignore
    assert masks[0].tolist() == [[False, True, False], [False, False, True]]
    assert masks.sum().item() == 4
    with pytest.raises(ValueError, match="ignore_index"):
        semantic_to_targets(seg, ignore_index=None, do_reduce_labels=True)


def test_semantic_empty_annotation():
    masks, labels = semantic_to_targets(np.full((5, 7), 255, dtype=np.uint8))
    assert masks.shape == (0, 5, 7) and masks.dtype == torch.bool
    assert labels.shape == (0,) and labels.dtype == torch.long
    masks, labels = semantic_to_targets(np.zeros((4, 4), np.uint8), do_reduce_labels=True)
    assert masks.shape == (0, 4, 4) and labels.shape == (0,)


def test_semantic_without_ignore_keeps_every_value():
    seg = np.array([[255, 0]])
    _, labels = semantic_to_targets(seg, ignore_index=None)
    assert labels.tolist() == [0, 255]


@pytest.mark.parametrize(
    ("seg", "match"),
    [
        (np.zeros((4, 4), np.float32), "integer labels"),
        (np.zeros((4, 4), bool), "integer labels"),
        (np.zeros((2, 4, 4), np.int64), "2 dimensions"),
        (np.array([[0, -3]]), "negative"),
    ],
)
def test_semantic_invalid_input(seg, match):
    with pytest.raises(ValueError, match=match):
        semantic_to_targets(seg)


def test_semantic_size_mismatch():
    with pytest.raises(ValueError, match=r"size \(4, 5\) but the image is \(5, 4\)"):
        semantic_to_targets(np.zeros((4, 5), np.uint8), image_size=(5, 4))


# ------------------------------------------------------------------------------------------------ instance
def test_instance_with_mapping_and_background():
    inst = np.array([[0, 0, 5, 5], [2, 2, 5, 0], [2, 9, 9, 0]], dtype=np.int32)
    mapping = {2: 14, 5: 3, 9: 14}
    masks, labels = instance_to_targets(inst, mapping, ignore_index=0)
    _assert_targets(masks, labels, (3, 4))
    assert labels.tolist() == [14, 3, 14]  # ids 2, 5, 9 in increasing order
    for k, instance_id in enumerate([2, 5, 9]):
        assert np.array_equal(masks[k].numpy(), inst == instance_id)


def test_instance_zero_is_an_instance_unless_ignored():
    inst = np.array([[0, 1], [1, 1]])
    with pytest.raises(ValueError, match="instance id 0 .*ignore_index=0"):
        instance_to_targets(inst, {1: 4})
    masks, labels = instance_to_targets(inst, {0: 7, 1: 4})
    assert labels.tolist() == [7, 4] and masks.shape == (2, 2, 2)
    masks, labels = instance_to_targets(inst)  # no mapping: ids are the labels
    assert labels.tolist() == [0, 1]


def test_instance_reduce_labels_transformers_convention():
    # transformers: id 0 -> ignore, ids shift by -1, mapping looked up with the original id, class - 1
    inst = np.array([[0, 1, 1], [3, 3, 0]])
    masks, labels = instance_to_targets(inst, {1: 5, 3: 1}, ignore_index=255, do_reduce_labels=True)
    assert labels.tolist() == [4, 0]
    assert np.array_equal(masks[0].numpy(), inst == 1) and np.array_equal(masks[1].numpy(), inst == 3)
    with pytest.raises(ValueError, match="negative label"):
        instance_to_targets(inst, {1: 0, 3: 1}, ignore_index=255, do_reduce_labels=True)


def test_instance_empty_and_invalid():
    masks, labels = instance_to_targets(np.zeros((3, 6), np.int64), {}, ignore_index=0)
    assert masks.shape == (0, 3, 6) and masks.dtype == torch.bool and labels.dtype == torch.long
    with pytest.raises(ValueError, match="integer labels"):
        instance_to_targets(np.zeros((3, 3), np.float64))
    with pytest.raises(ValueError, match="instance id 4"):
        instance_to_targets(np.array([[4, 1]]), {1: 0})


# ------------------------------------------------------------------------------------------------ panoptic
def _panoptic_example():
    ids = np.zeros((6, 8), dtype=np.int64)
    ids[:3, :4] = 7  # thing, R channel only
    ids[:3, 4:] = 70000  # stuff, uses the B channel (70000 = 4464 + 256^2)
    ids[3:, :5] = 300  # crowd, uses the G channel
    ids[3:, 5:] = 123456  # not listed: no mask
    ids[0, 0] = 0  # VOID
    segments = [
        {"id": 70000, "category_id": 184, "iscrowd": 0},
        {"id": 7, "category_id": 1, "iscrowd": 0},
        {"id": 300, "category_id": 1, "iscrowd": 1},
        {"id": 999, "category_id": 3},  # listed but absent (e.g. cropped away); iscrowd defaults to 0
    ]
    return ids, segments


def test_rgb_id_roundtrip():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 123456, 256**3 - 1]])
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    assert rgb[1, 2].tolist() == [123456 % 256, (123456 // 256) % 256, 123456 // 65536]
    assert np.array_equal(rgb_to_id(rgb), ids)
    with pytest.raises(ValueError, match="2\\*\\*24"):
        id_to_rgb(np.array([[256**3]]))
    with pytest.raises(ValueError, match="uint8"):
        rgb_to_id(rgb.astype(np.int32))


def test_panoptic_as_original_mapper():
    ids, segments = _panoptic_example()
    mapping = {1: 0, 3: 2, 184: 132}
    masks, labels = panoptic_to_targets(id_to_rgb(ids), segments, mapping)
    _assert_targets(masks, labels, (6, 8))
    # listed order, crowd skipped, empty segment kept (as the original panoptic mappers)
    assert labels.tolist() == [132, 0, 2]
    assert np.array_equal(masks[0].numpy(), ids == 70000)
    assert np.array_equal(masks[1].numpy(), ids == 7)
    assert masks[1, 0, 0].item() is False  # VOID pixel
    assert not masks[2].any()
    assert not masks[:, 3:, 5:].any()  # unlisted id
    # the id-map form gives the same targets
    masks_id, labels_id = panoptic_to_targets(ids, segments, mapping)
    assert torch.equal(masks_id, masks) and torch.equal(labels_id, labels)
    # remove_empty drops the absent segment
    masks_ne, labels_ne = panoptic_to_targets(ids, segments, mapping, remove_empty=True)
    assert labels_ne.tolist() == [132, 0] and masks_ne.shape == (2, 6, 8)
    # without a mapping the category ids are used as given
    _, raw = panoptic_to_targets(ids, segments)
    assert raw.tolist() == [184, 1, 3]


def test_panoptic_empty_and_invalid():
    ids, segments = _panoptic_example()
    masks, labels = panoptic_to_targets(ids, [])
    assert masks.shape == (0, 6, 8) and masks.dtype == torch.bool and labels.shape == (0,)
    masks, labels = panoptic_to_targets(ids, [segments[2]])  # only a crowd segment
    assert masks.shape == (0, 6, 8) and labels.dtype == torch.long
    with pytest.raises(ValueError, match="category_id 184"):
        panoptic_to_targets(ids, segments, {1: 0, 3: 2})
    with pytest.raises(ValueError, match="twice"):
        panoptic_to_targets(ids, [segments[0], segments[0]])
    with pytest.raises(ValueError, match="VOID"):
        panoptic_to_targets(ids, [{"id": 0, "category_id": 1}])
    with pytest.raises(ValueError, match="'id' and 'category_id'"):
        panoptic_to_targets(ids, [{"id": 7}])
    with pytest.raises(ValueError, match="uint8"):
        panoptic_to_targets(np.zeros((6, 8, 3), np.float32), segments)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        panoptic_to_targets(np.zeros((6, 8, 4), np.uint8), segments)
    with pytest.raises(ValueError, match="but the image is"):
        panoptic_to_targets(ids, segments, image_size=(8, 6))
    with pytest.raises(TypeError, match="list of dicts"):
        panoptic_to_targets(ids, segments[0])


# ------------------------------------------------------------------------------------------------ padding
def test_pad_targets():
    masks, _ = semantic_to_targets(np.array([[1, 2, 2], [1, 1, 2]]))
    padded = pad_targets(masks, (4, 5))
    assert padded.shape == (2, 4, 5) and padded.dtype == torch.bool
    assert torch.equal(padded[:, :2, :3], masks)
    assert not padded[:, 2:].any() and not padded[:, :, 3:].any()
    assert torch.equal(pad_targets(masks.numpy(), (2, 3)), masks)
    assert pad_targets(torch.zeros((0, 2, 3), dtype=torch.bool), (8, 8)).shape == (0, 8, 8)
    with pytest.raises(ValueError, match="smaller"):
        pad_targets(masks, (1, 5))
    with pytest.raises(ValueError, match="bool"):
        pad_targets(masks.float(), (4, 5))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        pad_targets(masks[0], (4, 5))


# ------------------------------------------------------------------------------------------------ memory
def test_memory_300_instances_at_1024():
    """Targets for 300 instances at 1024x1024 peak below twice the bool masks' own bytes."""
    side, count = 1024, 300
    rows, cols = np.divmod(np.arange(side * side), side)
    # 300 instances: a 20 x 15 grid of blocks, ids 1..300, with a background border id 0
    inst = (1 + (rows * 20 // side) * 15 + (cols * 15 // side)).astype(np.int32).reshape(side, side)
    inst[:8] = 0
    mapping = {i: i % 133 for i in range(1, count + 1)}
    mask_bytes = count * side * side

    tracemalloc.start()
    try:
        masks, labels = instance_to_targets(inst, mapping, ignore_index=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert masks.shape == (count, side, side) and masks.dtype == torch.bool
    assert peak >= mask_bytes  # the measurement sees the mask array itself
    assert peak < 2 * mask_bytes, f"peak {peak / 2**20:.0f} MiB for {mask_bytes / 2**20:.0f} MiB of masks"
    assert labels.tolist() == [i % 133 for i in range(1, count + 1)]
    # spot-check correctness on the real result
    masks_np = masks.numpy()  # numpy reductions: torch's bool sum is slow on 300M elements
    for k in (0, 137, 299):
        assert np.array_equal(masks_np[k], inst == k + 1)
    assert int(np.count_nonzero(masks_np)) == int((inst > 0).sum())

    segments = [{"id": i, "category_id": i % 133, "iscrowd": 0} for i in range(1, count + 1)]
    tracemalloc.start()
    try:
        pan_masks, _ = panoptic_to_targets(inst, segments)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert mask_bytes <= peak < 2 * mask_bytes
    assert np.array_equal(pan_masks.numpy(), masks_np)
