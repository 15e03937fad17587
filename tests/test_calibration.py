"""Threshold calibration: the sweep on the synthetic set (bundled demo model and a freshly trained tiny
model), its agreement with the evaluation code, the written preprocessor_config.json, the CLI and the
training-script option."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from m2f_hf import M2fHfImageProcessor, Mask2FormerForUniversalSegmentation
from m2f_hf import ecosystem_cli as cli
from m2f_hf.training_calibration import (
    CalibrationResult,
    calibrate,
    instance_matches,
    validation_samples,
    write_thresholds,
)
from m2f_hf.training_data import SegmentationEvalCollator, normalize_sample
from m2f_hf.training_evaluation import evaluate
from m2f_hf.training_synthetic import CATEGORY_ID_TO_CONTIGUOUS, make_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src" / "m2f_hf" / "assets" / "demo_model"
needs_demo = pytest.mark.skipif(not (DEMO / "model.safetensors").is_file(), reason="demo model not shipped")


@pytest.fixture(scope="module")
def demo_copy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration") / "model"
    shutil.copytree(DEMO, folder)
    return folder


@pytest.fixture(scope="module")
def demo_sweep(demo_copy):
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation.from_pretrained(demo_copy).eval()
    processor = M2fHfImageProcessor.from_pretrained(demo_copy)
    samples, mapping = validation_samples(synthetic=8, seed=2)
    results = calibrate(
        model,
        processor,
        samples,
        object_mask_thresholds=[0.3, 0.5, 0.7],
        overlap_thresholds=[0.5, 0.9],
        score_thresholds=[0.1, 0.5, 0.9],
        category_id_to_contiguous=mapping,
    )
    return model, processor, samples, results


def _evaluate_with(model, processor, samples, **settings):
    """PQ / AP of the training code's `evaluate` with the processor set to `settings`."""
    configured = M2fHfImageProcessor(**{**processor.to_dict(), **settings})
    normalized = [normalize_sample(s, CATEGORY_ID_TO_CONTIGUOUS) for s in samples]
    loader = torch.utils.data.DataLoader(
        normalized, batch_size=1, collate_fn=SegmentationEvalCollator(configured)
    )
    return evaluate(model, configured, loader, "panoptic", metrics=["panoptic", "instance"])


@needs_demo
def test_panoptic_sweep_matches_the_evaluation_code_and_beats_the_default(demo_sweep):
    model, processor, samples, results = demo_sweep
    panoptic = results["panoptic"]
    # the grid holds the given values and the processor's own (0.8 / 0.8), every pair once
    assert sorted({r["object_mask_threshold"] for r in panoptic.rows}) == [0.3, 0.5, 0.7, 0.8]
    assert sorted({r["overlap_threshold"] for r in panoptic.rows}) == [0.5, 0.8, 0.9]
    assert len(panoptic.rows) == 12
    assert panoptic.current["object_mask_threshold"] == 0.8 and panoptic.current["overlap_threshold"] == 0.8
    assert panoptic.best["PQ"] >= panoptic.current["PQ"]
    assert panoptic.best["PQ"] == max(r["PQ"] for r in panoptic.rows)
    # two rows recomputed independently by the training evaluation with the processor set that way
    for row in (panoptic.current, panoptic.rows[0]):
        again = _evaluate_with(
            model,
            processor,
            samples,
            object_mask_threshold=row["object_mask_threshold"],
            overlap_threshold=row["overlap_threshold"],
        )
        assert again["PQ"] == pytest.approx(row["PQ"], abs=1e-9)
        assert again["PQ_th"] == pytest.approx(row["PQ_th"], abs=1e-9) or math.isnan(row["PQ_th"])
    # the scores vary with the thresholds (the sweep is not a constant)
    assert len({round(r["PQ"], 6) for r in panoptic.rows}) > 1


@needs_demo
def test_instance_sweep(demo_sweep):
    model, processor, samples, results = demo_sweep
    instance = results["instance"]
    thresholds = [r["score_threshold"] for r in instance.rows]
    assert thresholds == [0.0, 0.1, 0.5, 0.9]  # 0 = the processor's current setting (no filter)
    assert instance.best["F1"] == max(r["F1"] for r in instance.rows) >= instance.current["F1"]
    # a score filter only removes detections: recall and AP never rise with the threshold
    recalls = [r["recall"] for r in instance.rows]
    aps = [r["AP"] if not math.isnan(r["AP"]) else 0.0 for r in instance.rows]
    assert all(a >= b - 1e-9 for a, b in zip(recalls, recalls[1:], strict=False))
    assert all(a >= b - 1e-9 for a, b in zip(aps, aps[1:], strict=False))
    # threshold 0 is the original instance output: its AP is the evaluation code's AP
    reference = _evaluate_with(model, processor, samples)
    assert instance.current["AP"] == pytest.approx(reference["AP"], abs=1e-9)
    for row in instance.rows:
        p, r, f1 = row["precision"], row["recall"], row["F1"]
        assert f1 == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)


