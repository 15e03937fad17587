#!/usr/bin/env python
"""Fine-tune (or train from scratch) m2f_hf Mask2Former for semantic, instance or panoptic segmentation.

One script for the three tasks, driven by Accelerate, so the same command runs on one CPU/GPU or under
`accelerate launch` (DDP, FSDP, several nodes):

    python examples/train_segmentation.py --task panoptic --synthetic 512 --config tiny --output_dir out
    accelerate launch --num_processes 2 examples/train_segmentation.py --task semantic --dataset DIR ...

Data (`--dataset`): a local folder in COCO-panoptic layout (`annotations/panoptic.json`, `images/`,
`panoptic/`, as `m2f_hf.training_synthetic.write_coco_panoptic` writes), a folder saved with
`datasets.Dataset.save_to_disk`, or a Hub dataset name; `--synthetic N` generates the synthetic shapes
dataset instead. The recipe defaults are the original's (see `m2f_hf.training_recipe` and docs/training.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from m2f_hf import Mask2FormerConfig, Mask2FormerForUniversalSegmentation
from m2f_hf.ecosystem_model_card import write_model_card
from m2f_hf.image_processing_m2f import M2fHfImageProcessor
from m2f_hf.processing_postprocess import TASKS
from m2f_hf.training_augmentation import large_scale_jitter, semantic_segmentation_augmentation
from m2f_hf.training_data import (
    SegmentationCollator,
    SegmentationEvalCollator,
    TrainTransform,
    normalize_sample,
    sample_seed,
)
from m2f_hf.training_evaluation import evaluate
from m2f_hf.training_recipe import PointSampler, build_lr_lambda, build_optimizer

LOSS_SUMMARY_TERMS = ("loss_ce", "loss_mask", "loss_dice")

# Architectures to train from scratch (`--config`). "tiny" is the shipped demo model's; "r50" and
# "swin_tiny" are the original COCO models' (randomly initialised backbones).
CONFIG_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        backbone_type="swin",
        backbone_config=dict(
            embed_dim=24,
            depths=[2, 2, 2, 1],
            num_heads=[1, 2, 4, 8],
            window_size=4,
            pretrain_img_size=128,
            drop_path_rate=0.0,
        ),
        feature_size=64,
        mask_feature_size=64,
        hidden_dim=64,
        num_attention_heads=4,
        dim_feedforward=256,
        encoder_layers=2,
        encoder_feedforward_dim=256,
        decoder_layers=7,
        num_queries=16,
        train_num_points=784,
    ),
    "r50": dict(backbone_type="resnet", backbone_config=dict(depth=50)),
    "swin_tiny": dict(
        backbone_type="swin",
        backbone_config=dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    ),
}


# ------------------------------------------------------------------------------------------------- args
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=TASKS, required=True)
    data = p.add_argument_group("data")
    data.add_argument("--dataset", help="Hub dataset name, COCO-panoptic folder or save_to_disk folder")
    data.add_argument("--synthetic", type=int, default=0, help="generate N synthetic training images")
    data.add_argument("--synthetic_size", type=int, default=128, help="side of the synthetic images")
    data.add_argument(
        "--synthetic_palette",
        choices=("random", "by_class"),
        default="random",
        help="shape colours of the synthetic images (see m2f_hf.training_synthetic)",
    )
    data.add_argument("--eval_dataset", help="separate evaluation data (same kinds as --dataset)")
    data.add_argument(
        "--eval_samples",
        type=int,
        default=64,
        help="held-out images: synthetic ones from another seed, or the last N of --dataset",
    )
    data.add_argument("--train_split", default="train")
    data.add_argument("--eval_split", default="validation")
    data.add_argument("--image_column", default="image")
    data.add_argument("--label_column", help="semantic map column of a `datasets` dataset")
    data.add_argument(
        "--categories", help="COCO categories JSON (list of {id, name, isthing}) or 'synthetic'"
    )
    data.add_argument("--id2label", help="JSON file {id: name} for semantic datasets")
    data.add_argument("--reduce_labels", action="store_true", help="ADE20K convention: 0 → ignore, others −1")
    data.add_argument("--data_seed", type=int, default=0)
    data.add_argument("--augmentation", choices=("lsj", "semantic", "none"), default="lsj")
    data.add_argument("--image_size", type=int, default=1024, help="LSJ crop / semantic crop size")
    data.add_argument("--min_scale", type=float, default=0.1)
    data.add_argument("--max_scale", type=float, default=2.0)
    data.add_argument(
        "--eval_shortest_edge",
        type=int,
        default=None,
        help="processor shortest edge when building a new processor (default: --image_size)",
    )
    data.add_argument("--num_workers", type=int, default=0)
    model = p.add_argument_group("model")
    model.add_argument("--model", help="m2f_hf model folder (or Hub id) to fine-tune")
    model.add_argument("--config", choices=sorted(CONFIG_PRESETS), help="build a new model from a preset")
    model.add_argument("--config_overrides", default="{}", help="JSON of Mask2FormerConfig fields to change")
    optim = p.add_argument_group("optimisation (defaults: the original recipe)")
    optim.add_argument("--learning_rate", type=float, default=1e-4)
    optim.add_argument("--weight_decay", type=float, default=0.05)
    optim.add_argument("--backbone_multiplier", type=float, default=0.1)
    optim.add_argument("--clip_grad_norm", type=float, default=0.01, help="full-model L2 clip (0: off)")
    optim.add_argument("--lr_scheduler", choices=("poly", "multistep", "constant"), default="poly")
    optim.add_argument("--poly_power", type=float, default=0.9)
    optim.add_argument(
        "--milestones",
        type=float,
        nargs="*",
        default=[0.889, 0.963],
        help="multistep milestones as fractions of max_steps (COCO: 327778/368750, 355092/368750)",
    )
    optim.add_argument("--warmup_steps", type=int, default=0)
    optim.add_argument("--warmup_factor", type=float, default=1.0)
    optim.add_argument("--per_device_batch_size", type=int, default=2)
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--max_steps", type=int, default=1000)
    optim.add_argument(
        "--mixed_precision",
        choices=("no", "fp16", "bf16"),
        default=None,
        help="default: accelerate's config / launcher setting",
    )
    optim.add_argument("--seed", type=int, default=42)
    optim.add_argument(
        "--shared_points",
        action="store_true",
        help="same loss sample points for every image of a step (exact DDP equivalence checks)",
    )
    optim.add_argument("--find_unused_parameters", action="store_true")
    optim.add_argument(
        "--gradient_checkpointing",
        nargs="?",
        const="all",
        choices=["all", "high_resolution"],
        help="recompute layers in the backward (less memory, slower): all = backbone blocks, encoder and "
        "decoder layers (the default when given alone); high_resolution = the 1/4 and 1/8 Swin stages and "
        "the deformable encoder, which keep the most activations per FLOP",
    )
    optim.add_argument(
        "--cpu",
        action="store_true",
        help="force the CPU (several processes: gloo); same as ACCELERATE_USE_CPU=true",
    )
    run = p.add_argument_group("run")
    run.add_argument("--output_dir", required=True)
    run.add_argument("--checkpointing_steps", type=int, default=0, help="save_state every N steps (0: never)")
    run.add_argument("--resume_from_checkpoint", help="checkpoint folder, or 'latest' in --output_dir")
    run.add_argument("--eval_steps", type=int, default=0, help="evaluate every N steps (0: only at the end)")
    run.add_argument("--no_eval", action="store_true")
    run.add_argument(
        "--calibrate",
        action="store_true",
        help="after training, sweep the panoptic / instance post-processing thresholds on a validation set "
        "and store the best in the saved preprocessor_config.json (see m2f_hf.training_calibration)",
    )
    run.add_argument(
        "--calibration_dataset",
        help="validation folder (COCO-panoptic layout) for --calibrate; default: with --synthetic, "
        "--calibration_samples new images (seed data_seed + 2), else the evaluation data",
    )
    run.add_argument("--calibration_samples", type=int, default=64)
    run.add_argument("--logging_steps", type=int, default=1)
    run.add_argument("--report_to", default=None, help="accelerate trackers (tensorboard, wandb, ...)")
    run.add_argument(
        "--metrics_backend",
        choices=("evaluate", "builtin"),
        default="evaluate",
        help="evaluation through the `evaluate` modules in metrics/ (one process) or the package's "
        "evaluators (the same numbers; always used with several processes)",
    )
    run.add_argument("--push_to_hub", metavar="REPO", help="upload the final folder to this Hub repo")
    run.add_argument("--hub_private", action="store_true")
    run.add_argument("--license", default="apache-2.0")
    args = p.parse_args(argv)
    if (args.model is None) == (args.config is None):
        p.error("give exactly one of --model and --config")
    if (args.dataset is None) == (args.synthetic <= 0):
        p.error("give exactly one of --dataset and --synthetic N")
    if args.gradient_accumulation_steps < 1 or args.per_device_batch_size < 1 or args.max_steps < 1:
        p.error("batch size, gradient accumulation and max_steps must be >= 1")
    return args


# ------------------------------------------------------------------------------------------------- data
class LabelInfo:
    """Class names, thing classes and the dataset-category → contiguous-id mapping of a dataset."""

    def __init__(
        self,
        id2label: dict[int, str],
        thing_ids: list[int] | None,
        category_to_contiguous: dict[int, int] | None,
        name: str,
    ) -> None:
        self.id2label = id2label
        self.thing_ids = thing_ids
        self.category_to_contiguous = category_to_contiguous
        self.name = name

    @classmethod
    def from_categories(cls, categories: list[dict[str, Any]], name: str) -> LabelInfo:
        return cls(
            {i: str(c["name"]) for i, c in enumerate(categories)},
            [i for i, c in enumerate(categories) if int(c.get("isthing", 1))],
            {int(c["id"]): i for i, c in enumerate(categories)},
            name,
        )


def _read_categories(value: str) -> list[dict[str, Any]]:
    if value == "synthetic":
        from m2f_hf.training_synthetic import SYNTHETIC_CATEGORIES

        return SYNTHETIC_CATEGORIES
    payload = json.loads(Path(value).read_text())
    return payload["categories"] if isinstance(payload, dict) else payload


class SampleSource:
    """Random access to normalised samples of a list or a `datasets.Dataset` (decoded lazily)."""

    def __init__(
        self,
        rows: Any,
        labels: LabelInfo,
        image_column: str = "image",
        label_column: str | None = None,
        reduce_labels: bool = False,
    ) -> None:
        self.rows = rows
        self.labels = labels
        self.image_column = image_column
        self.label_column = label_column
        self.reduce_labels = reduce_labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = dict(self.rows[int(index)])
        if self.image_column != "image":
            row["image"] = row.pop(self.image_column)
        if self.label_column is not None:
            row["semantic_map"] = row.pop(self.label_column)
        sample = normalize_sample(row, self.labels.category_to_contiguous)
        if self.reduce_labels and sample["semantic_map"] is not None:
            semantic = sample["semantic_map"] - 1
            semantic[sample["semantic_map"] == 0] = 255
            semantic[sample["semantic_map"] == 255] = 255
            sample["semantic_map"] = semantic
        return sample

    def subset(self, indices: list[int]) -> SampleSource:
        rows = self.rows.select(indices) if hasattr(self.rows, "select") else [self.rows[i] for i in indices]
        return SampleSource(rows, self.labels, self.image_column, self.label_column, self.reduce_labels)


def _load_datasets_rows(path_or_name: str, split: str) -> Any:
    import datasets

    if Path(path_or_name).is_dir():
        loaded = datasets.load_from_disk(path_or_name)
    else:
        loaded = datasets.load_dataset(path_or_name, split=split)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{path_or_name} has splits {sorted(loaded)}, not {split!r}")
        loaded = loaded[split]
    return loaded


def _labels_for_rows(
    rows: Any, args: argparse.Namespace, model_config: Mask2FormerConfig | None
) -> LabelInfo:
    name = args.dataset
    if args.categories:
        return LabelInfo.from_categories(_read_categories(args.categories), name)
    if args.id2label:
        id2label = {int(k): v for k, v in json.loads(Path(args.id2label).read_text()).items()}
        return LabelInfo(id2label, None, None, name)
    if model_config is not None:
        has_segments = "segments_info" in getattr(rows, "column_names", [])
        if has_segments:
            raise ValueError("panoptic `datasets` data need --categories (a COCO categories JSON)")
        return LabelInfo(dict(model_config.id2label), model_config.thing_ids, None, name)
    raise ValueError("cannot tell the classes of this dataset: pass --categories or --id2label")


def load_data(
    args: argparse.Namespace, model_config: Mask2FormerConfig | None
) -> tuple[SampleSource, SampleSource]:
    """(train, eval) sample sources for the data arguments."""
    from m2f_hf.training_synthetic import SYNTHETIC_CATEGORIES, load_coco_panoptic, make_synthetic_dataset

    if args.synthetic > 0:
        labels = LabelInfo.from_categories(SYNTHETIC_CATEGORIES, "m2f_hf synthetic shapes")
        size = (args.synthetic_size, args.synthetic_size)
        palette = args.synthetic_palette
        train = make_synthetic_dataset(args.synthetic, size=size, seed=args.data_seed, palette=palette)
        held_out = make_synthetic_dataset(
            args.eval_samples, size=size, seed=args.data_seed + 1, palette=palette
        )
        return SampleSource(train, labels), SampleSource(held_out, labels)

    def from_path(path: str, split: str) -> SampleSource:
        if (Path(path) / "annotations" / "panoptic.json").is_file():
            samples, categories = load_coco_panoptic(path)
            return SampleSource(samples, LabelInfo.from_categories(categories, Path(path).name))
        rows = _load_datasets_rows(path, split)
        label_column = args.label_column
        if label_column is None and "segments_info" not in rows.column_names:
            label_column = next(
                (
                    c
                    for c in ("semantic_map", "annotation", "label", "segmentation_map")
                    if c in rows.column_names
                ),
                None,
            )
            if label_column is None:
                raise ValueError(f"no label column found in {rows.column_names}; pass --label_column")
        if label_column == "semantic_map":
            label_column = None
        labels = _labels_for_rows(rows, args, model_config)
        return SampleSource(rows, labels, args.image_column, label_column, args.reduce_labels)

    train = from_path(args.dataset, args.train_split)
    if args.eval_dataset:
        held_out = from_path(args.eval_dataset, args.eval_split)
    elif not Path(args.dataset).exists():
        held_out = from_path(args.dataset, args.eval_split)
    else:
        n = len(train)
        k = min(args.eval_samples, n // 5) if args.eval_samples else 0
        held_out = train.subset(list(range(n - k, n)))
        train = train.subset(list(range(n - k)))
    return train, held_out


class TrainDataset(Dataset):
    """Augmented training examples; sample i of epoch e always gets the same augmentation."""

    def __init__(self, source: SampleSource, transform: TrainTransform, seed: int) -> None:
        self.source = source
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.transform(self.source[index], rng=sample_seed(self.seed, self.epoch, index))


class EvalDataset(Dataset):
    def __init__(self, source: SampleSource, indices: list[int]) -> None:
        self.source = source
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.source[self.indices[index]]


class EpochShuffleSampler(Sampler[int]):
    """A permutation per epoch from (seed, epoch): the same order in every process and after resuming."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


