"""Post-processing threshold calibration on a validation set, after fine-tuning.

The original's panoptic rule keeps a query when its class probability exceeds `object_mask_threshold`
(0.8) and keeps its segment when at least `overlap_threshold` (0.8) of its own mask survives the overlap
resolution. These values were tuned for COCO models trained for 50 epochs; a model fine-tuned briefly or on
another dataset is often less confident, and its panoptic output is then empty or missing the things. The
instance rule has no score threshold (mask AP ranks every top-k detection), but a display or export needs
one (the CLI draws instances scoring at least 0.5).

This module runs the model once over a validation set, keeps its raw outputs, and re-runs only the
post-processing for every setting of a grid:

* panoptic: `object_mask_threshold` x `overlap_threshold`, scored by PQ;
* instance: the score threshold, scored by F1 of the kept detections at IoU > 0.5 (same class, one-to-one,
  highest score first). Mask AP is printed for each threshold too, but it cannot choose: a score filter only
  removes the lowest-ranked detections, so AP never rises with the threshold.

The grids always hold the processor's current values, so the chosen setting is never worse on the
validation set than the one the model came with. Ties go to the current setting, then to the setting
closest to it. `write_thresholds` stores the chosen values in `preprocessor_config.json`, where
`M2fHfImageProcessor` (and so the pipeline and the CLI) reads its defaults; the original values remain the
defaults of a processor built without them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .training_data import normalize_sample
from .training_metrics_instance import InstanceSegmentationEvaluator
from .training_metrics_panoptic import PanopticQualityEvaluator

__all__ = [
    "CALIBRATION_TASKS",
    "DEFAULT_OBJECT_MASK_THRESHOLDS",
    "DEFAULT_OVERLAP_THRESHOLDS",
    "DEFAULT_SCORE_THRESHOLDS",
    "CachedOutputs",
    "CalibrationResult",
    "calibrate",
    "collect_outputs",
    "instance_matches",
    "sweep_instance",
    "sweep_panoptic",
    "validation_samples",
    "write_thresholds",
]

CALIBRATION_TASKS = ("panoptic", "instance")
DEFAULT_OBJECT_MASK_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_OVERLAP_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_SCORE_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# processor attribute of each swept parameter
_PROCESSOR_KEYS = {
    "object_mask_threshold": "object_mask_threshold",
    "overlap_threshold": "overlap_threshold",
    "score_threshold": "instance_score_threshold",
}


@dataclass
class CachedOutputs:
    """One validation image: the model's raw outputs (batch of 1, on the CPU) and its ground truth."""

    outputs: dict[str, torch.Tensor]
    original_size: tuple[int, int]
    panoptic_map: np.ndarray
    segments_info: list[dict[str, Any]]


@dataclass
class CalibrationResult:
    """The sweep of one task: a row per setting (parameters and metrics), the current and the chosen one."""

    task: str
    metric: str
    parameters: tuple[str, ...]
    rows: list[dict[str, float]]
    current: dict[str, float]
    best: dict[str, float]
    extra_columns: tuple[str, ...] = field(default_factory=tuple)

    def settings(self) -> dict[str, float]:
        """The chosen values under their processor attribute names."""
        return {_PROCESSOR_KEYS[p]: float(self.best[p]) for p in self.parameters}

    def table(self) -> str:
        """A plain-text table, one line per setting; `*` marks the chosen setting, `=` the current one
        (metrics in percent)."""
        columns = [*self.parameters, self.metric, *self.extra_columns]
        widths = [max(len(c), 7) for c in columns]
        lines = ["  ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))]
        for row in self.rows:
            marks = ("*" if row is self.best else " ") + ("=" if self._is_current(row) else " ")
            cells = [f"{row[c]:>{w}.2f}" for c, w in zip(columns, widths, strict=True)]
            lines.append("  ".join(cells) + " " + marks)
        return "\n".join(lines)

    def summary(self) -> str:
        p = ", ".join(f"{k} {self.best[k]:g}" for k in self.parameters)
        c = ", ".join(f"{k} {self.current[k]:g}" for k in self.parameters)
        return (
            f"{self.task}: best {self.metric} {self.best[self.metric]:.2f} at {p} "
            f"(current {c}: {self.current[self.metric]:.2f})"
        )

    def _is_current(self, row: Mapping[str, float]) -> bool:
        return all(math.isclose(row[p], self.current_values[p]) for p in self.parameters)

    @property
    def current_values(self) -> dict[str, float]:
        return {p: float(self.current[p]) for p in self.parameters}

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "metric": self.metric,
            "parameters": list(self.parameters),
            "current": self.current,
            "best": self.best,
            "rows": self.rows,
        }


