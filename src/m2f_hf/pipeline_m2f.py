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
* batch-invariant results: with `batch_size > 1` each image is still padded only to its own size and
  runs through the model alone (`forward_by_size`; `batch_size` batches the loading and preprocessing),
  so an image's result is bit for bit its `batch_size=1` result, whatever else is in the batch.
  (The original's batched forward, which `processor(images=[...])` + `model(...)` reproduce, pads every
  image to the batch's largest one, and that padding changes the smaller images' results; see
  docs/quickstart.md.)
* inputs are read by `processing_image_io` (16-bit PNGs scaled, not clipped; numpy arrays and tensors
  accepted; unreadable files give a one-line ValueError naming the file).

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
from .processing_postprocess import TASKS

__all__ = [
    "SUBTASKS",
    "CheckpointLoadError",
    "M2fHfPipelineModelLoader",
    "M2fHfImageSegmentationPipeline",
    "default_subtask",
    "forward_by_size",
    "post_process",
    "register_segmentation_pipeline",
]

logger = logging.getLogger(__name__)

SUBTASKS = TASKS  # the one task list (processing_postprocess.TASKS)
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
    options = dict(threshold=threshold, mask_threshold=mask_threshold, target_sizes=target_sizes)
    if subtask == "panoptic":
        return processor.post_process_panoptic_segmentation(
            outputs,
            overlap_mask_area_threshold=overlap_mask_area_threshold,
            segment_ids="original",
            **options,
        )
    if subtask == "instance":
        # bool masks, ids from 1 (the pipeline's own formatting follows)
        return processor.post_process_instance_segmentation(
            outputs, return_binary_maps=True, segment_ids="original", **options
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


def forward_by_size(
    model: Any,
    pixel_values: list[torch.Tensor],
    pixel_masks: list[torch.Tensor | None],
    group_same_size: bool = False,
) -> list[tuple[list[int], Any]]:
    """Run `model` on single-image inputs ((1, 3, H, W) each, each padded to its own size) so that no
    image gets extra padding from another. By default each image runs alone: its result is bit for bit
    the one of batch size 1. `group_same_size=True` batches images of the same padded size (faster on a
    GPU; the padding is still each image's own, but a batched forward rounds differently: about 1e-3 on
    the mask logits on CPU, which can flip a borderline pixel). Returns [(indices into the inputs, the
    model outputs of those images)]."""
    groups: dict[Any, list[int]] = {}
    for index, values in enumerate(pixel_values):
        key = tuple(values.shape[1:]) if group_same_size else index
        groups.setdefault(key, []).append(index)
    results = []
    for indices in groups.values():
        masks = [pixel_masks[i] for i in indices]
        outputs = model(
            pixel_values=torch.cat([pixel_values[i] for i in indices]),
            pixel_mask=None if any(m is None for m in masks) else torch.cat(masks),
        )
        results.append((indices, outputs))
    return results


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
        """The stock iterator, but a batch keeps each image at its own padded size (see the module
        docstring): the collated batch holds lists, and `_forward` groups them by size."""
        if batch_size == 1 or not _is_m2f(self.model.config):
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        from torch.utils.data import DataLoader
        from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

        if isinstance(inputs, Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
            num_workers = min(num_workers, 1)

        def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
            return {key: [item[key] for item in items] for key in items[0]}

        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=collate)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def preprocess(self, image: Any, subtask: str | None = None, timeout: float | None = None) -> Any:
        if not _is_m2f(self.model.config):
            return super().preprocess(image, subtask=subtask, timeout=timeout)
        from .processing_image_io import load_image

        inputs = self.image_processor(images=[load_image(image, timeout=timeout)], return_tensors="pt")
        inputs = inputs.to(self.dtype)
        inputs["target_size"] = [tuple(int(v) for v in inputs["original_sizes"][0])]
        return {key: inputs[key] for key in ("pixel_values", "pixel_mask", "target_size")}

    def _forward(self, model_inputs: dict[str, Any]) -> Any:
        if not isinstance(model_inputs.get("pixel_values"), list):
            return super()._forward(model_inputs)
        # a batch from `get_iterator`: per-image lists, run grouped by padded size; per-image outputs
        count = len(model_inputs["pixel_values"])
        outputs: dict[str, list[Any]] = {
            key: [None] * count for key in ("class_queries_logits", "masks_queries_logits", "image_sizes")
        }
        for indices, group in forward_by_size(
            self.model, model_inputs["pixel_values"], model_inputs["pixel_mask"]
        ):
            for key, values in outputs.items():
                field = getattr(group, key)
                for row, index in enumerate(indices):
                    values[index] = None if field is None else field[row]
        outputs["target_size"] = model_inputs["target_size"]  # per image [(H, W)]
        return outputs

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


class CheckpointLoadError(Exception):
    """An m2f_hf checkpoint that `pipeline(...)` cannot load (missing or broken weights). Deliberately not
    an OSError / ValueError: transformers' pipeline factory catches those and goes on to try every class
    named in `config.architectures`, which for m2f_hf is transformers' own, incompatible Mask2Former."""


class M2fHfPipelineModelLoader:
    """The first model class `pipeline("image-segmentation", model=PATH)` tries (see
    `register_segmentation_pipeline`): m2f_hf checkpoints load through the Auto classes (so remote code
    and registration work as usual) and a failure ends in `CheckpointLoadError` naming the folder and the
    cause; other checkpoints are declined with a ValueError and the stock classes load them."""

    @classmethod
    def from_pretrained(cls, model: str, **kwargs: Any) -> Any:
        from transformers import AutoModelForImageSegmentation, PreTrainedConfig

        try:
            config_dict, _ = PreTrainedConfig.get_config_dict(model)
        except (OSError, ValueError) as exc:
            raise ValueError(f"no readable config in {model!r}") from exc
        if config_dict.get("model_type") != Mask2FormerConfig.model_type:
            raise ValueError(f"{model!r} is not an m2f_hf checkpoint")
        try:
            return AutoModelForImageSegmentation.from_pretrained(model, **kwargs)
        except (OSError, ValueError, TypeError, RuntimeError, KeyError) as exc:
            lines = str(exc).strip().splitlines()
            raise CheckpointLoadError(
                f"cannot load the m2f_hf model {model!r}: {lines[0] if lines else type(exc).__name__}"
            ) from exc


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
    # m2f_hf checkpoints load (or fail clearly) before transformers tries its own Mask2Former, which
    # shares the class name in `config.architectures`
    stock_classes = tuple(c for c in entry.get("pt", ()) if c is not M2fHfPipelineModelLoader)
    PIPELINE_REGISTRY.supported_tasks[TASK_NAME] = {
        **entry,
        "impl": M2fHfImageSegmentationPipeline,
        "pt": (M2fHfPipelineModelLoader, *stock_classes),
    }