# ------------------------------------------------------------------------------ `evaluate` metric modules
METRICS_DIR = (
    Path(__file__).resolve().parents[1] / "metrics"
)  # m2f_mean_iou, m2f_panoptic_quality, m2f_mask_ap


class EvaluateModuleEvaluator:
    """An `evaluate` metric module behind the `update` / `compute` of the package's evaluators, so
    `training_evaluation.evaluate` feeds it the same predictions (one process: `evaluate` modules gather
    across processes by their own file locks, which this example does not set up)."""

    def __init__(self, family: str, module: Any, **compute_kwargs: Any) -> None:
        self.family, self.module, self.compute_kwargs = family, module, compute_kwargs

    def update(self, *args: Any) -> None:
        if self.family == "semantic":
            pred, gt = args
            self.module.add(prediction=np.asarray(pred), reference=np.asarray(gt))
        elif self.family == "panoptic":
            pred_map, pred_segments, gt_map, gt_segments = args
            self.module.add(
                prediction={"segmentation": np.asarray(pred_map), "segments_info": _segments(pred_segments)},
                reference={"segmentation": np.asarray(gt_map), "segments_info": _segments(gt_segments)},
            )
        else:
            masks, scores, labels, gt_masks, gt_labels = args
            self.module.add(
                prediction={"masks": np.asarray(masks, np.uint8), "scores": scores, "labels": labels},
                reference={
                    "masks": np.asarray(gt_masks, np.uint8),
                    "labels": list(gt_labels),
                    "iscrowd": [0] * len(gt_labels),
                },
            )

    def compute(self) -> dict[str, Any]:
        kwargs = dict(self.compute_kwargs)
        names = kwargs.pop("class_names") if self.family == "semantic" else None
        result = self.module.compute(**kwargs)
        if names is not None:  # the per-class IoU under the built-in evaluator's keys
            result.update({f"IoU-{n}": 100.0 * float(v) for n, v in zip(names, result["per_category_iou"])})
        return result