# ------------------------------------------------------------------------------------------- model pass
@torch.no_grad()
def collect_outputs(
    model: Any,
    processor: Any,
    samples: Iterable[Mapping[str, Any]],
    category_id_to_contiguous: Mapping[int, int] | None = None,
) -> list[CachedOutputs]:
    """Run `model` on each sample alone (no padding from other images) and keep its raw outputs.

    samples: dicts with "image" and panoptic ground truth ("panoptic_map" or "panoptic_png" and
    "segments_info"), e.g. `training_synthetic.make_synthetic_dataset`; `category_id_to_contiguous` maps
    their category ids to the model's label ids (None: they already are; the synthetic data need
    `training_synthetic.CATEGORY_ID_TO_CONTIGUOUS`).
    """
    was_training = model.training
    model.eval()
    parameter = next(model.parameters())
    cached = []
    for raw in samples:
        sample = normalize_sample(raw, category_id_to_contiguous)
        if sample["panoptic_map"] is None:
            raise ValueError("calibration needs panoptic ground truth (panoptic map + segments_info)")
        inputs = processor(images=[sample["image"]], return_tensors="pt")
        outputs = model(
            pixel_values=inputs["pixel_values"].to(device=parameter.device, dtype=parameter.dtype),
            pixel_mask=inputs["pixel_mask"].to(parameter.device),
            output_auxiliary_logits=False,
        )
        kept = {
            k: outputs[k].float().cpu() if k != "image_sizes" else outputs[k].cpu()
            for k in ("class_queries_logits", "masks_queries_logits", "image_sizes")
        }
        cached.append(
            CachedOutputs(
                kept,
                tuple(int(v) for v in sample["image"].shape[:2]),
                sample["panoptic_map"],
                sample["segments_info"],
            )
        )
    if was_training:
        model.train()
    if not cached:
        raise ValueError("calibration needs at least one validation image")
    return cached


# ----------------------------------------------------------------------------------------------- grids
def _grid(values: Sequence[float] | None, default: Sequence[float], current: float, name: str) -> list[float]:
    values = list(default if values is None else values)
    for v in values:
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name} values must lie in [0, 1], got {v}")
    return sorted({round(float(v), 6) for v in [*values, current]})


def _choose(rows: list[dict[str, float]], metric: str, current: Mapping[str, float]) -> dict[str, float]:
    """Highest metric (NaN counts as lowest); ties → the current setting, then the nearest to it."""

    def key(row: Mapping[str, float]) -> tuple[float, float]:
        value = row[metric]
        value = -math.inf if not math.isfinite(value) else round(value, 9)
        distance = sum(abs(row[p] - v) for p, v in current.items())
        return value, -distance

    return max(rows, key=key)


