"""Test-time augmentation: multi-scale + horizontal flip, as the original `SemanticSegmentorWithTTA`.

Every image is run once per (shortest-edge size, flip) pair. As detectron2's `DatasetMapperTTA` does, each
augmented input is the image resized with `ResizeShortestEdge(min_size, max_size)` and then (for the flip
copy) mirrored left-right. Predictions are mapped back to the original resolution (flipped back) and
averaged:

* semantic: the per-class score maps Σ_q softmax(class)·sigmoid(mask) at the original size are averaged
  over all augmentations and then argmaxed: exactly the original's TTA (it averages its `sem_seg` outputs).
* instance / panoptic (not in the original, which has TTA for semantic segmentation only): per-query mask
  logits, resized to the original size and flipped back, are averaged, and so are the class
  probabilities; the usual instance/panoptic rule then runs on the merged queries. This is sound because
  Mask2Former's queries are learned embeddings: query q of one augmentation and query q of another start
  from the same embedding and specialise in the same way, so they describe the same object hypothesis.

With one size and no flip the result equals the plain processor post-processing exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

from . import processing_postprocess as pp
from .image_processing_m2f import resized_shape, to_rgb_uint8

__all__ = ["TTA_SCALES", "predict_with_tta", "tta_sizes"]

# The original ADE20K TTA sizes 256..896 are 512 x these factors (TEST.AUG.MIN_SIZES), with
# TEST.AUG.MAX_SIZE 3584 = 2048 x 1.75.
TTA_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def tta_sizes(processor: Any, scales: Sequence[float] = TTA_SCALES) -> tuple[tuple[int, ...], int | None]:
    """Default (min_sizes, max_size): the processor's shortest edge times `scales`, longest edge times the
    largest scale."""
    size = processor.size
    shortest = size["shortest_edge"] if isinstance(size, dict) else size.shortest_edge
    longest = size.get("longest_edge") if isinstance(size, dict) else size.longest_edge
    min_sizes = tuple(int(round(shortest * s)) for s in scales)
    max_size = None if longest is None else int(round(longest * max(scales)))
    return min_sizes, max_size


def _augmented_inputs(
    image: np.ndarray, min_size: int, max_size: int | None, flip: bool, resample: Any
) -> list[np.ndarray]:
    """Resize (the original's rounding and Pillow filter), then optionally add the mirrored copy."""
    height, width = image.shape[:2]
    new_h, new_w = resized_shape(height, width, min_size, max_size)
    if (new_h, new_w) != (height, width):
        image = np.asarray(PIL.Image.fromarray(image).resize((new_w, new_h), resample))
    out = [image]
    if flip:
        out.append(np.ascontiguousarray(image[:, ::-1]))
    return out


def _check_args(task: str, min_sizes: Sequence[int], max_size: int | None) -> list[int]:
    pp.check_task(task)
    sizes = list(min_sizes)
    if not sizes:
        raise ValueError("min_sizes must contain at least one size")
    for s in sizes:
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 1:
            raise ValueError(f"min_sizes must be positive integers, got {list(min_sizes)}")
    if max_size is not None and (not isinstance(max_size, (int, np.integer)) or max_size < 1):
        raise ValueError(f"max_size must be a positive integer or None, got {max_size!r}")
    return [int(s) for s in sizes]


@torch.no_grad()
def _run(model: torch.nn.Module, processor: Any, arrays: list[np.ndarray]) -> tuple[Any, Any]:
    inputs = processor(images=arrays, do_resize=False, return_tensors="pt")
    parameter = next(model.parameters())
    outputs = model(
        pixel_values=inputs["pixel_values"].to(device=parameter.device, dtype=parameter.dtype),
        pixel_mask=inputs["pixel_mask"].to(parameter.device),
        output_auxiliary_logits=False,
    )
    return outputs, inputs


def predict_with_tta(
    model: torch.nn.Module,
    processor: Any,
    images: Any,
    task: str = "semantic",
    min_sizes: Sequence[int] | None = None,
    max_size: int | None = None,
    flip: bool = True,
    threshold: float | None = None,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float | None = None,
    label_ids_to_fuse: set[int] | None = None,
    return_segmentation_scores: bool = False,
    return_binary_maps: bool = False,
    return_coco_annotation: bool = False,
) -> list[Any]:
    """Segment `images` with multi-scale (+ flip) test-time augmentation, at each image's original size.

    Args:
        model: a Mask2Former model (eval mode is the caller's business, as with plain inference).
        processor: the model's `M2fHfImageProcessor` (normalisation, padding and post-processing options).
        images: one image or a list (anything the processor accepts).
        task: "semantic", "instance" or "panoptic".
        min_sizes: shortest-edge sizes (default: `tta_sizes(processor)`, the original's 0.5x..1.75x).
        max_size: cap on the longest edge (default: from `tta_sizes`; None with explicit min_sizes = the
            processor's longest_edge).
        flip: also run the left-right mirrored copy of every size.
        threshold, mask_threshold, overlap_mask_area_threshold, label_ids_to_fuse, return_*: as in the
            processor's `post_process_<task>_segmentation`.

    Returns:
        the same list the processor's `post_process_<task>_segmentation(..., target_sizes=original sizes)`
        returns.
    """
    if min_sizes is None:
        min_sizes, default_max = tta_sizes(processor)
        max_size = default_max if max_size is None else max_size
    elif max_size is None:
        size = processor.size
        max_size = size.get("longest_edge") if isinstance(size, dict) else size.longest_edge
    sizes = _check_args(task, min_sizes, max_size)
    if return_coco_annotation and return_binary_maps:
        raise ValueError("return_coco_annotation and return_binary_maps cannot both be True")
    image_list = list(images) if isinstance(images, (list, tuple)) else [images]
    if not image_list:
        raise ValueError("no images given")

    results = []
    for index, image in enumerate(image_list):
        array = to_rgb_uint8(image, index)
        target = tuple(array.shape[:2])
        class_probs, class_logits_single, masks, scores = [], None, None, None
        count = 0
        for min_size in sizes:
            arrays = _augmented_inputs(array, min_size, max_size, flip, processor.resample)
            outputs, inputs = _run(model, processor, arrays)
            for k in range(len(arrays)):
                single = {
                    "class_queries_logits": outputs.class_queries_logits[k : k + 1],
                    "masks_queries_logits": outputs.masks_queries_logits[k : k + 1],
                    "image_sizes": inputs["image_sizes"][k : k + 1],
                }
                flipped = k == 1
                count += 1
                if task == "semantic":
                    s = processor.post_process_semantic_segmentation(
                        single, target_sizes=[target], return_segmentation_scores=True
                    )[0]["segmentation_scores"]
                    s = s.flip(-1) if flipped else s
                    scores = s if scores is None else scores + s
                else:
                    class_logits, mask_logits, crops, targets = pp.unpack_outputs(single, [target])
                    m = pp.masks_at_target(mask_logits[0], crops[0], targets[0])
                    m = m.flip(-1) if flipped else m
                    masks = m if masks is None else masks + m
                    class_logits_single = class_logits[0]
                    class_probs.append(class_logits[0].softmax(dim=-1))
        if task == "semantic":
            mean = scores / count
            results.append(
                {"segmentation": mean.argmax(dim=0), "segmentation_scores": mean}
                if return_segmentation_scores
                else mean.argmax(dim=0)
            )
            continue
        mask_logits = masks / count
        # one augmentation: keep its logits untouched so the result equals plain inference exactly;
        # several: log of the mean probabilities (the rules only use softmax(class logits) = the mean)
        class_logits = class_logits_single if count == 1 else torch.stack(class_probs).mean(0).log()
        if task == "panoptic":
            results.append(
                _panoptic(
                    processor,
                    class_logits,
                    mask_logits,
                    threshold,
                    mask_threshold,
                    overlap_mask_area_threshold,
                    label_ids_to_fuse,
                )
            )
        else:
            results.append(
                _instance(
                    processor,
                    class_logits,
                    mask_logits,
                    threshold,
                    mask_threshold,
                    return_binary_maps,
                    return_coco_annotation,
                )
            )
    return results


def _panoptic(processor, class_logits, mask_logits, threshold, mask_threshold, overlap, label_ids_to_fuse):
    """The processor's panoptic rule and settings applied to merged (Q, H, W) mask logits at the output
    size."""
    threshold = processor.object_mask_threshold if threshold is None else threshold
    overlap = processor.overlap_threshold if overlap is None else overlap
    fuse = pp.fuse_flags(
        label_ids_to_fuse, processor.thing_ids, class_logits.shape[-1] - 1, mask_logits.device
    )
    return pp.panoptic_result(
        *pp.panoptic_inference(class_logits, mask_logits, fuse, threshold, overlap, mask_threshold)
    )


def _instance(processor, class_logits, mask_logits, threshold, mask_threshold, binary_maps, coco):
    """The processor's instance rule and settings applied to merged (Q, H, W) mask logits at the output
    size."""
    num_classes = class_logits.shape[-1] - 1
    things = None if processor.thing_ids is None else pp.class_flags(processor.thing_ids, num_classes)
    found = pp.instance_detections(
        class_logits,
        mask_logits,
        processor.test_topk_per_image,
        things,
        mask_threshold,
        threshold,
        tuple(mask_logits.shape[-2:]),
    )
    return pp.instance_result(found, binary_maps, coco)
