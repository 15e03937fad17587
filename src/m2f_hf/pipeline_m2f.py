"""`pipeline("image-segmentation")` for m2f_hf checkpoints: the checkpoint's own task and thresholds.

transformers' `ImageSegmentationPipeline` always tries panoptic first and always passes its own threshold
defaults (0.9 / 0.5) to the post-processing, so a semantic-only checkpoint would answer with panoptic
segments and every checkpoint would be filtered with thresholds the original never used. This subclass
changes only those defaults for m2f_hf models (any other model gets the stock behaviour unchanged):

* no `subtask`: the task the checkpoint was configured for (`panoptic_on`, else `instance_on`, else
  semantic; see `default_subtask`);
* no `threshold` / `overlap_mask_area_threshold`: the processor's `object_mask_threshold` and
  `overlap_threshold` (the original's MODEL.MASK_FORMER.TEST values) for panoptic, and no score filter for
  instance (the original keeps its top-k detections); values passed to the pipeline are used as given;
* instance masks are the full, possibly overlapping binary masks of each detection;
* `batch_size > 1` with images of different sizes: the images are zero-padded at the bottom/right to
  the batch's largest one (with `pixel_mask` 0 there), as the processor and the original batch them.

`register_segmentation_pipeline()` (run when `m2f_hf` is imported, and by the remote-code entry module
of a Hub folder) makes `pipeline("image-segmentation", ...)` build this class.
"""

from __future__ import annotations

import logging
from collections.abc import Sized
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers.pipelines.image_segmentation import ImageSegmentationPipeline

from .configuration_m2f import Mask2FormerConfig

__all__ = [
    "SUBTASKS",
    "M2fHfImageSegmentationPipeline",
    "default_subtask",
    "post_process",
    "register_segmentation_pipeline",
]

logger = logging.getLogger(__name__)

SUBTASKS = ("panoptic", "instance", "semantic")
TASK_NAME = "image-segmentation"
# transformers' own defaults, used for models that are not m2f_hf models
_STOCK_DEFAULTS = {"threshold": 0.9, "mask_threshold": 0.5, "overlap_mask_area_threshold": 0.5}


def default_subtask(config: Any) -> str:
    """The task a checkpoint was configured for: panoptic if `panoptic_on`, else instance if `instance_on`,
    else semantic (the original runs every enabled inference; a single answer prefers the richest one)."""
    if getattr(config, "panoptic_on", False):
        return "panoptic"
    if getattr(config, "instance_on", False):
        return "instance"
    return "semantic"


def post_process(
    processor: Any,
    outputs: Any,
    subtask: str,
    *,
    target_sizes: Any,
    threshold: float | None,
    mask_threshold: float,
    overlap_mask_area_threshold: float | None,
) -> list[Any]:
    """The processor's post-processing of `subtask`, one result per image: semantic maps, panoptic
    segmentations, or instance results with one full binary mask per detection (masks may overlap).
    threshold / overlap_mask_area_threshold None: the processor's own defaults."""
    if subtask == "semantic":
        return processor.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)
    if subtask == "panoptic":
        return processor.post_process_panoptic_segmentation(
            outputs,
            threshold=threshold,
            mask_threshold=mask_threshold,
            overlap_mask_area_threshold=overlap_mask_area_threshold,
            target_sizes=target_sizes,
            segment_ids="original",
        )
    if subtask == "instance":
        return processor.post_process_instance_segmentation(
            outputs,
            threshold=threshold,
            mask_threshold=mask_threshold,
            target_sizes=target_sizes,
            return_binary_maps=True,
            segment_ids="original",  # bool masks, ids from 1 (the pipeline's own formatting follows)
        )
    raise ValueError(f"subtask must be one of {SUBTASKS}, got {subtask!r}")


def check_subtask(subtask: str | None) -> str | None:
    if subtask is not None and subtask not in SUBTASKS:
        raise ValueError(
            f"subtask must be one of {SUBTASKS} (or None for the checkpoint's task), got {subtask!r}"
        )
    return subtask


def _is_m2f(config: Any) -> bool:
    # compared by name: under trust_remote_code the config class comes from a dynamic module copy
    return getattr(config, "model_type", None) == Mask2FormerConfig.model_type