def _segments(segments: list[dict[str, Any]]) -> list[dict[str, int]]:
    return [
        {"id": int(s["id"]), "category_id": int(s["category_id"]), "iscrowd": int(s.get("iscrowd", 0))}
        for s in segments
    ]


def evaluate_module_evaluators(task: str, config: Mask2FormerConfig) -> dict[str, EvaluateModuleEvaluator]:
    """The `evaluate` modules of metrics/ for the families `training_evaluation.evaluate` runs on `task`."""
    import evaluate as hf_evaluate

    num_labels = int(config.num_labels)
    things = list(config.thing_ids) if config.thing_ids is not None else list(range(num_labels))
    names = [str(config.id2label.get(i, i)) for i in range(num_labels)]

    def load(name: str) -> Any:
        return hf_evaluate.load(str(METRICS_DIR / name))

    out = {}
    if task in ("semantic", "panoptic"):
        out["semantic"] = EvaluateModuleEvaluator(
            "semantic", load("m2f_mean_iou"), num_labels=num_labels, ignore_index=255, class_names=names
        )
    if task == "panoptic":
        categories = {i: {"isthing": int(i in things)} for i in range(num_labels)}
        out["panoptic"] = EvaluateModuleEvaluator(
            "panoptic", load("m2f_panoptic_quality"), categories=categories
        )
    if task in ("instance", "panoptic"):
        out["instance"] = EvaluateModuleEvaluator(
            "instance", load("m2f_mask_ap"), category_ids=things, class_names=[names[i] for i in things]
        )
    return out


