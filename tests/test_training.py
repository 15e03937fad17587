"""Training pieces and the Accelerate example: recipe, data, DDP, resume, Hub folder, demo model."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from m2f_hf import Mask2FormerConfig, Mask2FormerForUniversalSegmentation
from m2f_hf.training_data import (
    SegmentationCollator,
    SegmentationEvalCollator,
    TrainTransform,
    normalize_sample,
    sample_seed,
)
from m2f_hf.training_evaluation import evaluate
from m2f_hf.training_recipe import PointSampler, build_lr_lambda, param_groups
from m2f_hf.training_synthetic import CATEGORY_ID_TO_CONTIGUOUS, make_synthetic_dataset, write_coco_panoptic

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_segmentation.py"
DEMO = ROOT / "src" / "m2f_hf" / "assets" / "demo_model"
sys.path.insert(0, str(SCRIPT.parent))

import train_segmentation  # noqa: E402

TINY = [
    "--config",
    "tiny",
    "--synthetic_size",
    "64",
    "--image_size",
    "64",
    "--min_scale",
    "0.5",
    "--max_scale",
    "1.5",
    "--config_overrides",
    json.dumps({"train_num_points": 256, "decoder_layers": 4}),
]


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def _train_records(folder: Path) -> list[dict]:
    return [r for r in _log(folder) if "loss" in r]


def _tiny_model(num_labels: int = 7, **overrides) -> Mask2FormerForUniversalSegmentation:
    config = Mask2FormerConfig(
        **{**train_segmentation.CONFIG_PRESETS["tiny"], **overrides},
        num_labels=num_labels,
        thing_ids=[0, 1, 2, 3],
    )
    return Mask2FormerForUniversalSegmentation(config)


# ------------------------------------------------------------------------------------------ recipe pieces
def test_param_groups_follow_the_original_recipe():
    model = _tiny_model()
    groups = param_groups(model, lr=1e-4, weight_decay=0.05, backbone_multiplier=0.1)
    setting = {name: (g["lr"], g["weight_decay"]) for g in groups for name in g["param_names"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(setting) == trainable
    assert setting["model.backbone.patch_embed.proj.weight"] == (pytest.approx(1e-5), 0.05)
    assert setting["model.backbone.patch_embed.norm.weight"] == (pytest.approx(1e-5), 0.0)  # LayerNorm
    bias_table = next(n for n in setting if n.endswith("relative_position_bias_table"))
    assert setting[bias_table] == (pytest.approx(1e-5), 0.0)
    assert setting["model.transformer_decoder.query_feat.weight"] == (1e-4, 0.0)  # nn.Embedding
    gn = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.GroupNorm))
    assert setting[f"{gn}.weight"] == (1e-4, 0.0)
    linear = next(
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "backbone" not in n
    )
    assert setting[f"{linear}.weight"] == (1e-4, 0.05)


def test_lr_schedules():
    poly = build_lr_lambda(100, "poly", poly_power=0.9)
    assert poly(0) == 1.0 and poly(100) == 0.0
    assert poly(50) == pytest.approx(0.5**0.9)
    warm = build_lr_lambda(100, "poly", warmup_steps=10, warmup_factor=0.001)
    assert warm(0) == pytest.approx(0.001)
    assert warm(5) == pytest.approx((0.001 * 0.5 + 0.5) * (1 - 0.05) ** 0.9)
    multi = build_lr_lambda(100, "multistep", milestones=[80, 90], gamma=0.1)
    assert [multi(79), multi(80), multi(95)] == [1.0, pytest.approx(0.1), pytest.approx(0.01)]
    with pytest.raises(ValueError, match="schedule"):
        build_lr_lambda(10, "cosine")


def test_collator_pads_like_imagelist():
    examples = [
        {
            "pixel_values": torch.ones(3, 40, 50),
            "mask_labels": torch.ones(2, 40, 50, dtype=torch.bool),
            "class_labels": torch.tensor([1, 2]),
        },
        {
            "pixel_values": torch.ones(3, 64, 30),
            "mask_labels": torch.ones(1, 64, 30, dtype=torch.bool),
            "class_labels": torch.tensor([0]),
        },
    ]
    batch = SegmentationCollator(32)(examples)
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["pixel_mask"][0].sum() == 40 * 50 and batch["pixel_mask"][1].sum() == 64 * 30
    assert (
        batch["pixel_values"][0, :, 40:].abs().sum() == 0
        and batch["pixel_values"][1, :, :, 30:].abs().sum() == 0
    )
    assert [m.shape for m in batch["mask_labels"]] == [(2, 64, 64), (1, 64, 64)]
    assert batch["mask_labels"][0].dtype == torch.bool and batch["mask_labels"][0].sum() == 2 * 40 * 50
    with pytest.raises(ValueError, match="empty"):
        SegmentationCollator()([])


def test_targets_per_task_and_deterministic_augmentation():
    sample = normalize_sample(make_synthetic_dataset(1, size=(64, 64))[0], CATEGORY_ID_TO_CONTIGUOUS)
    stats = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    things = [0, 1, 2, 3]
    out = {
        task: TrainTransform(task, None, *stats, thing_ids=things)(sample)
        for task in ("semantic", "instance", "panoptic")
    }
    classes = [s["category_id"] for s in sample["segments_info"]]
    assert out["panoptic"]["class_labels"].tolist() == classes
    assert out["instance"]["class_labels"].tolist() == [c for c in classes if c in things]
    assert out["semantic"]["class_labels"].tolist() == sorted(set(classes))
    # semantic masks partition the image, instance masks are the panoptic thing masks
    assert out["semantic"]["mask_labels"].sum(0).eq(1).all()
    keep = [i for i, c in enumerate(classes) if c in things]
    assert torch.equal(out["instance"]["mask_labels"], out["panoptic"]["mask_labels"][keep])
    from m2f_hf.training_augmentation import large_scale_jitter

    aug = TrainTransform("panoptic", large_scale_jitter(64, 0.5, 1.5), *stats)
    a, b = aug(sample, sample_seed(0, 3, 7)), aug(sample, sample_seed(0, 3, 7))
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(
        a["mask_labels"], b["mask_labels"]
    )
    c = aug(sample, sample_seed(0, 4, 7))
    assert not torch.equal(a["pixel_values"], c["pixel_values"])
    with pytest.raises(ValueError, match="task"):
        TrainTransform("depth", None, *stats)


def test_point_sampler_is_a_function_of_the_step():
    sampler = PointSampler(seed=3)
    sampler.set_step(5)
    first = sampler(4, 10, 2)
    sampler.set_step(5)
    assert torch.equal(first, sampler(4, 10, 2))
    shared = PointSampler(seed=3, process_index=1, shared=True)
    shared.set_step(2)
    x = shared(3, 10, 2)
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    assert torch.equal(shared(1, 10, 2)[0], x[0])  # same points whatever the number of rows
    other = PointSampler(seed=3, process_index=0, shared=True)
    other.set_step(2)
    assert torch.equal(other(5, 10, 2)[0], x[0])  # and whatever the process


# --------------------------------------------------------------------------------------- example script
@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """Uninterrupted 6-step run with checkpoints every 3 steps, evaluation and the Hub folder."""
    out = tmp_path_factory.mktemp("run_a")
    args = [
        "--task",
        "panoptic",
        "--synthetic",
        "12",
        "--eval_samples",
        "4",
        *TINY,
        "--per_device_batch_size",
        "2",
        "--max_steps",
        "6",
        "--checkpointing_steps",
        "3",
        "--learning_rate",
        "1e-3",
        "--output_dir",
        str(out),
        "--warmup_steps",
        "2",
        "--warmup_factor",
        "0.1",
    ]
    result = train_segmentation.main(args)
    return out, args, result


def test_resume_from_checkpoint_repeats_the_uninterrupted_run(short_run, tmp_path):
    out_a, args, result_a = short_run
    assert result_a["step"] == 6
    out_b = tmp_path / "run_b"
    args_b = [a if a != str(out_a) else str(out_b) for a in args]
    # the resumed run recomputes activations (gradient checkpointing): same numbers, less memory
    result_b = train_segmentation.main(
        args_b
        + ["--resume_from_checkpoint", str(out_a / "checkpoint-3"), "--no_eval", "--gradient_checkpointing"]
    )
    assert result_b["step"] == 6
    log_a, log_b = _train_records(out_a), _train_records(out_b)
    assert [r["step"] for r in log_b] == [4, 5, 6]  # the step counter came back from the checkpoint
    for ra, rb in zip(log_a[3:], log_b, strict=True):
        for key in ("loss", "loss_ce", "loss_mask", "loss_dice", "loss_dice_0", "lr"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-7), key
    # optimizer, scheduler, counters and weights after the resumed steps equal the uninterrupted run
    ckpt_a, ckpt_b = out_a / "checkpoint-6", out_b / "checkpoint-6"
    opt_a = torch.load(ckpt_a / "optimizer.bin", weights_only=False)
    opt_b = torch.load(ckpt_b / "optimizer.bin", weights_only=False)
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for k, state in opt_a["state"].items():
        assert int(state["step"]) == int(opt_b["state"][k]["step"]) == 6
        assert torch.allclose(state["exp_avg"], opt_b["state"][k]["exp_avg"], rtol=1e-5, atol=1e-9)
        assert torch.allclose(state["exp_avg_sq"], opt_b["state"][k]["exp_avg_sq"], rtol=1e-5, atol=1e-12)
    sched_a = torch.load(ckpt_a / "custom_checkpoint_0.pkl", weights_only=False)
    sched_b = torch.load(ckpt_b / "custom_checkpoint_0.pkl", weights_only=False)
    assert sched_a["last_epoch"] == sched_b["last_epoch"] == 6 and sched_a["_last_lr"] == sched_b["_last_lr"]
    state_b = torch.load(ckpt_b / "custom_checkpoint_1.pkl", weights_only=False)
    assert state_b == {"step": 6, "micro_step": 6}
    weights_a, weights_b = load_file(ckpt_a / "model.safetensors"), load_file(ckpt_b / "model.safetensors")
    for name, value in weights_a.items():
        assert torch.allclose(value, weights_b[name], rtol=1e-5, atol=1e-7), name


def test_hub_folder_and_model_card(short_run):
    out, _, result = short_run
    from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

    for name in train_segmentation.FINAL_FILES:
        assert (out / name).is_file(), name
    model = AutoModelForUniversalSegmentation.from_pretrained(out)
    processor = AutoImageProcessor.from_pretrained(out)
    assert model.config.thing_ids == [0, 1, 2, 3] and model.config.id2label[4] == "sky"
    assert processor.thing_ids == [0, 1, 2, 3]
    card = (out / "README.md").read_text()
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics.keys() == result["metrics"].keys() and {"PQ", "mIoU", "AP"} <= set(metrics)
    for key, value in metrics.items():
        assert value == result["metrics"][key] or (math.isnan(value) and math.isnan(result["metrics"][key]))
    assert card.startswith("---\nlicense: apache-2.0\n")
    assert "m2f_hf synthetic shapes" in card and "datasets:" in card
    assert f"value: {metrics['mIoU']:.2f}" in card and "- type: PQ" in card
    assert "trained from scratch" in card and "**License:** apache-2.0" in card
    assert "--max_steps 6" in card or "max_steps | 6" in card
    # the reloaded model predicts what the trained one evaluated to
    from m2f_hf.training_data import SegmentationEvalCollator as Collator

    samples = [
        normalize_sample(s, CATEGORY_ID_TO_CONTIGUOUS)
        for s in make_synthetic_dataset(4, size=(64, 64), seed=1)
    ]
    loader = torch.utils.data.DataLoader(samples, batch_size=2, collate_fn=Collator(processor))
    again = evaluate(model, processor, loader, "panoptic")
    assert again["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-6)
    assert again["PQ"] == pytest.approx(metrics["PQ"], abs=1e-6)


def test_short_run_learns(tmp_path, capsys):
    """A few dozen steps on a handful of images: the loss falls clearly (and a single process prints no
    accelerate setup line)."""
    out = tmp_path / "learn"
    train_segmentation.main(
        [
            "--task",
            "semantic",
            "--synthetic",
            "4",
            *TINY,
            "--augmentation",
            "none",
            "--per_device_batch_size",
            "4",
            "--max_steps",
            "25",
            "--learning_rate",
            "1e-3",
            "--backbone_multiplier",
            "1",
            "--lr_scheduler",
            "constant",
            "--no_eval",
            "--output_dir",
            str(out),
        ]
    )
    losses = [r["loss"] for r in _train_records(out)]
    assert len(losses) == 25
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:3]), losses
    printed = capsys.readouterr()
    assert "num_processes" not in printed.out + printed.err


def test_bad_arguments():
    with pytest.raises(SystemExit):
        train_segmentation.parse_args(["--task", "panoptic", "--synthetic", "4", "--output_dir", "x"])
    with pytest.raises(SystemExit):
        train_segmentation.parse_args(
            ["--task", "depth", "--synthetic", "4", "--config", "tiny", "--output_dir", "x"]
        )


# ------------------------------------------------------------------------------------------ DDP (gloo)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_the_whole_batch(tmp_path):
    """`accelerate launch --num_processes 2 --cpu` with batch 1 per process = 1 process with batch 2.

    Every image has the same number of segments, so the per-process class-loss normalisation equals the
    whole-batch one, and `--shared_points` gives every image the same loss points.
    """
    samples = make_synthetic_dataset(40, size=(64, 64), seed=5)
    counts = [len(s["segments_info"]) for s in samples]
    common = max(set(counts), key=counts.count)
    chosen = [s for s, c in zip(samples, counts, strict=True) if c == common][:4]
    assert len(chosen) == 4
    data = tmp_path / "data"
    write_coco_panoptic(chosen, data)
    common_args = [
        "--task",
        "panoptic",
        "--dataset",
        str(data),
        *TINY,
        "--max_steps",
        "3",
        "--shared_points",
        "--no_eval",
        "--learning_rate",
        "1e-3",
        "--eval_samples",
        "0",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            *common_args,
            "--per_device_batch_size",
            "2",
            "--output_dir",
            str(single),
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    double = tmp_path / "double"
    # `accelerate launch --cpu` alone runs one process (several need mpirun); torchrun processes on the
    # CPU with gloo come from the multi-process launcher plus ACCELERATE_USE_CPU
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
    ]
    proc = subprocess.run(
        [*launch, str(SCRIPT), *common_args, "--per_device_batch_size", "1", "--output_dir", str(double)],
        env={**env, "ACCELERATE_USE_CPU": "true"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _train_records(single), _train_records(double)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    assert "MULTI_CPU" in proc.stdout + proc.stderr and "num_processes=2" in proc.stdout + proc.stderr
    for r1, r2 in zip(one, two, strict=True):
        for key in ("loss", "loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "grad_norm"):
            assert r2[key] == pytest.approx(r1[key], rel=2e-4), (r1["step"], key)
    # and training changed the loss, so step 2-3 agreement is not trivial
    assert not math.isclose(one[0]["loss"], one[2]["loss"], rel_tol=1e-3)


# ------------------------------------------------------------------------------------------- demo model
@pytest.mark.skipif(not (DEMO / "model.safetensors").is_file(), reason="demo model not shipped")
def test_demo_model_beats_an_untrained_one():
    from transformers import AutoImageProcessor

    trained = Mask2FormerForUniversalSegmentation.from_pretrained(DEMO)
    processor = AutoImageProcessor.from_pretrained(DEMO)
    torch.manual_seed(0)
    untrained = Mask2FormerForUniversalSegmentation(trained.config)
    # held out: the demo model was trained on seed 0 (by_class palette); seed 1 is its evaluation split
    samples = [
        normalize_sample(s, CATEGORY_ID_TO_CONTIGUOUS)
        for s in make_synthetic_dataset(16, size=(128, 128), seed=1, palette="by_class")
    ]
    loader = torch.utils.data.DataLoader(
        samples, batch_size=4, collate_fn=SegmentationEvalCollator(processor)
    )
    good = evaluate(trained, processor, loader, "panoptic")
    bad = evaluate(untrained, processor, loader, "panoptic")
    # measured on 64 images (docs/training.md): PQ 88.8, PQ_th 81.8, PQ_st 98.0, mIoU 97.0, AP 72.9;
    # untrained PQ 0, mIoU 4.3, at the original 0.8 / 0.8 thresholds: the things pass them
    assert good["PQ"] > 70 and good["PQ_th"] > 55 and good["AP"] > 45, good
    assert good["mIoU"] > 85 and good["mIoU"] > bad["mIoU"] + 60, (good, bad)
    assert good["PQ"] > bad["PQ"] + 60 and good["PQ_st"] > 85, (good, bad)


def test_example_evaluation_through_evaluate_modules_equals_the_builtin_evaluators():
    """The example's default metrics backend (the `evaluate` modules in metrics/) gives the built-in
    evaluators' numbers on the demo model (PQ, mIoU and mask AP from one panoptic evaluation)."""
    pytest.importorskip("evaluate")
    from transformers import AutoImageProcessor

    model = Mask2FormerForUniversalSegmentation.from_pretrained(DEMO).eval()
    processor = AutoImageProcessor.from_pretrained(DEMO)
    samples = [
        normalize_sample(s, CATEGORY_ID_TO_CONTIGUOUS)
        for s in make_synthetic_dataset(4, size=(128, 128), seed=1, palette="by_class")
    ]
    loader = torch.utils.data.DataLoader(
        samples, batch_size=2, collate_fn=SegmentationEvalCollator(processor)
    )
    builtin = evaluate(model, processor, loader, "panoptic")
    modules = train_segmentation.evaluate_module_evaluators("panoptic", model.config)
    through_modules = evaluate(model, processor, loader, "panoptic", evaluators=modules)
    assert set(builtin) <= set(through_modules)
    for key, value in builtin.items():
        got = through_modules[key]
        assert (math.isnan(value) and math.isnan(got)) or got == pytest.approx(value, abs=1e-9), key
    assert builtin["PQ"] > 50 and builtin["AP"] > 20  # real, non-trivial numbers
    with pytest.raises(ValueError, match="does not run"):
        evaluate(model, processor, loader, "semantic", evaluators=modules)