@needs_demo
def test_written_thresholds_load_back_and_are_used(demo_sweep, demo_copy):
    model, processor, samples, results = demo_sweep
    path = write_thresholds(demo_copy, results)
    payload = json.loads(path.read_text())
    best_p, best_i = results["panoptic"].best, results["instance"].best
    assert payload["object_mask_threshold"] == best_p["object_mask_threshold"]
    assert payload["instance_score_threshold"] == best_i["score_threshold"]
    loaded = M2fHfImageProcessor.from_pretrained(demo_copy)
    assert loaded.object_mask_threshold == best_p["object_mask_threshold"]
    assert loaded.overlap_threshold == best_p["overlap_threshold"]
    assert loaded.instance_score_threshold == best_i["score_threshold"]
    assert loaded.size == processor.size and loaded.thing_ids == processor.thing_ids  # rest untouched
    # the loaded processor's defaults reproduce the chosen row
    again = _evaluate_with(model, loaded, samples)
    assert again["PQ"] == pytest.approx(best_p["PQ"], abs=1e-9)
    # and instance post-processing now filters by the calibrated score by default
    with torch.no_grad():
        outputs = model(**loaded(images=[samples[0]["image"]], return_tensors="pt"))
    found = loaded.post_process_instance_segmentation(outputs)[0]["segments_info"]
    assert all(s["score"] >= best_i["score_threshold"] for s in found)
    # a processor built without them keeps the original values
    fresh = M2fHfImageProcessor()
    assert (fresh.object_mask_threshold, fresh.overlap_threshold, fresh.instance_score_threshold) == (
        0.8,
        0.8,
        None,
    )


def test_choice_prefers_the_current_setting_on_ties():
    rows = [
        {"object_mask_threshold": t, "overlap_threshold": 0.8, "PQ": pq}
        for t, pq in ((0.5, 40.0), (0.7, 42.0), (0.8, 42.0), (0.9, float("nan")))
    ]
    from m2f_hf.training_calibration import _choose

    best = _choose(rows, "PQ", {"object_mask_threshold": 0.8, "overlap_threshold": 0.8})
    assert best is rows[2]
    best = _choose(rows, "PQ", {"object_mask_threshold": 0.6, "overlap_threshold": 0.8})
    assert best is rows[1]  # nearest of the tied ones
    result = CalibrationResult(
        "panoptic", "PQ", ("object_mask_threshold", "overlap_threshold"), rows, rows[2], best
    )
    assert result.settings() == {"object_mask_threshold": 0.7, "overlap_threshold": 0.8}
    assert "*" in result.table().splitlines()[2] and "=" in result.table().splitlines()[3]


def test_instance_matches_is_one_to_one_and_class_aware():
    gt = np.zeros((2, 8, 8), bool)
    gt[0, :4, :4] = True
    gt[1, 4:, 4:] = True
    pred = np.zeros((4, 8, 8), bool)
    pred[0, :4, :4] = True  # exact match of gt 0
    pred[1, :4, :3] = True  # duplicate of gt 0 (IoU 0.75): gt 0 is taken
    pred[2, 4:, 4:] = True  # right mask of gt 1, wrong class
    pred[3, 5:, 5:] = True  # IoU 9/16 with gt 1, right class
    assert instance_matches(pred, [0, 0, 2, 1], gt, [0, 1]) == 2
    assert instance_matches(pred, [0, 0, 2, 1], gt, [0, 1], iou_threshold=0.6) == 1
    assert instance_matches(pred[:0], [], gt, [0, 1]) == 0