# ------------------------------------------------------------------------------------------------ model
def build_model(args: argparse.Namespace, labels: LabelInfo | None) -> Mask2FormerForUniversalSegmentation:
    overrides = json.loads(args.config_overrides)
    if args.model:
        kwargs: dict[str, Any] = dict(overrides)
        if labels is not None:
            model_config = Mask2FormerConfig.from_pretrained(args.model)
            if dict(model_config.id2label) != labels.id2label or model_config.thing_ids != labels.thing_ids:
                kwargs.update(
                    id2label=labels.id2label,
                    label2id={v: k for k, v in labels.id2label.items()},
                    thing_ids=labels.thing_ids,
                    ignore_mismatched_sizes=True,
                )
        return Mask2FormerForUniversalSegmentation.from_pretrained(args.model, **kwargs)
    if labels is None:
        raise ValueError("a new model needs the dataset's classes")
    config = Mask2FormerConfig(
        **{**CONFIG_PRESETS[args.config], **overrides},
        id2label=labels.id2label,
        label2id={v: k for k, v in labels.id2label.items()},
        thing_ids=labels.thing_ids,
        semantic_on=True,
        instance_on=args.task in ("instance", "panoptic"),
        panoptic_on=args.task == "panoptic",
    )
    return Mask2FormerForUniversalSegmentation(config)