def _pad_to_batch(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Zero-pad each preprocessed image (and its pixel mask) to the largest height/width of the batch."""
    height = max(int(item["pixel_values"].shape[-2]) for item in items)
    width = max(int(item["pixel_values"].shape[-1]) for item in items)
    padded = []
    for item in items:
        item = dict(item)
        h, w = item["pixel_values"].shape[-2:]
        if (h, w) != (height, width):
            item["pixel_values"] = torch.nn.functional.pad(
                item["pixel_values"], (0, width - w, 0, height - h)
            )
            if item.get("pixel_mask") is not None:
                item["pixel_mask"] = torch.nn.functional.pad(
                    item["pixel_mask"], (0, width - w, 0, height - h)
                )
        padded.append(item)
    return padded


def _mask_image(mask: torch.Tensor | np.ndarray) -> PIL.Image.Image:
    array = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return PIL.Image.fromarray(array.astype(np.uint8) * 255)


class M2fHfImageSegmentationPipeline(ImageSegmentationPipeline):
    """`ImageSegmentationPipeline` whose defaults follow the m2f_hf checkpoint (see the module docstring).

    Returns, per image, a list of {"score", "label", "mask"} like the stock pipeline: `mask` is an "L" PIL
    image (255 inside) at the input resolution, `score` is None for semantic segments.
    """

    _m2f_hf_pipeline = (
        True  # marks this class (and its remote-code copies) for `register_segmentation_pipeline`
    )

    def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict, dict, dict]:
        check_subtask(kwargs.get("subtask"))
        return super()._sanitize_parameters(**kwargs)

    def get_iterator(
        self,
        inputs: Any,
        num_workers: int,
        batch_size: int,
        preprocess_params: dict,
        forward_params: dict,
        postprocess_params: dict,
    ) -> Any:
        """The stock iterator, but batches of differently sized images are padded (see the module
        docstring) instead of failing to concatenate."""
        if batch_size == 1 or not _is_m2f(self.model.config):
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        from torch.utils.data import DataLoader
        from transformers.pipelines.base import pad_collate_fn
        from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

        if isinstance(inputs, Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
            num_workers = min(num_workers, 1)
        stock_collate = pad_collate_fn(None, self.image_processor)

        def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
            return stock_collate(_pad_to_batch(items))

        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=collate)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def postprocess(
        self,
        model_outputs: Any,
        subtask: str | None = None,
        threshold: float | None = None,
        mask_threshold: float | None = None,
        overlap_mask_area_threshold: float | None = None,
    ) -> list[dict[str, Any]]:
        given = {
            "threshold": threshold,
            "mask_threshold": mask_threshold,
            "overlap_mask_area_threshold": overlap_mask_area_threshold,
        }
        if not _is_m2f(self.model.config):
            stock = {k: _STOCK_DEFAULTS[k] if v is None else v for k, v in given.items()}
            return super().postprocess(model_outputs, subtask=subtask, **stock)

        subtask = check_subtask(subtask) or default_subtask(self.model.config)
        mask_threshold = 0.5 if mask_threshold is None else mask_threshold
        id2label = self.model.config.id2label
        result = post_process(
            self.image_processor,
            model_outputs,
            subtask,
            target_sizes=model_outputs["target_size"],
            threshold=threshold,
            mask_threshold=mask_threshold,
            overlap_mask_area_threshold=overlap_mask_area_threshold,
        )[0]
        if subtask == "semantic":
            return [
                {"score": None, "label": id2label[int(label)], "mask": _mask_image(result == label)}
                for label in torch.unique(result).tolist()
            ]
        if subtask == "panoptic":
            masks = [result["segmentation"] == segment["id"] for segment in result["segments_info"]]
        else:
            masks = list(result["segmentation"])
        return [
            {"score": segment["score"], "label": id2label[segment["label_id"]], "mask": _mask_image(mask)}
            for segment, mask in zip(result["segments_info"], masks, strict=True)
        ]


def register_segmentation_pipeline() -> None:
    """Make `pipeline("image-segmentation")` build `M2fHfImageSegmentationPipeline` (idempotent).

    Only the stock implementation is replaced: the subclass behaves exactly like it for every model that
    is not an m2f_hf model. A different implementation registered by someone else is left in place.
    """
    from transformers.pipelines import PIPELINE_REGISTRY

    entry = PIPELINE_REGISTRY.supported_tasks.get(TASK_NAME)
    if entry is None:
        raise RuntimeError(f"transformers has no {TASK_NAME!r} pipeline task to extend")
    impl = entry["impl"]
    if getattr(impl, "_m2f_hf_pipeline", False):
        return
    stock = "transformers.pipelines.image_segmentation.ImageSegmentationPipeline"
    if impl is not ImageSegmentationPipeline and impl != stock:
        logger.warning(
            "%r is served by %r; not replacing it with M2fHfImageSegmentationPipeline (pass "
            "pipeline_class=M2fHfImageSegmentationPipeline to use it)",
            TASK_NAME,
            impl,
        )
        return
    PIPELINE_REGISTRY.supported_tasks[TASK_NAME] = {**entry, "impl": M2fHfImageSegmentationPipeline}