def test_bad_grids_and_data():
    with pytest.raises(ValueError, match="either"):
        validation_samples()
    model = Mask2FormerForUniversalSegmentation.from_pretrained(DEMO) if DEMO.is_dir() else None
    if model is None:
        pytest.skip("demo model not shipped")
    processor = M2fHfImageProcessor.from_pretrained(DEMO)
    samples = make_synthetic_dataset(1, seed=2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibrate(
            model,
            processor,
            samples,
            object_mask_thresholds=[1.5],
            category_id_to_contiguous=CATEGORY_ID_TO_CONTIGUOUS,
        )
    with pytest.raises(ValueError, match="tasks"):
        calibrate(model, processor, samples, tasks=["semantic"])


@needs_demo
def test_cli_calibrate_writes_a_loadable_config(tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(DEMO, folder)
    code = cli.main(  # fmt: skip
        [
            "calibrate",
            "--model",
            str(folder),
            "--synthetic",
            "4",
            "--object-mask-thresholds",
            "0.4",
            "0.6",
            "--overlap-thresholds",
            "0.8",
            "--score-thresholds",
            "0.3",
            "--write",
            "--output",
            str(tmp_path / "cal.json"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "object_mask_threshold" in out and "best PQ" in out and "best F1" in out
    report = json.loads((tmp_path / "cal.json").read_text())
    assert len(report["panoptic"]["rows"]) == 3 and len(report["instance"]["rows"]) == 2
    loaded = M2fHfImageProcessor.from_pretrained(folder)
    assert loaded.object_mask_threshold == report["panoptic"]["best"]["object_mask_threshold"]
    assert loaded.instance_score_threshold == report["instance"]["best"]["score_threshold"]
    # --write needs a local folder
    assert cli.main(["calibrate", "--model", "some/hub-id", "--synthetic", "2", "--write"]) == 1
    assert "--write needs a local model folder" in capsys.readouterr().err


def test_training_script_calibrates(tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import train_segmentation
    finally:
        sys.path.pop(0)
    out = tmp_path / "run"
    result = train_segmentation.main(
        [
            "--task",
            "panoptic",
            "--synthetic",
            "4",
            "--synthetic_size",
            "64",
            "--eval_samples",
            "2",
            "--config",
            "tiny",
            "--image_size",
            "64",
            "--per_device_batch_size",
            "2",
            "--max_steps",
            "2",
            "--calibrate",
            "--calibration_samples",
            "3",
            "--output_dir",
            str(out),
        ]
    )
    saved = json.loads((out / "calibration.json").read_text())
    assert saved == json.loads(json.dumps(result["calibration"]))
    assert set(saved) == {"panoptic", "instance"}
    processor = M2fHfImageProcessor.from_pretrained(out)
    assert processor.object_mask_threshold == saved["panoptic"]["best"]["object_mask_threshold"]
    assert processor.instance_score_threshold == saved["instance"]["best"]["score_threshold"]
    assert saved["panoptic"]["best"]["PQ"] >= saved["panoptic"]["current"]["PQ"]


def test_evaluation_script_writes_the_card_from_its_numbers(tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import evaluate_segmentation
        import train_segmentation
    finally:
        sys.path.pop(0)
    out = tmp_path / "run"
    train_segmentation.main(
        [
            "--task", "panoptic", "--synthetic", "4", "--synthetic_size", "64", "--synthetic_palette",
            "by_class", "--no_eval", "--config", "tiny", "--image_size", "64", "--per_device_batch_size", "2",
            "--max_steps", "1", "--output_dir", str(out),
        ]
    )  # fmt: skip
    report = evaluate_segmentation.main(
        [
            "--model",
            str(out),
            "--synthetic",
            "3",
            "--synthetic_size",
            "64",
            "--model_card",
            "--compare_untrained",
            "--cross_palette",
        ]
    )
    assert "palette by_class" in report["data"]  # read from training_args.json
    assert report["cross_palette"]["palette"] == "random" and "PQ" in report["cross_palette"]["metrics"]
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics == json.loads(json.dumps(report["metrics"]))
    # the same numbers as the training code's evaluation of those images
    model = Mask2FormerForUniversalSegmentation.from_pretrained(out)
    processor = M2fHfImageProcessor.from_pretrained(out)
    samples = [
        normalize_sample(s, CATEGORY_ID_TO_CONTIGUOUS)
        for s in make_synthetic_dataset(3, size=(64, 64), seed=1, palette="by_class")
    ]
    loader = torch.utils.data.DataLoader(
        samples, batch_size=1, collate_fn=SegmentationEvalCollator(processor)
    )
    again = evaluate(model, processor, loader, "panoptic")
    assert again["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-9)
    card = (out / "README.md").read_text()
    assert f"value: {metrics['mIoU']:.2f}" in card
    assert "## What it recognises" in card and "| circle | thing |" in card and "| sky | stuff |" in card
    assert "## Compared with an untrained model" in card
    assert "--synthetic_palette by_class" in card and "`random` palette it scores" in card
    assert report["per_class_pq"].keys() == {
        "circle",
        "rectangle",
        "triangle",
        "ellipse",
        "sky",
        "grass",
        "wall",
    }