def build_processor(args: argparse.Namespace, config: Mask2FormerConfig) -> M2fHfImageProcessor:
    if args.model and (Path(args.model) / "preprocessor_config.json").is_file():
        return M2fHfImageProcessor.from_pretrained(args.model, thing_ids=config.thing_ids)
    shortest = args.eval_shortest_edge or args.image_size
    return M2fHfImageProcessor(
        size={"shortest_edge": shortest, "longest_edge": max(shortest, int(shortest * 1333 / 800))},
        thing_ids=config.thing_ids,
        # the processor's thresholds (0.8 / 0.8 / 100 detections); the semantic map resized after the rule,
        # the original's default for semantic-only configs
        sem_seg_postprocess_before_inference=False,
        size_divisibility=config.size_divisibility,
    )


def build_augmentation(args: argparse.Namespace):
    if args.augmentation == "lsj":
        return large_scale_jitter(args.image_size, args.min_scale, args.max_scale)
    if args.augmentation == "semantic":
        sizes = [int(args.image_size * f / 10) for f in range(5, 21)]
        return semantic_segmentation_augmentation(
            min_size_train=sizes,
            max_size_train=args.image_size * 4,
            crop_size=(args.image_size, args.image_size),
            size_divisibility=args.image_size,
        )
    return None


