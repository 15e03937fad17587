#!/usr/bin/env python
"""Fine-tune the m2f_hf video model (VideoMaskFormer) for video instance segmentation, with Accelerate.

    python examples/train_video.py --synthetic 48 --output_dir out/video
    python examples/train_video.py --train_json ytvis/train.json --image_root ytvis/train/JPEGImages \\
        --val_json ytvis/valid_sub.json --val_image_root ytvis/train/JPEGImages --init converted_ytvis/
    accelerate launch --num_processes 2 examples/train_video.py ...

Data: a YouTube-VIS json (`annotations[*].segmentations` per frame, RLE or polygons) with its frame
folder, or `--synthetic N` moving-shapes videos (`m2f_hf.training_synthetic_video`) plus a held-out set.
The original's training recipe: clips of `num_frames` frames sampled within `--frame_range` of a
reference frame, one resize and one flip per clip (`ClipAugmentation`), AdamW with the backbone at 0.1x
the learning rate, poly schedule, gradient clipping, the video criterion (points shared by all frames of a
clip). `--init` takes a video folder, an image folder (its weights initialise the video model, as the
original initialises its YouTube-VIS models from COCO ones; class rows are matched by label name), or
"demo" (the bundled synthetic-shapes image model, the default). Evaluation: YouTube-VIS mask AP on the
held-out videos before and after training, written to `eval_results.json` with the saved model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from m2f_hf import Mask2FormerConfig, Mask2FormerForUniversalSegmentation
from m2f_hf.ecosystem_cli import DEMO_MODEL
from m2f_hf.modeling_video_m2f import Mask2FormerForVideoInstanceSegmentation
from m2f_hf.processing_video_m2f import M2fHfVideoProcessor
from m2f_hf.training_recipe import PointSampler, build_lr_lambda, build_optimizer
from m2f_hf.training_synthetic_video import make_synthetic_video_dataset
from m2f_hf.training_video_data import ClipAugmentation, YouTubeVISClipDataset, load_ytvis
from m2f_hf.training_video_recipe import (
    VideoClipCollator,
    evaluate_video_instance_segmentation,
    video_model_from_image_model,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = p.add_argument_group("data")
    data.add_argument("--train_json", help="YouTube-VIS training json")
    data.add_argument("--image_root", help="folder the training json's file_names are relative to")
    data.add_argument("--val_json", help="YouTube-VIS json with ground truth for evaluation")
    data.add_argument("--val_image_root")
    data.add_argument("--synthetic", type=int, default=0, help="N synthetic training videos (+ N/4 held out)")
    data.add_argument("--synthetic_frames", type=int, default=8, help="frames per synthetic video")
    data.add_argument(
        "--num_frames", type=int, default=2, help="frames per training clip (SAMPLING_FRAME_NUM)"
    )
    data.add_argument("--frame_range", type=int, default=20, help="SAMPLING_FRAME_RANGE")
    data.add_argument(
        "--min_size_train", type=int, nargs="+", default=None, help="default: 360 480 (YouTube-VIS)"
    )
    data.add_argument("--max_size_train", type=int, default=1333)
    data.add_argument("--test_size", type=int, nargs=2, default=None, help="shortest, longest edge at test")
    model = p.add_argument_group("model")
    model.add_argument("--init", default="demo", help="'demo', a video folder or an image folder")
    train = p.add_argument_group("training")
    train.add_argument("--max_steps", type=int, default=300)
    train.add_argument("--batch_size", type=int, default=4, help="clips per step and process")
    train.add_argument("--learning_rate", type=float, default=1e-4)
    train.add_argument("--weight_decay", type=float, default=0.05)
    train.add_argument("--backbone_multiplier", type=float, default=0.1)
    train.add_argument("--clip_grad_norm", type=float, default=0.01)
    train.add_argument("--warmup_steps", type=int, default=0)
    train.add_argument("--num_workers", type=int, default=0)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--eval_window", type=int, default=None, help="windowed inference at evaluation")
    train.add_argument(
        "--eval_steps", type=int, default=0, help="also evaluate every N steps (0: before and after only)"
    )
    train.add_argument("--output_dir", required=True)
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if bool(args.synthetic) == bool(args.train_json):
        p.error("give exactly one of --synthetic N and --train_json")
    if args.train_json and not args.image_root:
        p.error("--train_json needs --image_root")
    if args.val_json and not args.val_image_root:
        p.error("--val_json needs --val_image_root")
    return args


def folder_loader(root: str):
    base = Path(root)

    def load(record: Any, index: int):
        with Image.open(base / record.file_names[index]) as image:
            return np.asarray(image.convert("RGB"))

    return load


def memory_loader(dataset: dict[str, Any], frames: list[Any]):
    by_id = {video["id"]: clip for video, clip in zip(dataset["videos"], frames, strict=True)}
    return lambda record, index: by_id[record.video_id][index]


def load_data(args: argparse.Namespace) -> tuple[Any, Any, Any, Any, list[dict[str, Any]]]:
    """(train source, train frame loader, eval source or None, eval frame loader, categories)."""
    if args.synthetic:
        size = (96, 128)
        train, frames = make_synthetic_video_dataset(
            args.synthetic, args.synthetic_frames, size, seed=args.seed
        )
        held = max(2, args.synthetic // 4)
        val, val_frames = make_synthetic_video_dataset(
            held, args.synthetic_frames, size, seed=args.seed + 10_000
        )
        return train, memory_loader(train, frames), val, memory_loader(val, val_frames), train["categories"]
    _, categories = load_ytvis(args.train_json)
    val = args.val_json
    return (
        args.train_json,
        folder_loader(args.image_root),
        val,
        folder_loader(args.val_image_root) if val else None,
        categories,
    )


def build_model(args: argparse.Namespace, categories: list[dict[str, Any]]):
    """(video model, video processor) from `--init`."""
    id2label = {i: c["name"] for i, c in enumerate(sorted(categories, key=lambda c: c["id"]))}
    folder = DEMO_MODEL if args.init == "demo" else Path(args.init)
    config = Mask2FormerConfig.from_pretrained(folder)
    if config.video:
        model = Mask2FormerForVideoInstanceSegmentation.from_pretrained(folder)
        if [model.config.id2label[i] for i in range(model.config.num_labels)] != list(id2label.values()):
            raise ValueError(f"{folder}'s labels {model.config.id2label} are not the dataset's {id2label}")
        processor = M2fHfVideoProcessor.from_pretrained(folder)
    else:
        image_model = Mask2FormerForUniversalSegmentation.from_pretrained(folder)
        by_name = {name: i for i, name in image_model.config.id2label.items()}
        class_map = [by_name.get(name) for name in id2label.values()]
        model = video_model_from_image_model(image_model, id2label, class_map, num_frames=args.num_frames)
        processor = M2fHfVideoProcessor.from_pretrained(folder, test_topk_per_image=10)
    model.config.num_frames = args.num_frames
    if args.test_size:
        processor.size = {"shortest_edge": args.test_size[0], "longest_edge": args.test_size[1]}
    return model, processor


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    accelerator = Accelerator()
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    train_source, train_loader_fn, val_source, val_loader_fn, categories = load_data(args)
    model, processor = build_model(args, categories)
    if args.synthetic and args.test_size is None:
        processor.size = {"shortest_edge": 96, "longest_edge": 128}
    min_sizes = args.min_size_train or ([80, 96, 112] if args.synthetic else [360, 480])
    dataset = YouTubeVISClipDataset(
        train_source,
        frame_loader=train_loader_fn,
        num_frames=args.num_frames,
        frame_range=args.frame_range,
        augmentation=ClipAugmentation(min_sizes, args.max_size_train),
        seed=args.seed,
    )
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=VideoClipCollator(processor),
        num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    model.criterion.rand_fn = sampler = PointSampler(args.seed, accelerator.process_index)
    optimizer = build_optimizer(model, args.learning_rate, args.weight_decay, args.backbone_multiplier)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, build_lr_lambda(args.max_steps, "poly", args.warmup_steps)
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    def run_eval() -> dict[str, float]:
        if val_source is None:
            return {}
        return evaluate_video_instance_segmentation(
            accelerator.unwrap_model(model), processor, val_source, val_loader_fn, window=args.eval_window
        )

    before = run_eval() if accelerator.is_main_process else {}
    model.train()
    step, epoch, losses, history, start = 0, 0, [], [], time.time()
    bar = tqdm(total=args.max_steps, desc="training", disable=args.quiet or not accelerator.is_main_process)
    while step < args.max_steps:
        dataset.set_epoch(epoch)
        for batch in loader:
            sampler.set_step(step)
            outputs = model(**batch)
            accelerator.backward(outputs.loss)
            if args.clip_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(float(outputs.loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            periodic = args.eval_steps > 0 and step % args.eval_steps == 0 and step < args.max_steps
            if periodic and val_source is not None and accelerator.is_main_process:
                history.append({"step": step, **run_eval()})
            if step >= args.max_steps:
                break
        epoch += 1
    bar.close()
    after = run_eval() if accelerator.is_main_process else {}
    results = {
        "steps": step,
        "train_seconds": round(time.time() - start, 1),
        "first_loss": losses[0] if losses else None,
        "last_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        "AP_before": before.get("AP"),
        "AP_after": after.get("AP"),
        "eval_before": before,
        "eval_after": after,
        "eval_history": history,
    }
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        accelerator.unwrap_model(model).save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        (output_dir / "eval_results.json").write_text(json.dumps(results, indent=1) + "\n")
        ap = (
            f"AP {results['AP_before']} -> {results['AP_after']}"
            if val_source is not None
            else "no evaluation"
        )
        loss = f"loss {results['first_loss']:.3f} -> {results['last_loss']:.3f}"
        print(f"{step} steps, {loss}, {ap}; saved to {output_dir}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
