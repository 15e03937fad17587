"""Training targets (one binary mask + one class per segment) from semantic, instance and panoptic maps.

Mask2Former is trained with set prediction: every image brings a set of binary masks and their classes.
These functions turn the usual annotation formats into that set the way the original dataset mappers do
(`MaskFormerSemanticDatasetMapper`, the COCO panoptic mappers), and transformers' `do_reduce_labels`
convention for ADE20K-style maps.

Memory: masks are built straight into one preallocated `bool` array (N, H, W) by a single scatter, so the
peak stays close to the size of the result, even for hundreds of instances on large images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "instance_to_targets",
    "pad_targets",
    "panoptic_to_targets",
    "rgb_to_id",
    "id_to_rgb",
    "semantic_to_targets",
]


def _as_integer_map(array: Any, name: str, ndim: tuple[int, ...] = (2,)) -> np.ndarray:
    """Return `array` as a numpy integer array, refusing floats, bools, wrong ranks and negative values."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    elif not isinstance(array, np.ndarray):
        try:
            array = np.asarray(array)
        except Exception as exc:  # PIL images and nested lists convert; anything else is a user error
            raise TypeError(
                f"{name} must be a numpy array or torch tensor, got {type(array).__name__}"
            ) from exc
    if array.ndim not in ndim:
        raise ValueError(
            f"{name} must have {' or '.join(str(d) for d in ndim)} dimensions, got shape {tuple(array.shape)}"
        )
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {array.dtype}")
    if array.size and np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
        raise ValueError(f"{name} holds negative ids (min {int(array.min())}); ids must be >= 0")
    return array


def _check_image_size(shape: tuple[int, ...], image_size: Sequence[int] | None, name: str) -> None:
    if image_size is None:
        return
    if len(image_size) != 2:
        raise ValueError(f"image_size must be (height, width), got {tuple(image_size)}")
    if tuple(int(s) for s in image_size) != tuple(shape[:2]):
        raise ValueError(f"{name} has size {tuple(shape[:2])} but the image is {tuple(image_size)}")


def _scatter_masks(segment_index: np.ndarray, num_segments: int) -> torch.Tensor:
    """Build (num_segments, H, W) bool masks from a map of segment indices (-1 = no segment).

    One zero-filled bool array of the final size is the only large allocation; the pixels of each
    segment are switched on by one fancy-index assignment, whatever the number of segments.
    """
    height, width = segment_index.shape
    masks = np.zeros((num_segments, height * width), dtype=np.bool_)
    flat = segment_index.reshape(-1)
    pixels = np.flatnonzero(flat >= 0)
    if pixels.size:
        masks[flat[pixels], pixels] = True
    return torch.from_numpy(masks.reshape(num_segments, height, width))