class TrainState:
    """Step counters saved with `accelerator.save_state` (registered for checkpointing)."""

    def __init__(self) -> None:
        self.step = 0
        self.micro_step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "micro_step": self.micro_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])
        self.micro_step = int(state["micro_step"])


def _latest_checkpoint(output_dir: Path) -> Path:
    found = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not found:
        raise FileNotFoundError(f"no checkpoint-* folder in {output_dir}")
    return found[-1]


# ------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.command = "python examples/train_segmentation.py " + " ".join(shlex.quote(a) for a in argv)
    output_dir = Path(args.output_dir)
    kwargs_handlers = [DistributedDataParallelKwargs(find_unused_parameters=args.find_unused_parameters)]
    accelerator = Accelerator(
        cpu=args.cpu,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_dir=str(output_dir),
        kwargs_handlers=kwargs_handlers,
    )
    set_seed(args.seed)
    if accelerator.num_processes > 1:  # a single process needs no setup line ("NO num_processes=1 ...")
        accelerator.print(
            f"{accelerator.distributed_type.name} num_processes={accelerator.num_processes} "
            f"device={accelerator.device} mixed_precision={accelerator.mixed_precision}"
        )
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    model_config = Mask2FormerConfig.from_pretrained(args.model) if args.model else None
    train_source, eval_source = load_data(args, model_config)
    model = build_model(args, train_source.labels)
    if args.gradient_checkpointing == "high_resolution":
        model.checkpoint_high_resolution_layers()
    elif args.gradient_checkpointing:
        # transformers >= 5.x names it activation checkpointing; older 5.x only has the gradient_ alias
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    config = model.config
    processor = build_processor(args, config)
    model.criterion.rand_fn = sampler = PointSampler(args.seed, accelerator.process_index, args.shared_points)

    transform = TrainTransform(
        args.task, build_augmentation(args), processor.image_mean, processor.image_std, config.thing_ids
    )
    train_dataset = TrainDataset(train_source, transform, args.data_seed)
    shuffle = EpochShuffleSampler(len(train_dataset), args.seed)
    train_loader = DataLoader(
        train_dataset,
        batch_size=args.per_device_batch_size,
        sampler=shuffle,
        drop_last=True,
        collate_fn=SegmentationCollator(config.size_divisibility),
        num_workers=args.num_workers,
    )
    optimizer = build_optimizer(model, args.learning_rate, args.weight_decay, args.backbone_multiplier)
    milestones = [int(round(f * args.max_steps)) for f in args.milestones]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        build_lr_lambda(
            args.max_steps,
            args.lr_scheduler,
            args.warmup_steps,
            args.warmup_factor,
            args.poly_power,
            milestones,
        ),
    )
    # The scheduler stays unprepared: accelerate would step it once per process, and the schedule is per
    # optimizer step here whatever the number of processes.
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, state)
    if args.report_to:
        accelerator.init_trackers(
            "m2f_hf_" + args.task,
            config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))},
        )

    if args.resume_from_checkpoint:
        path = (
            _latest_checkpoint(output_dir)
            if args.resume_from_checkpoint == "latest"
            else Path(args.resume_from_checkpoint)
        )
        accelerator.load_state(str(path))
        accelerator.print(f"resumed from {path} at step {state.step}")

    batches_per_epoch = len(train_loader)
    if batches_per_epoch == 0:
        raise ValueError("the training set is smaller than one batch per process")
    eval_indices = list(range(accelerator.process_index, len(eval_source), accelerator.num_processes))
    eval_loader = DataLoader(
        EvalDataset(eval_source, eval_indices),
        batch_size=args.per_device_batch_size,
        collate_fn=SegmentationEvalCollator(processor),
    )

    def run_eval() -> dict[str, float]:
        # the unwrapped model: DDP's forward would synchronise buffers, and shards may differ in length
        custom = None
        if args.metrics_backend == "evaluate" and accelerator.num_processes == 1:
            custom = evaluate_module_evaluators(args.task, accelerator.unwrap_model(model).config)
        return evaluate(
            accelerator.unwrap_model(model),
            processor,
            eval_loader,
            args.task,
            accelerator=accelerator,
            evaluators=custom,
        )

    log_path = output_dir / "log.jsonl"
    if accelerator.is_main_process and not args.resume_from_checkpoint and log_path.exists():
        log_path.unlink()  # a fresh run starts a fresh log; a resumed one appends
    progress = tqdm(
        total=args.max_steps,
        initial=state.step,
        disable=not accelerator.is_local_main_process,
        desc="training",
    )
    model.train()
    ga = args.gradient_accumulation_steps
    pending: list[torch.Tensor] = []
    term_names: list[str] | None = None
    eval_history: list[dict[str, Any]] = []
    start = time.time()
    while state.step < args.max_steps:
        epoch, skip = divmod(state.micro_step, batches_per_epoch)
        train_dataset.epoch = epoch
        train_loader.set_epoch(epoch)
        shuffle.set_epoch(epoch)
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        for batch in loader:
            sampler.set_step(state.micro_step)
            sync = (state.micro_step + 1) % ga == 0
            context = contextlib.nullcontext() if sync else accelerator.no_sync(model)
            with context:
                outputs = model(**batch)
                accelerator.backward(outputs.loss / ga)
            if term_names is None:
                term_names = sorted(outputs.loss_dict)
            pending.append(
                torch.stack(
                    [outputs.loss.detach().float()]
                    + [outputs.loss_dict[k].detach().float() for k in term_names]
                )
            )
            state.micro_step += 1
            if not sync:
                continue
            grad_norm = None
            if args.clip_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            progress.update(1)
            values = accelerator.reduce(torch.stack(pending).mean(0), reduction="mean")
            pending = []
            if state.step % args.logging_steps == 0 or state.step == args.max_steps:
                record = {
                    "step": state.step,
                    "epoch": epoch,
                    "lr": scheduler.get_last_lr()[0],
                    "loss": values[0].item(),
                }
                record.update({k: values[i + 1].item() for i, k in enumerate(term_names)})
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                record["elapsed_s"] = round(time.time() - start, 2)
                if accelerator.is_main_process:
                    with log_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    progress.set_postfix(loss=f"{record['loss']:.3f}")
                if args.report_to:
                    accelerator.log(record, step=state.step)
            if args.checkpointing_steps and state.step % args.checkpointing_steps == 0:
                accelerator.save_state(str(output_dir / f"checkpoint-{state.step}"))
            if (
                args.eval_steps
                and state.step % args.eval_steps == 0
                and state.step < args.max_steps
                and not args.no_eval
            ):
                metrics = run_eval()
                eval_history.append({"step": state.step, **metrics})
                if accelerator.is_main_process:
                    with log_path.open("a") as f:
                        f.write(json.dumps({"step": state.step, "eval": metrics}) + "\n")
            if state.step >= args.max_steps:
                break
    progress.close()

    metrics: dict[str, float] = {} if args.no_eval else run_eval()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if metrics:
            with log_path.open("a") as f:
                f.write(json.dumps({"step": state.step, "eval": metrics}) + "\n")
        save_final(
            accelerator.unwrap_model(model), processor, args, metrics, train_source, eval_source, output_dir
        )
        if args.calibrate:
            calibration = calibrate_thresholds(accelerator.unwrap_model(model), processor, args, eval_source)
        if args.push_to_hub:
            push_folder(output_dir, args.push_to_hub, args.hub_private)
    accelerator.end_training()
    result = {"step": state.step, "metrics": metrics, "eval_history": eval_history}
    if args.calibrate and accelerator.is_main_process:
        result["calibration"] = calibration
    return result