# ---------------------------------------------------------------------------------------------- panoptic
def sweep_panoptic(
    cached: Sequence[CachedOutputs],
    processor: Any,
    num_labels: int,
    thing_ids: Sequence[int] | None,
    object_mask_thresholds: Sequence[float] | None = None,
    overlap_thresholds: Sequence[float] | None = None,
) -> CalibrationResult:
    """PQ (and PQ_th, PQ_st) of every (object_mask_threshold, overlap_threshold) pair."""
    current = {
        "object_mask_threshold": float(processor.object_mask_threshold),
        "overlap_threshold": float(processor.overlap_threshold),
    }
    scores = _grid(
        object_mask_thresholds,
        DEFAULT_OBJECT_MASK_THRESHOLDS,
        current["object_mask_threshold"],
        "object_mask_threshold",
    )
    overlaps = _grid(
        overlap_thresholds, DEFAULT_OVERLAP_THRESHOLDS, current["overlap_threshold"], "overlap_threshold"
    )
    things = set(range(num_labels)) if thing_ids is None else {int(i) for i in thing_ids}
    categories = {i: {"isthing": i in things} for i in range(num_labels)}
    rows = []
    for score in scores:
        for overlap in overlaps:
            evaluator = PanopticQualityEvaluator(categories)
            for item in cached:
                pred = processor.post_process_panoptic_segmentation(
                    item.outputs,
                    threshold=score,
                    overlap_mask_area_threshold=overlap,
                    target_sizes=[item.original_size],
                    segment_ids="original",
                )[0]
                segments = [{"id": s["id"], "category_id": s["label_id"]} for s in pred["segments_info"]]
                evaluator.update(
                    pred["segmentation"].to(torch.int64), segments, item.panoptic_map, item.segments_info
                )
            res = evaluator.compute()
            rows.append(
                {
                    "object_mask_threshold": score,
                    "overlap_threshold": overlap,
                    "PQ": float(res["PQ"]),
                    "PQ_th": float(res["PQ_th"]),
                    "PQ_st": float(res["PQ_st"]),
                }
            )
    current_row = next(
        r for r in rows if all(math.isclose(r[k], v, abs_tol=1e-6) for k, v in current.items())
    )
    return CalibrationResult(
        "panoptic",
        "PQ",
        ("object_mask_threshold", "overlap_threshold"),
        rows,
        current_row,
        _choose(rows, "PQ", current),
        ("PQ_th", "PQ_st"),
    )


# ---------------------------------------------------------------------------------------------- instance
def instance_matches(
    pred_masks: np.ndarray,
    pred_labels: Sequence[int],
    gt_masks: np.ndarray,
    gt_labels: Sequence[int],
    iou_threshold: float = 0.5,
) -> int:
    """True positives of one image: detections (in the given order, highest score first) matched greedily
    and one-to-one to a ground-truth mask of the same class with IoU > `iou_threshold`."""
    if len(pred_masks) == 0 or len(gt_masks) == 0:
        return 0
    p = pred_masks.reshape(len(pred_masks), -1).astype(np.float64)
    g = gt_masks.reshape(len(gt_masks), -1).astype(np.float64)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    same = np.asarray(pred_labels)[:, None] == np.asarray(gt_labels)[None, :]
    iou = np.where(same, iou, 0.0)
    taken = np.zeros(len(gt_masks), dtype=bool)
    hits = 0
    for i in range(len(pred_masks)):
        candidates = np.where(~taken & (iou[i] > iou_threshold), iou[i], -1.0)
        j = int(np.argmax(candidates))
        if candidates[j] > 0:
            taken[j] = True
            hits += 1
    return hits


def _gt_things(item: CachedOutputs, things: set[int]) -> tuple[np.ndarray, np.ndarray]:
    keep = [s for s in item.segments_info if not s.get("iscrowd", 0) and s["category_id"] in things]
    shape = item.panoptic_map.shape
    masks = np.stack([item.panoptic_map == s["id"] for s in keep]) if keep else np.zeros((0, *shape), bool)
    return masks, np.array([s["category_id"] for s in keep], dtype=np.int64)