def _empty(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros((0, height, width), dtype=torch.bool), torch.zeros((0,), dtype=torch.long)


def _reduce_labels(label_map: np.ndarray, ignore_index: int) -> np.ndarray:
    """ADE20K convention: 0 ("other") becomes ignore, every other class shifts down by one; ignore stays."""
    reduced = label_map.astype(np.int64) - 1
    reduced[label_map == 0] = ignore_index
    reduced[label_map == ignore_index] = ignore_index
    return reduced


def _label_map(
    label_map: Any,
    name: str,
    image_size: Sequence[int] | None,
    do_reduce_labels: bool,
    ignore_index: int | None,
    zero: str,
) -> np.ndarray:
    """A checked (H, W) integer label map, with the ADE20K label reduction applied when asked for
    (`zero` names what value 0 is, for the error)."""
    values = _as_integer_map(label_map, name)
    _check_image_size(values.shape, image_size, name)
    if do_reduce_labels:
        if ignore_index is None:
            raise ValueError(f"do_reduce_labels=True needs an ignore_index to send {zero} 0 to")
        values = _reduce_labels(values, ignore_index)
    return values


def _value_index(label_map: np.ndarray, ignore_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of `label_map` other than `ignore_index` (increasing) and, per pixel, the
    position of its value among them (-1 where the pixel is ignored)."""
    height, width = label_map.shape
    values, inverse = np.unique(label_map, return_inverse=True)
    index = inverse.reshape(height, width).astype(np.int64)
    if ignore_index is not None and np.any(values == ignore_index):
        position = int(np.flatnonzero(values == ignore_index)[0])
        index[index == position] = -1
        index[index > position] -= 1
        values = np.delete(values, position)
    return values, index


def semantic_to_targets(
    segmentation_map: Any,
    ignore_index: int | None = 255,
    do_reduce_labels: bool = False,
    image_size: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask per class present in a semantic map, as the original semantic mapper builds its targets.

    Args:
        segmentation_map: (H, W) integer class map (numpy or torch).
        ignore_index: pixels with this value get no mask (the original's `ignore_label`, 255); None keeps all.
        do_reduce_labels: map 0 to `ignore_index` and shift other classes by -1 first (ADE20K convention).
        image_size: optional (H, W) of the image, checked against the map.

    Returns:
        masks (N, H, W) bool and labels (N,) long, classes in increasing order.
    """
    name = "segmentation_map"
    seg = _label_map(segmentation_map, name, image_size, do_reduce_labels, ignore_index, "class")
    classes, index = _value_index(seg, ignore_index)
    if classes.size == 0:
        return _empty(*seg.shape)
    return _scatter_masks(index, classes.size), torch.as_tensor(classes.astype(np.int64))


def instance_to_targets(
    instance_map: Any,
    instance_id_to_semantic_id: Mapping[int, int] | None = None,
    ignore_index: int | None = None,
    do_reduce_labels: bool = False,
    image_size: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask per instance id of an instance map, labelled through `instance_id_to_semantic_id`.

    Follows transformers' Mask2Former convention: every id is an instance, including 0, unless it equals
    `ignore_index` (pass `ignore_index=0` to treat 0 as unlabelled background). With `do_reduce_labels`,
    id 0 becomes ignore, the mapping is looked up with the original id and the class is shifted by -1.
    Without a mapping the instance ids themselves are the labels (a semantic map read as instances).

    Returns:
        masks (N, H, W) bool and labels (N,) long, instances in increasing id order.
    """
    instances = _label_map(instance_map, "instance_map", image_size, do_reduce_labels, ignore_index, "id")
    ids, index = _value_index(instances, ignore_index)
    if ids.size == 0:
        return _empty(*instances.shape)
    if instance_id_to_semantic_id is None:
        labels = ids.astype(np.int64)
    else:
        labels = np.empty(ids.size, dtype=np.int64)
        for i, instance_id in enumerate(ids.tolist()):
            key = instance_id + 1 if do_reduce_labels else instance_id
            if key not in instance_id_to_semantic_id:
                hint = "; pass ignore_index=0 to treat id 0 as background" if key == 0 else ""
                raise ValueError(
                    f"instance id {key} of instance_map has no entry in instance_id_to_semantic_id{hint}"
                )
            class_id = int(instance_id_to_semantic_id[key])
            labels[i] = class_id - 1 if do_reduce_labels else class_id
            if labels[i] < 0:
                raise ValueError(
                    f"instance id {key} maps to class {class_id}, which gives the negative "
                    f"label {int(labels[i])} (do_reduce_labels={do_reduce_labels})"
                )
    return _scatter_masks(index, ids.size), torch.as_tensor(labels)


def rgb_to_id(color: Any) -> np.ndarray:
    """COCO panoptic PNG colour to segment id: R + 256 * G + 256**2 * B."""
    color = np.asarray(color)
    if color.ndim != 3 or color.shape[-1] != 3:
        raise ValueError(f"panoptic PNG must have shape (H, W, 3), got {tuple(color.shape)}")
    if color.dtype != np.uint8:
        raise ValueError(f"panoptic PNG must be uint8, got dtype {color.dtype}")
    color = color.astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id_to_rgb(id_map: Any) -> np.ndarray:
    """Segment ids (< 2**24) to the COCO panoptic PNG colour (H, W, 3) uint8."""
    ids = _as_integer_map(id_map, "id_map").astype(np.int64)
    if ids.size and ids.max() >= 256**3:
        raise ValueError(f"segment id {int(ids.max())} does not fit in an RGB PNG (must be < 2**24)")
    return np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)


def panoptic_to_targets(
    panoptic_map: Any,
    segments_info: Sequence[Mapping[str, Any]],
    category_id_to_contiguous: Mapping[int, int] | None = None,
    image_size: Sequence[int] | None = None,
    remove_empty: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask per listed, non-crowd segment of a COCO panoptic annotation, as the original mappers do.

    Args:
        panoptic_map: the panoptic PNG as (H, W, 3) uint8 RGB (id = R + 256 G + 256^2 B) or an (H, W) id map.
        segments_info: COCO `segments_info` entries with "id", "category_id" and optionally "iscrowd".
            Pixels of ids not listed (0 = VOID, padding) belong to no mask; crowd segments are skipped.
        category_id_to_contiguous: dataset category id -> contiguous training id (None: ids used as given).
        remove_empty: drop segments with no pixel (e.g. cropped away). The original panoptic mappers keep
            them (False), the instance mapper drops them.

    Returns:
        masks (N, H, W) bool and labels (N,) long, in the order of `segments_info`.
    """
    if isinstance(panoptic_map, torch.Tensor):
        panoptic_map = panoptic_map.detach().cpu().numpy()
    panoptic_map = np.asarray(panoptic_map)
    if panoptic_map.ndim == 3:
        ids = rgb_to_id(panoptic_map)
    elif panoptic_map.ndim == 2:
        ids = _as_integer_map(panoptic_map, "panoptic_map")
    else:
        raise ValueError(
            f"panoptic_map must be (H, W, 3) RGB or an (H, W) id map, got shape {tuple(panoptic_map.shape)}"
        )
    _check_image_size(ids.shape, image_size, "panoptic_map")
    height, width = ids.shape

    if isinstance(segments_info, Mapping) or not isinstance(segments_info, Sequence):
        raise TypeError(f"segments_info must be a list of dicts, got {type(segments_info).__name__}")
    kept_ids: list[int] = []
    labels: list[int] = []
    seen: set[int] = set()
    for k, segment in enumerate(segments_info):
        if not isinstance(segment, Mapping) or "id" not in segment or "category_id" not in segment:
            raise ValueError(
                f"segments_info[{k}] must be a dict with 'id' and 'category_id', got {segment!r}"
            )
        segment_id = int(segment["id"])
        if segment_id <= 0:
            raise ValueError(f"segments_info[{k}] has id {segment_id}; segment ids must be > 0 (0 is VOID)")
        if segment_id in seen:
            raise ValueError(f"segments_info lists segment id {segment_id} twice")
        seen.add(segment_id)
        if segment.get("iscrowd", 0):
            continue
        category_id = int(segment["category_id"])
        if category_id_to_contiguous is not None:
            if category_id not in category_id_to_contiguous:
                raise ValueError(
                    f"segments_info[{k}] has category_id {category_id}, which is not in "
                    "category_id_to_contiguous"
                )
            category_id = int(category_id_to_contiguous[category_id])
        if category_id < 0:
            raise ValueError(f"segments_info[{k}] has a negative category id {category_id}")
        kept_ids.append(segment_id)
        labels.append(category_id)
    if not kept_ids:
        return _empty(height, width)

    # Map every pixel to the position of its segment in `kept_ids` (-1 when not listed).
    present, inverse = np.unique(ids, return_inverse=True)
    lookup = {segment_id: i for i, segment_id in enumerate(kept_ids)}
    present_to_segment = np.array([lookup.get(int(v), -1) for v in present], dtype=np.int64)
    index = present_to_segment[inverse.reshape(height, width)]
    masks = _scatter_masks(index, len(kept_ids))
    label_tensor = torch.tensor(labels, dtype=torch.long)
    if remove_empty:
        keep = masks.flatten(1).any(dim=1)
        if not bool(keep.all()):
            masks, label_tensor = masks[keep], label_tensor[keep]
    return masks, label_tensor


def pad_targets(masks: Any, padded_size: Sequence[int]) -> torch.Tensor:
    """Pad (N, h, w) masks with False at the bottom and right to `padded_size` (Hp, Wp), staying bool.

    The model predicts masks for the padded batch; targets are padded the same way (the original's
    `prepare_targets`), so padding pixels count as background of every mask.
    """
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(masks)
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a numpy array or torch tensor, got {type(masks).__name__}")
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        raise ValueError(f"masks must be bool, got dtype {masks.dtype}")
    if len(padded_size) != 2:
        raise ValueError(f"padded_size must be (height, width), got {tuple(padded_size)}")
    target_h, target_w = (int(s) for s in padded_size)
    num, height, width = masks.shape
    if target_h < height or target_w < width:
        raise ValueError(f"padded_size {(target_h, target_w)} is smaller than the masks ({height}, {width})")
    padded = torch.zeros((num, target_h, target_w), dtype=torch.bool)
    padded[:, :height, :width] = masks
    return padded