def calibrate_thresholds(
    model: Mask2FormerForUniversalSegmentation,
    processor: M2fHfImageProcessor,
    args: argparse.Namespace,
    eval_source: SampleSource,
) -> dict[str, Any]:
    """--calibrate: sweep the thresholds of the trained model, print the tables, store the best setting in
    the output folder's preprocessor_config.json and every row in calibration.json. The model card's
    metrics stay those of the thresholds used during evaluation (the original ones by default)."""
    from m2f_hf.training_calibration import calibrate, validation_samples, write_thresholds

    tasks = [t for t in ("panoptic", "instance") if t == args.task or args.task == "panoptic"]
    if not tasks:
        print("--calibrate: semantic segmentation has no thresholds to calibrate")
        return {}
    if args.calibration_dataset:
        samples, mapping = validation_samples(args.calibration_dataset, limit=args.calibration_samples)
        source = args.calibration_dataset
    elif args.synthetic > 0:
        samples, mapping = validation_samples(
            synthetic=args.calibration_samples,
            seed=args.data_seed + 2,
            size=args.synthetic_size,
            palette=args.synthetic_palette,
        )
        source = f"{len(samples)} synthetic images (seed {args.data_seed + 2})"
    else:
        samples = [eval_source[i] for i in range(min(len(eval_source), args.calibration_samples))]
        mapping = None
        source = "the evaluation data (pass --calibration_dataset for a separate validation set)"
    results = calibrate(model, processor, samples, tasks=tasks, category_id_to_contiguous=mapping)
    print(f"threshold calibration on {source}:")
    for result in results.values():
        print(result.table())
        print(result.summary())
    output_dir = Path(args.output_dir)
    write_thresholds(output_dir, results)
    payload = {task: result.to_dict() for task, result in results.items()}
    (output_dir / "calibration.json").write_text(json.dumps(payload, indent=1) + "\n")
    return payload


