"""Evaluation of a model on a held-out split with the original metrics (PQ, mIoU, AP), data-parallel aware."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .processing_postprocess import TASKS, check_task
from .training_data import IGNORE_INDEX, semantic_from_panoptic
from .training_metrics_instance import InstanceSegmentationEvaluator
from .training_metrics_panoptic import PanopticQualityEvaluator
from .training_metrics_semantic import SemanticSegmentationEvaluator

__all__ = ["evaluate"]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _gt_instances(
    target: Mapping[str, Any], thing_ids: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray]:
    panoptic = target["panoptic_map"]
    things = None if thing_ids is None else set(int(i) for i in thing_ids)
    keep = [
        s
        for s in target["segments_info"]
        if not s.get("iscrowd", 0) and (things is None or s["category_id"] in things)
    ]
    masks = np.stack([panoptic == s["id"] for s in keep]) if keep else np.zeros((0, *panoptic.shape), bool)
    labels = np.array([s["category_id"] for s in keep], dtype=np.int64)
    return masks, labels


@torch.no_grad()
def evaluate(
    model: nn.Module,
    processor: Any,
    dataloader: Iterable[Mapping[str, Any]],
    task: str,
    accelerator: Any = None,
    metrics: Sequence[str] | None = None,
    evaluators: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Metrics of `model` on the batches of a `SegmentationEvalCollator` loader, at the original resolution.

    task "semantic" → mIoU, fwIoU, mACC, pACC; "instance" → COCO mask AP; "panoptic" → PQ (and, as the
    original reports for panoptic models, mIoU from semantic inference and AP from instance inference).
    `metrics` restricts the families ("semantic", "instance", "panoptic"). With an `accelerator`, each
    process evaluates the batches it is given and the evaluators are merged across processes.
    `evaluators` replaces the built-in accumulator of a family by any object with the same `update(...)`
    and `compute()` (e.g. an adapter around an `evaluate` metric module, examples/train_segmentation.py).
    """
    check_task(task)
    families = {
        "semantic": ["semantic"],
        "instance": ["instance"],
        "panoptic": ["panoptic", "semantic", "instance"],
    }[task]
    if metrics is not None:
        unknown = sorted(set(metrics) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown metric families {unknown}; choose from {TASKS}")
        families = [f for f in families if f in metrics]
    config = _unwrap(model).config
    num_labels = int(config.num_labels)
    names = [str(config.id2label.get(i, i)) for i in range(num_labels)]
    thing_ids = list(config.thing_ids) if config.thing_ids is not None else list(range(num_labels))
    custom, evaluators = evaluators, {}
    if "semantic" in families:
        evaluators["semantic"] = SemanticSegmentationEvaluator(num_labels, IGNORE_INDEX, class_names=names)
    if "panoptic" in families:
        evaluators["panoptic"] = PanopticQualityEvaluator(
            {i: {"isthing": i in thing_ids} for i in range(num_labels)}
        )
    if "instance" in families:
        evaluators["instance"] = InstanceSegmentationEvaluator(thing_ids, [names[i] for i in thing_ids])
    for family, replacement in (custom or {}).items():
        if family not in evaluators:
            raise ValueError(f"evaluator for {family!r}, which this evaluation does not run ({families})")
        evaluators[family] = replacement

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for batch in dataloader:
        outputs = model(
            pixel_values=batch["pixel_values"].to(device),
            pixel_mask=batch["pixel_mask"].to(device),
            output_auxiliary_logits=False,
        )
        outputs = {
            k: outputs[k].float().cpu() if k != "image_sizes" else outputs[k].cpu()
            for k in ("class_queries_logits", "masks_queries_logits", "image_sizes")
        }
        sizes = batch["original_sizes"]
        targets = batch["targets"]
        if "semantic" in evaluators:
            preds = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
            for pred, target in zip(preds, targets, strict=True):
                gt = target["semantic_map"]
                if gt is None:
                    gt = semantic_from_panoptic(target["panoptic_map"], target["segments_info"])
                evaluators["semantic"].update(pred, np.asarray(gt, dtype=np.int64))
        if "panoptic" in evaluators:
            preds = processor.post_process_panoptic_segmentation(
                outputs, target_sizes=sizes, segment_ids="original"
            )
            for pred, target in zip(preds, targets, strict=True):
                if target["panoptic_map"] is None:
                    raise ValueError("panoptic evaluation needs panoptic ground truth")
                segments = [{"id": s["id"], "category_id": s["label_id"]} for s in pred["segments_info"]]
                evaluators["panoptic"].update(
                    pred["segmentation"].to(torch.int64),
                    segments,
                    target["panoptic_map"],
                    target["segments_info"],
                )
        if "instance" in evaluators:
            # AP ranks every top-k detection: no score filter, even if the processor has a calibrated one
            preds = processor.post_process_instance_segmentation(
                outputs, threshold=0.0, target_sizes=sizes, return_binary_maps=True, segment_ids="original"
            )
            for pred, target in zip(preds, targets, strict=True):
                if target["panoptic_map"] is None:
                    raise ValueError("instance evaluation needs panoptic (instance) ground truth")
                gt_masks, gt_labels = _gt_instances(target, thing_ids)
                info = pred["segments_info"]
                evaluators["instance"].update(
                    pred["segmentation"].numpy(),
                    [s["score"] for s in info],
                    [s["label_id"] for s in info],
                    gt_masks,
                    gt_labels,
                )
    if was_training:
        model.train()

    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        gathered = gather_object([evaluators])
        merged = gathered[0]
        for other in gathered[1:]:
            for key, evaluator in merged.items():
                evaluator.merge(other[key])
        evaluators = merged

    results: dict[str, float] = {}
    if "panoptic" in evaluators:
        res = evaluators["panoptic"].compute()
        results.update(
            {
                k: float(res[k])
                for k in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")
            }
        )
    if "semantic" in evaluators:
        res = evaluators["semantic"].compute()
        results.update({k: float(res[k]) for k in ("mIoU", "fwIoU", "mACC", "pACC")})
        results.update({k: float(v) for k, v in res.items() if k.startswith("IoU-")})
    if "instance" in evaluators:
        res = evaluators["instance"].compute()
        results.update({k: float(v) for k, v in res.items()})
    return results
