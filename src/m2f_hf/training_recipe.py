"""Reusable pieces for fine-tuning Mask2Former: data, collation, the original optimiser recipe, evaluation.

The recipe is the one of the original `train_net.py` and its configs:
  * AdamW, base lr 1e-4, weight decay 0.05; backbone parameters get lr x 0.1 (BACKBONE_MULTIPLIER);
    parameters of normalisation layers (WEIGHT_DECAY_NORM) and of `nn.Embedding`s (WEIGHT_DECAY_EMBED), and
    Swin's `relative_position_bias_table` / `absolute_pos_embed`, get no weight decay;
  * gradient clipping of the whole model's L2 norm to 0.01 (CLIP_TYPE full_model, CLIP_VALUE 0.01);
  * detectron2's schedules: WarmupPolyLR (power 0.9, semantic configs) or WarmupMultiStepLR (gamma 0.1,
    COCO configs), both with a linear warmup from `warmup_factor`.

Everything random during training is a function of (seed, step) or (seed, epoch, sample index), never of
process-global state, so a resumed run repeats the uninterrupted one exactly and a data-parallel run sees
the same augmentations as a single process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .processing_targets import pad_targets, panoptic_to_targets, rgb_to_id, semantic_to_targets
from .training_augmentation import AugmentationPipeline
from .training_metrics_instance import InstanceSegmentationEvaluator
from .training_metrics_panoptic import PanopticQualityEvaluator
from .training_metrics_semantic import SemanticSegmentationEvaluator

TASKS = ("semantic", "instance", "panoptic")
IGNORE_INDEX = 255
NORM_MODULE_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
NO_DECAY_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed")

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "PointSampler",
    "SegmentationCollator",
    "SegmentationEvalCollator",
    "TrainTransform",
    "build_lr_lambda",
    "build_optimizer",
    "check_task",
    "evaluate",
    "normalize_sample",
    "param_groups",
    "sample_seed",
    "semantic_from_panoptic",
    "write_model_card",
]


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return task


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


# ------------------------------------------------------------------------------------------ point sampler
class PointSampler:
    """The loss's `rand_fn`: uniform points from a generator reseeded at every step from (seed, step).

    With `shared=True` every call returns points that depend only on (seed, step, number of points): every
    image and every mask of a step gets the same points whatever the batch composition, so a
    data-parallel run and a single process with the whole batch compute identical losses (used to check
    DDP equivalence). `shared=False` (training) gives independent draws, different per process.
    """

    def __init__(self, seed: int = 0, process_index: int = 0, shared: bool = False) -> None:
        self.seed = int(seed)
        self.process_index = int(process_index)
        self.shared = shared
        self.generator = torch.Generator()
        self.step = 0
        self.set_step(0)

    def set_step(self, step: int) -> None:
        self.step = int(step)
        self.generator.manual_seed(self._seed_for(self.process_index if not self.shared else 0))

    def _seed_for(self, salt: int) -> int:
        return int(np.random.SeedSequence(self.seed, spawn_key=(self.step, salt)).generate_state(1)[0])

    def __call__(
        self, *size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        dtype = dtype or torch.get_default_dtype()
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        if self.shared:
            if len(size) != 3:
                raise ValueError(f"shared points expect a (rows, points, 2) draw, got {size}")
            generator = torch.Generator().manual_seed(self._seed_for(1_000_000 + int(size[1])))
            points = torch.rand((1, *size[1:]), generator=generator, dtype=dtype)
            return points.expand(*size).contiguous().to(device)
        return torch.rand(size, generator=self.generator, dtype=dtype).to(device)


# -------------------------------------------------------------------------------------------- optimiser
def param_groups(
    model: nn.Module,
    lr: float = 1e-4,
    weight_decay: float = 0.05,
    backbone_multiplier: float = 0.1,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
) -> list[dict[str, Any]]:
    """The original `build_optimizer` grouping: one (lr, weight decay) per trainable parameter kind.

    A parameter whose module path contains "backbone" gets lr x `backbone_multiplier`; parameters of norm
    layers get `weight_decay_norm`, of `nn.Embedding` `weight_decay_embed`, Swin's relative position bias
    tables / absolute position embeddings 0. Equal settings are merged into one group (same update).
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    names: dict[tuple[float, float], list[str]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            group_lr = lr * backbone_multiplier if "backbone" in module_name else lr
            decay = weight_decay
            if param_name in NO_DECAY_PARAM_NAMES:
                decay = 0.0
            if isinstance(module, NORM_MODULE_TYPES):
                decay = weight_decay_norm
            if isinstance(module, nn.Embedding):
                decay = weight_decay_embed
            key = (group_lr, decay)
            groups.setdefault(key, []).append(param)
            names.setdefault(key, []).append(f"{module_name}.{param_name}" if module_name else param_name)
    return [
        {"params": params, "lr": key[0], "weight_decay": key[1], "param_names": names[key]}
        for key, params in groups.items()
    ]


def build_optimizer(
    model: nn.Module,
    lr: float = 1e-4,
    weight_decay: float = 0.05,
    backbone_multiplier: float = 0.1,
    **kwargs: Any,
) -> torch.optim.AdamW:
    """AdamW over `param_groups` (the original's optimiser; betas/eps are torch's defaults as there)."""
    groups = param_groups(model, lr, weight_decay, backbone_multiplier, **kwargs)
    for group in groups:
        group.pop("param_names")
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def build_lr_lambda(
    max_steps: int,
    schedule: str = "poly",
    warmup_steps: int = 0,
    warmup_factor: float = 1.0,
    poly_power: float = 0.9,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> Callable[[int], float]:
    """Multiplier of the base lr at step t (detectron2's WarmupPolyLR / WarmupMultiStepLR).

    poly: (1 - t / max_steps) ** power; multistep: gamma ** (number of milestones <= t). During the
    first `warmup_steps` the multiplier is scaled by the linear ramp warmup_factor * (1 - a) + a with
    a = t / warmup_steps (warmup_factor 1.0, the Mask2Former configs' value, means no ramp).
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if schedule not in ("poly", "multistep", "constant"):
        raise ValueError(f"schedule must be 'poly', 'multistep' or 'constant', got {schedule!r}")
    steps = sorted(int(m) for m in milestones)

    def factor(step: int) -> float:
        if schedule == "poly":
            value = (1.0 - min(step, max_steps) / max_steps) ** poly_power
        elif schedule == "multistep":
            value = gamma ** sum(1 for m in steps if m <= step)
        else:
            value = 1.0
        if step < warmup_steps:
            alpha = step / warmup_steps
            value *= warmup_factor * (1 - alpha) + alpha
        return value

    return factor


# ------------------------------------------------------------------------------------------- evaluation
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
) -> dict[str, float]:
    """Metrics of `model` on the batches of a `SegmentationEvalCollator` loader, at the original resolution.

    task "semantic" → mIoU, fwIoU, mACC, pACC; "instance" → COCO mask AP; "panoptic" → PQ (and, as the
    original reports for panoptic models, mIoU from semantic inference and AP from instance inference).
    `metrics` restricts the families ("semantic", "instance", "panoptic"). With an `accelerator`, each
    process evaluates the batches it is given and the evaluators are merged across processes.
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
    evaluators: dict[str, Any] = {}
    if "semantic" in families:
        evaluators["semantic"] = SemanticSegmentationEvaluator(num_labels, IGNORE_INDEX, class_names=names)
    if "panoptic" in families:
        evaluators["panoptic"] = PanopticQualityEvaluator(
            {i: {"isthing": i in thing_ids} for i in range(num_labels)}
        )
    if "instance" in families:
        evaluators["instance"] = InstanceSegmentationEvaluator(thing_ids, [names[i] for i in thing_ids])

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
            preds = processor.post_process_instance_segmentation(
                outputs, target_sizes=sizes, return_binary_maps=True, segment_ids="original"
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


# ------------------------------------------------------------------------------------------- model card
_CARD_METRICS = ("PQ", "PQ_th", "PQ_st", "SQ", "RQ", "mIoU", "fwIoU", "mACC", "pACC", "AP", "AP50", "AP75")


def write_model_card(
    folder: Any,
    config: Any,
    task: str,
    metrics: Mapping[str, float],
    dataset: str,
    license: str = "apache-2.0",
    base_model: str | None = None,
    repo_id: str | None = None,
    dataset_details: str | None = None,
    training_command: str | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    processor: Any = None,
) -> str:
    """Write README.md into `folder`: `hub.build_model_card` with the training run's provenance
    (base checkpoint, data, hyper-parameters, command) and its finite held-out metrics."""
    from pathlib import Path

    from .ecosystem_hub import build_model_card

    check_task(task)
    if not dataset:
        raise ValueError("the model card needs the dataset name")
    if not license:
        raise ValueError("the model card needs a license")
    name = repo_id or Path(folder).resolve().name
    shown = {k: float(metrics[k]) for k in _CARD_METRICS if k in metrics and math.isfinite(float(metrics[k]))}
    origin = f"fine-tuned from `{base_model}`" if base_model else "trained from scratch"
    details = [f"**Base checkpoint:** {base_model or 'none (random initialisation)'}"]
    if dataset_details:
        details.append(f"**Training data:** {dataset_details}")
    training = []
    if hyperparameters:
        training += ["| hyperparameter | value |", "|---|---|"]
        training += [f"| {k} | {v} |" for k, v in hyperparameters.items()]
    if training_command:
        training += ["", "```bash", training_command, "```"]
    text = build_model_card(
        config,
        name=name,
        license=license,
        summary=f"Mask2Former for {task} segmentation, trained with the `m2f_hf` package ({origin}).",
        processor=processor,
        dataset=dataset,
        task=task,
        metrics=shown,
        metrics_source="Held-out split, original image resolution, the original post-processing:",
        base_model=base_model,
        details=details,
        extra_sections={"Training": "\n".join(training)} if training else None,
        remote_code=False,
        metric_format=".2f",
    )
    Path(folder, "README.md").write_text(text)
    return text