FINAL_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "README.md",
    "eval_results.json",
    "training_args.json",
)
OPTIONAL_FILES = ("calibration.json",)  # written by --calibrate


def save_final(
    model: Mask2FormerForUniversalSegmentation,
    processor: M2fHfImageProcessor,
    args: argparse.Namespace,
    metrics: dict[str, float],
    train_source: SampleSource,
    eval_source: SampleSource,
    output_dir: Path,
) -> None:
    """The Hub folder: weights, config, processor, model card, metrics and the training arguments."""
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    (output_dir / "eval_results.json").write_text(json.dumps(metrics, indent=1))
    (output_dir / "training_args.json").write_text(json.dumps(vars(args), indent=1))
    dataset = train_source.labels.name if args.synthetic <= 0 else "m2f_hf synthetic shapes"
    write_model_card(
        output_dir,
        model.config,
        processor=processor,
        task=args.task,
        metrics=metrics,
        dataset=dataset,
        dataset_details=f"{len(train_source)} training / {len(eval_source)} held-out evaluation images",
        base_model=args.model,
        license=args.license,
        repo_id=args.push_to_hub,
        training_command=args.command,
        hyperparameters={
            "max_steps": args.max_steps,
            "per_device_batch_size": args.per_device_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "learning_rate": args.learning_rate,
            "weight_decay": args.weight_decay,
            "backbone_multiplier": args.backbone_multiplier,
            "clip_grad_norm": args.clip_grad_norm,
            "lr_scheduler": args.lr_scheduler,
            "augmentation": args.augmentation,
            "image_size": args.image_size,
            "seed": args.seed,
        },
    )


def push_folder(folder: Path, repo_id: str, private: bool) -> None:
    """Upload the final folder (model, processor, card) to the Hub; checkpoints stay local."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=list(FINAL_FILES + OPTIONAL_FILES),
        commit_message="Upload m2f_hf Mask2Former",
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
