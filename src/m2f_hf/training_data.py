"""Training data: sample normalisation, per-sample transforms and collators.

A sample is a mapping with an RGB "image" and its annotation (a panoptic map with "segments_info", or a
semantic map); `normalize_sample` checks and converts it, `TrainTransform` augments it and builds the
training targets of a task, and the collators pad a batch. Everything random is a function of (seed,
epoch, sample index) (`sample_seed`), never of process-global state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from .processing_postprocess import check_task
from .processing_targets import pad_targets, panoptic_to_targets, rgb_to_id, semantic_to_targets
from .training_augmentation import AugmentationPipeline

IGNORE_INDEX = 255

__all__ = [
    "IGNORE_INDEX",
    "SegmentationCollator",
    "SegmentationEvalCollator",
    "TrainTransform",
    "normalize_sample",
    "sample_seed",
    "semantic_from_panoptic",
]


# ------------------------------------------------------------------------------------------------ samples
def _as_array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, Image.Image):
        return np.asarray(value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    raise TypeError(f"{name} must be a PIL image, numpy array or tensor, got {type(value).__name__}")


def normalize_sample(
    sample: Mapping[str, Any],
    category_id_to_contiguous: Mapping[int, int] | None = None,
) -> dict[str, Any]:
    """One training/evaluation example in the form the rest of this module uses.

    Accepts the dicts of `synthetic.make_synthetic_sample` / `load_coco_panoptic`, rows of
    `synthetic.to_hf_dataset` (column "panoptic") and plain {"image", "semantic_map"} rows. Returns
    {"image": (H, W, 3) uint8, "semantic_map": (H, W) int64 or None, "panoptic_map": (H, W) int64 ids or
    None, "segments_info": [{"id", "category_id" (contiguous), "iscrowd"}] or None}.
    """
    if "image" not in sample:
        raise ValueError(f"sample has no 'image' (keys: {sorted(sample)})")
    image = _as_array(
        sample["image"].convert("RGB") if isinstance(sample["image"], Image.Image) else sample["image"],
        "image",
    )
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.dtype} {tuple(image.shape)}")
    out: dict[str, Any] = {"image": image, "semantic_map": None, "panoptic_map": None, "segments_info": None}
    panoptic = sample.get("panoptic_map")
    if panoptic is None:
        panoptic = sample.get("panoptic_png", sample.get("panoptic"))
    if panoptic is not None:
        array = _as_array(panoptic, "panoptic map")
        if array.ndim == 3:
            array = rgb_to_id(array.astype(np.uint8) if array.dtype != np.uint8 else array)
        if array.shape != image.shape[:2]:
            raise ValueError(f"panoptic map {array.shape} does not match the image {image.shape[:2]}")
        if sample.get("segments_info") is None:
            raise ValueError("a panoptic map needs 'segments_info'")
        segments = []
        for segment in sample["segments_info"]:
            category = int(segment["category_id"])
            if category_id_to_contiguous is not None:
                if category not in category_id_to_contiguous:
                    raise ValueError(f"segment category_id {category} is not a known category")
                category = int(category_id_to_contiguous[category])
            segments.append(
                {"id": int(segment["id"]), "category_id": category, "iscrowd": int(segment.get("iscrowd", 0))}
            )
        out["panoptic_map"] = array.astype(np.int64)
        out["segments_info"] = segments
    semantic = sample.get("semantic_map")
    if semantic is not None:
        array = _as_array(semantic, "semantic map")
        if array.ndim == 3 and array.shape[-1] in (1, 3):
            array = array[..., 0]
        if array.shape != image.shape[:2]:
            raise ValueError(f"semantic map {array.shape} does not match the image {image.shape[:2]}")
        out["semantic_map"] = array.astype(np.int64)
    if out["panoptic_map"] is None and out["semantic_map"] is None:
        raise ValueError("sample has neither a panoptic map (+ segments_info) nor a semantic map")
    return out


def semantic_from_panoptic(
    panoptic_map: np.ndarray, segments_info: Sequence[Mapping[str, Any]], ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Class map of a panoptic annotation; VOID and crowd pixels become `ignore_index` (COCO's convention)."""
    semantic = np.full(panoptic_map.shape, ignore_index, dtype=np.int64)
    for segment in segments_info:
        if not segment.get("iscrowd", 0):
            semantic[panoptic_map == segment["id"]] = segment["category_id"]
    return semantic


