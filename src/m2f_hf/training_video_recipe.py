"""Fine-tuning pieces of the video model: initialising it from an image model, batching clips, evaluating.

* `video_model_from_image_model`: the original trains its YouTube-VIS models from COCO image checkpoints;
  the video model has exactly the image model's parameters, so every weight is copied and only the class
  head is re-indexed for the video label set (`class_map`: new label → image label, or None for a fresh row).
* `VideoClipCollator`: `YouTubeVISClipDataset` items → `pixel_values_videos` (B, T, 3, Hp, Wp) normalised and
  zero-padded by the video processor, and per clip `mask_labels` (N, T, Hp, Wp) / `class_labels` (N,).
* `evaluate_video_instance_segmentation`: every video of a YouTube-VIS json through the model (all frames at
  once, or in windows) and the processor's top-k rule, scored by the YouTube-VIS mask AP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .configuration_m2f import Mask2FormerConfig
from .modeling_video_m2f import Mask2FormerForVideoInstanceSegmentation
from .modeling_video_windowed import windowed_video_inference
from .processing_video_m2f import M2fHfVideoProcessor
from .training_metrics_video import VideoInstanceSegmentationEvaluator
from .training_video_data import VideoRecord, clip_targets, load_ytvis

CLASS_HEAD = "model.transformer_decoder.class_embed"


def video_model_from_image_model(
    image_model: torch.nn.Module,
    id2label: dict[int, str] | None = None,
    class_map: Sequence[int | None] | None = None,
    num_frames: int = 2,
) -> Mask2FormerForVideoInstanceSegmentation:
    """A video model with the weights of an image `Mask2FormerForUniversalSegmentation`.

    id2label: the video label set (default: the image model's). class_map[i]: the image label whose class
    row initialises video label i (None: the row keeps its fresh initialisation); default identity, which
    needs the same number of labels. The no-object row is always copied.
    """
    source = image_model.config
    labels = dict(source.id2label) if id2label is None else {int(k): v for k, v in id2label.items()}
    if class_map is None:
        if len(labels) != source.num_labels:
            raise ValueError(
                f"the video label set has {len(labels)} labels and the image model {source.num_labels}: "
                "give class_map (video label -> image label or None)"
            )
        class_map = list(range(len(labels)))
    if len(class_map) != len(labels):
        raise ValueError(f"class_map has {len(class_map)} entries for {len(labels)} video labels")
    bad = [c for c in class_map if c is not None and not 0 <= c < source.num_labels]
    if bad:
        raise ValueError(f"class_map refers to image labels {bad} outside [0, {source.num_labels})")
    options = source.to_dict()
    for key in ("id2label", "label2id", "num_labels", "thing_ids", "auto_map", "architectures", "model_type"):
        options.pop(key, None)
    options.update(video=True, num_frames=num_frames, id2label=labels, thing_ids=list(range(len(labels))))
    config = Mask2FormerConfig(**options)
    model = Mask2FormerForVideoInstanceSegmentation(config)
    state = {k: v for k, v in image_model.state_dict().items() if not k.startswith(CLASS_HEAD)}
    result = model.load_state_dict(state, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if not k.startswith((CLASS_HEAD, "criterion."))]
    if unexpected or missing:
        raise ValueError(f"image and video model do not match: missing {missing}, unexpected {unexpected}")
    old = image_model.state_dict()
    with torch.no_grad():
        head = model.model.transformer_decoder.class_embed
        for new_row, old_row in enumerate([*class_map, source.num_labels]):
            if old_row is not None:
                head.weight[new_row] = old[f"{CLASS_HEAD}.weight"][old_row]
                head.bias[new_row] = old[f"{CLASS_HEAD}.bias"][old_row]
    return model


class VideoClipCollator:
    """Clips of `YouTubeVISClipDataset` → model inputs: frames normalised and padded by `processor` (at their
    augmented size, no resize), masks zero-padded to the same (Hp, Wp)."""

    def __init__(self, processor: M2fHfVideoProcessor) -> None:
        self.processor = processor

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("empty batch")
        encoded = self.processor(videos=[list(item["frames"]) for item in items], do_resize=False)
        pixel_values = encoded["pixel_values_videos"]
        height, width = pixel_values.shape[-2:]
        mask_labels, class_labels = [], []
        for item in items:
            masks = torch.as_tensor(np.asarray(item["masks"], dtype=bool))
            padded = torch.zeros((masks.shape[0], masks.shape[1], height, width), dtype=torch.float32)
            padded[:, :, : masks.shape[2], : masks.shape[3]] = masks.float()
            mask_labels.append(padded)
            class_labels.append(torch.as_tensor(np.asarray(item["labels"], dtype=np.int64)))
        return {"pixel_values_videos": pixel_values, "mask_labels": mask_labels, "class_labels": class_labels}


def video_ground_truth(record: VideoRecord, length: int | None = None) -> dict[str, np.ndarray]:
    """Ground truth of a video's first `length` frames (default all): masks (M, T, H, W), labels (M,),
    present (M, T); crowd annotations are left out."""
    targets = clip_targets(record, list(range(record.length if length is None else length)))
    return {"masks": targets["masks"], "labels": targets["labels"], "present": targets["ids"] != -1}


@torch.no_grad()
def evaluate_video_instance_segmentation(
    model: Mask2FormerForVideoInstanceSegmentation,
    processor: M2fHfVideoProcessor,
    source: dict[str, Any] | str,
    frame_loader: Callable[[VideoRecord, int], np.ndarray],
    window: int | None = None,
    max_frames: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """YouTube-VIS mask AP (percent) of `model` on every video of a YouTube-VIS json.

    Each video goes through the processor (test-time resize), the model (all frames at once, or
    `windowed_video_inference` with `window` frames) and `post_process_video_instance_segmentation` at the
    original size. max_frames: use only the first frames of each video (memory).
    """
    records, categories = load_ytvis(source)
    if len(categories) != model.config.num_labels:
        raise ValueError(
            f"the dataset has {len(categories)} categories but the model predicts {model.config.num_labels}"
        )
    category_ids = [int(c["id"]) for c in categories]
    evaluator = VideoInstanceSegmentationEvaluator(category_ids, [c["name"] for c in categories])
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for record in tqdm(records, desc="evaluating", disable=not progress):
            length = record.length if max_frames is None else min(record.length, max_frames)
            frames = [frame_loader(record, i) for i in range(length)]
            inputs = processor(videos=[frames])
            pixel_values = inputs["pixel_values_videos"].to(device)
            if window is None:
                outputs = model(pixel_values)
            else:
                outputs = windowed_video_inference(model, pixel_values, window)
            found = processor.post_process_video_instance_segmentation(
                outputs, target_sizes=inputs["original_sizes"]
            )[0]
            truth = video_ground_truth(record, length)
            pred_masks = (
                torch.stack([f["masks"] for f in found]).cpu().numpy()
                if found
                else np.zeros((0, length, record.height, record.width), bool)
            )
            evaluator.update(
                pred_masks,
                [f["score"] for f in found],
                [category_ids[f["label_id"]] for f in found],
                truth["masks"],
                [category_ids[label] for label in truth["labels"]],
                gt_present=truth["present"],
            )
    finally:
        model.train(was_training)
    return evaluator.compute()


__all__ = [
    "VideoClipCollator",
    "evaluate_video_instance_segmentation",
    "video_ground_truth",
    "video_model_from_image_model",
]