def sweep_instance(
    cached: Sequence[CachedOutputs],
    processor: Any,
    num_labels: int,
    thing_ids: Sequence[int] | None,
    score_thresholds: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> CalibrationResult:
    """F1 / precision / recall at IoU 0.5 and COCO mask AP of the detections scoring at least each
    threshold (0 keeps every top-k detection, the original's instance output)."""
    current_value = getattr(processor, "instance_score_threshold", None)
    current = {"score_threshold": 0.0 if current_value is None else float(current_value)}
    thresholds = _grid(
        score_thresholds, DEFAULT_SCORE_THRESHOLDS, current["score_threshold"], "score_threshold"
    )
    thing_list = list(range(num_labels)) if thing_ids is None else sorted(int(i) for i in thing_ids)
    names = [str(class_names[i]) if class_names is not None else str(i) for i in thing_list]
    ground_truth = [_gt_things(item, set(thing_list)) for item in cached]
    rows = []
    for threshold in thresholds:
        evaluator = InstanceSegmentationEvaluator(thing_list, names)
        hits = detections = 0
        for item, (gt_masks, gt_labels) in zip(cached, ground_truth, strict=True):
            pred = processor.post_process_instance_segmentation(
                item.outputs,
                threshold=threshold,
                target_sizes=[item.original_size],
                return_binary_maps=True,
                segment_ids="original",
            )[0]
            masks = pred["segmentation"].numpy().astype(bool)
            labels = [s["label_id"] for s in pred["segments_info"]]
            evaluator.update(masks, [s["score"] for s in pred["segments_info"]], labels, gt_masks, gt_labels)
            hits += instance_matches(masks, labels, gt_masks, gt_labels)
            detections += len(labels)
        total = sum(len(g[1]) for g in ground_truth)
        precision = hits / detections if detections else 0.0
        recall = hits / total if total else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        ap = evaluator.compute()
        rows.append(
            {
                "score_threshold": threshold,
                "F1": 100.0 * f1,
                "precision": 100.0 * precision,
                "recall": 100.0 * recall,
                "AP": float(ap["AP"]),
                "AP50": float(ap["AP50"]),
            }
        )
    current_row = next(r for r in rows if math.isclose(r["score_threshold"], current["score_threshold"]))
    return CalibrationResult(
        "instance",
        "F1",
        ("score_threshold",),
        rows,
        current_row,
        _choose(rows, "F1", current),
        ("precision", "recall", "AP", "AP50"),
    )


# ------------------------------------------------------------------------------------------------- both
def calibrate(
    model: Any,
    processor: Any,
    samples: Iterable[Mapping[str, Any]],
    tasks: Sequence[str] = CALIBRATION_TASKS,
    object_mask_thresholds: Sequence[float] | None = None,
    overlap_thresholds: Sequence[float] | None = None,
    score_thresholds: Sequence[float] | None = None,
    category_id_to_contiguous: Mapping[int, int] | None = None,
) -> dict[str, CalibrationResult]:
    """Sweep the post-processing thresholds of `tasks` on `samples` (one model pass over them; see
    `collect_outputs` for the samples and `category_id_to_contiguous`)."""
    unknown = sorted(set(tasks) - set(CALIBRATION_TASKS))
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {CALIBRATION_TASKS}, got {list(tasks)}")
    config = model.config
    num_labels = int(config.num_labels)
    thing_ids = processor.thing_ids if processor.thing_ids is not None else config.thing_ids
    names = [str(config.id2label.get(i, i)) for i in range(num_labels)]
    cached = collect_outputs(model, processor, samples, category_id_to_contiguous)
    results: dict[str, CalibrationResult] = {}
    if "panoptic" in tasks:
        results["panoptic"] = sweep_panoptic(
            cached, processor, num_labels, thing_ids, object_mask_thresholds, overlap_thresholds
        )
    if "instance" in tasks:
        results["instance"] = sweep_instance(
            cached, processor, num_labels, thing_ids, score_thresholds, names
        )
    return results


def write_thresholds(folder: str | Path, results: Mapping[str, CalibrationResult]) -> Path:
    """Store the chosen thresholds in `folder`/preprocessor_config.json (other keys untouched); returns
    its path. The processor loaded from the folder then uses them as its defaults."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no preprocessor_config.json in {folder}")
    payload = json.loads(path.read_text())
    for result in results.values():
        payload.update(result.settings())
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def validation_samples(
    dataset: str | Path | None = None,
    synthetic: int = 0,
    seed: int = 2,
    size: int = 128,
    limit: int | None = None,
    palette: str = "random",
) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """Validation images with panoptic ground truth and their category id → label id map: a COCO-panoptic
    folder (`training_synthetic.write_coco_panoptic` layout; label ids follow the order of its
    categories, as the training script assigns them) or `synthetic` generated images (seed 2 by default:
    the training script trains on seed 0 and reports its held-out metrics on seed 1; `palette` as in
    `training_synthetic.make_synthetic_sample`)."""
    from .training_synthetic import CATEGORY_ID_TO_CONTIGUOUS, load_coco_panoptic, make_synthetic_dataset

    if (dataset is None) == (synthetic <= 0):
        raise ValueError("give either a dataset folder or a number of synthetic images")
    if dataset is not None:
        samples, categories = load_coco_panoptic(dataset)
        mapping = {int(c["id"]): i for i, c in enumerate(categories)}
    else:
        samples = make_synthetic_dataset(synthetic, size=(size, size), seed=seed, palette=palette)
        mapping = dict(CATEGORY_ID_TO_CONTIGUOUS)
    if limit is not None:
        samples = samples[:limit]
    return samples, mapping