def _task_targets(
    task: str,
    semantic_map: np.ndarray | None,
    panoptic_map: np.ndarray | None,
    segments_info: Sequence[Mapping[str, Any]] | None,
    thing_ids: Sequence[int] | None,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary masks + classes for one task, as the original mappers build them."""
    if task == "semantic":
        if semantic_map is None:
            semantic_map = semantic_from_panoptic(panoptic_map, segments_info, ignore_index)
        return semantic_to_targets(semantic_map, ignore_index=ignore_index)
    if panoptic_map is None:
        raise ValueError(f"the {task} task needs panoptic annotations (panoptic map + segments_info)")
    if task == "panoptic":
        return panoptic_to_targets(panoptic_map, segments_info)
    things = set(range(10**9)) if thing_ids is None else set(int(i) for i in thing_ids)
    kept = [s for s in segments_info if s["category_id"] in things]
    return panoptic_to_targets(panoptic_map, kept, remove_empty=True)


def sample_seed(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation stream of one sample in one epoch, independent of process and worker."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(epoch), int(index))))


class TrainTransform:
    """Augments one normalised sample and turns it into (pixel_values, mask_labels, class_labels).

    Args:
        task: "semantic", "instance" (thing segments only) or "panoptic" (all non-crowd segments).
        augmentation: an `AugmentationPipeline` (e.g. `large_scale_jitter`) or None.
        image_mean / image_std: 0-255 RGB statistics; use the image processor's so training matches inference.
        thing_ids: contiguous thing classes (instance task).
    """

    def __init__(
        self,
        task: str,
        augmentation: AugmentationPipeline | None,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        thing_ids: Sequence[int] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.task = check_task(task)
        self.augmentation = augmentation
        self.mean = torch.tensor(list(image_mean), dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(list(image_std), dtype=torch.float32).view(3, 1, 1)
        self.thing_ids = thing_ids
        self.ignore_index = ignore_index

    def __call__(self, sample: Mapping[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        image = sample["image"]
        semantic = sample.get("semantic_map")
        panoptic = sample.get("panoptic_map")
        if self.task == "semantic" and semantic is None and panoptic is not None:
            semantic = semantic_from_panoptic(panoptic, sample["segments_info"], self.ignore_index)
            panoptic = None
        if self.augmentation is not None:
            kwargs = {}
            if semantic is not None:
                kwargs["semantic_map"] = semantic
            if panoptic is not None and self.task != "semantic":
                kwargs["panoptic_map"] = panoptic
            result = self.augmentation(
                image, rng=rng if rng is not None else np.random.default_rng(), **kwargs
            )
            image = result["image"]
            semantic = result.get("semantic_map")
            panoptic = result.get("panoptic_map") if "panoptic_map" in kwargs else None
        masks, labels = _task_targets(
            self.task, semantic, panoptic, sample.get("segments_info"), self.thing_ids, self.ignore_index
        )
        pixel_values = (
            torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() - self.mean
        ) / self.std
        return {"pixel_values": pixel_values, "mask_labels": masks, "class_labels": labels}


class SegmentationCollator:
    """Pads a list of `TrainTransform` outputs into a batch, as the original's `ImageList.from_tensors`.

    Images are zero-padded (after normalisation) at the bottom/right to the batch maximum rounded up to
    `size_divisibility`; `pixel_mask` marks the real pixels; target masks are padded with False.
    """

    def __init__(self, size_divisibility: int = 32) -> None:
        if size_divisibility < 0:
            raise ValueError(f"size_divisibility must be >= 0, got {size_divisibility}")
        self.size_divisibility = size_divisibility

    def padded_size(self, sizes: Iterable[tuple[int, int]]) -> tuple[int, int]:
        sizes = list(sizes)
        height = max(h for h, _ in sizes)
        width = max(w for _, w in sizes)
        if self.size_divisibility > 1:
            d = self.size_divisibility
            height, width = math.ceil(height / d) * d, math.ceil(width / d) * d
        return height, width

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        sizes = [tuple(e["pixel_values"].shape[-2:]) for e in examples]
        height, width = self.padded_size(sizes)
        pixel_values = torch.zeros(len(examples), 3, height, width)
        pixel_mask = torch.zeros(len(examples), height, width, dtype=torch.long)
        mask_labels, class_labels = [], []
        for i, (example, (h, w)) in enumerate(zip(examples, sizes, strict=True)):
            pixel_values[i, :, :h, :w] = example["pixel_values"]
            pixel_mask[i, :h, :w] = 1
            mask_labels.append(pad_targets(example["mask_labels"], (height, width)))
            class_labels.append(example["class_labels"].long())
        return {
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask,
            "mask_labels": mask_labels,
            "class_labels": class_labels,
        }


class SegmentationEvalCollator:
    """Runs the image processor on the original images and keeps the ground truth at original resolution."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        inputs = self.processor(images=[s["image"] for s in samples], return_tensors="pt")
        return {
            "pixel_values": inputs["pixel_values"],
            "pixel_mask": inputs["pixel_mask"],
            "original_sizes": [tuple(int(v) for v in s["image"].shape[:2]) for s in samples],
            "targets": [
                {k: s.get(k) for k in ("semantic_map", "panoptic_map", "segments_info")} for s in samples
            ],
        }
