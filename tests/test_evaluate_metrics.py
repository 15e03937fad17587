"""`evaluate` metric modules loadable from a local path, backed by the package's reference-equal metrics.

`evaluate`'s own `mean_iou` is not in the evaluate wheel or sdist (evaluate.load("mean_iou") downloads it from
the Hub), so the comparison is with its documented algorithm written out here: per-class intersection and
union summed over all images, IoU = intersection / union, mean over classes with a non-empty union, ignored
ground-truth pixels dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

evaluate = pytest.importorskip("evaluate")
pytest.importorskip("datasets")

METRICS = Path(__file__).resolve().parents[1] / "metrics"


def _mean_iou_reference(predictions, references, num_labels, ignore_index):
    intersect = np.zeros(num_labels)
    union = np.zeros(num_labels)
    for pred, ref in zip(predictions, references, strict=True):
        keep = ref != ignore_index
        pred, ref = pred[keep], ref[keep]
        both = pred[pred == ref]
        area_i = np.histogram(both, bins=num_labels, range=(0, num_labels - 1))[0]
        area_p = np.histogram(pred, bins=num_labels, range=(0, num_labels - 1))[0]
        area_r = np.histogram(ref, bins=num_labels, range=(0, num_labels - 1))[0]
        intersect += area_i
        union += area_p + area_r - area_i
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = intersect / union
    return float(np.nanmean(iou)), iou


def test_mean_iou_module_matches_mean_iou_algorithm():
    metric = evaluate.load(str(METRICS / "m2f_mean_iou"))
    rng = np.random.default_rng(0)
    num_labels = 6
    predictions, references = [], []
    for _ in range(4):
        ref = rng.integers(0, num_labels - 1, (12, 17))  # class 5 never in the ground truth
        ref[rng.random(ref.shape) < 0.1] = 255
        pred = np.where(rng.random(ref.shape) < 0.6, ref, rng.integers(0, num_labels, ref.shape))
        pred[pred == 255] = 0
        predictions.append(pred)
        references.append(ref)
    result = metric.compute(
        predictions=predictions, references=references, num_labels=num_labels, ignore_index=255
    )
    expected, per_class = _mean_iou_reference(predictions, references, num_labels, 255)
    assert result["mean_iou"] == pytest.approx(expected, abs=1e-12)
    present = ~np.isnan(per_class[:5])
    np.testing.assert_allclose(np.asarray(result["per_category_iou"])[:5][present], per_class[:5][present])
    assert 0.0 < expected < 1.0


@pytest.fixture(scope="module")
def demo_predictions():
    """The bundled demo model on four held-out synthetic scenes: panoptic and instance predictions (real
    computation, non-trivial scores) with their ground truth."""
    import torch

    from m2f_hf import M2fHfImageProcessor, Mask2FormerForUniversalSegmentation
    from m2f_hf.ecosystem_cli import DEMO_MODEL
    from m2f_hf.training_synthetic import make_synthetic_sample

    model = Mask2FormerForUniversalSegmentation.from_pretrained(DEMO_MODEL).eval()
    processor = M2fHfImageProcessor.from_pretrained(DEMO_MODEL)
    images = []
    for index in range(4):
        sample = make_synthetic_sample(seed=77, index=index, size=(128, 160), palette="by_class")
        inputs = processor(sample["image"], return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        sizes = inputs["original_sizes"]
        panoptic = processor.post_process_panoptic_segmentation(outputs, target_sizes=sizes)[0]
        instance = processor.post_process_instance_segmentation(
            outputs, threshold=0.0, target_sizes=sizes, return_binary_maps=True, segment_ids="original"
        )[0]
        gt_segments = [{**s, "category_id": s["category_id"] - 1} for s in sample["segments_info"]]
        images.append((panoptic, instance, sample["panoptic_map"], gt_segments))
    return model.config, images


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key, value in b.items():
        assert (np.isnan(value) and np.isnan(a[key])) or a[key] == pytest.approx(value, abs=1e-9), key


def test_panoptic_quality_module_equals_the_evaluator(demo_predictions):
    from m2f_hf.training_metrics_panoptic import PanopticQualityEvaluator

    config, images = demo_predictions
    categories = {i: {"isthing": int(i in config.thing_ids)} for i in range(config.num_labels)}
    metric = evaluate.load(str(METRICS / "m2f_panoptic_quality"))
    direct = PanopticQualityEvaluator(categories)
    for panoptic, _, gt_map, gt_segments in images:
        segments = [
            {"id": s["id"], "category_id": s["label_id"], "iscrowd": 0} for s in panoptic["segments_info"]
        ]
        reference = [
            {"id": s["id"], "category_id": s["category_id"], "iscrowd": s["iscrowd"]} for s in gt_segments
        ]
        metric.add(
            prediction={"segmentation": panoptic["segmentation"].numpy(), "segments_info": segments},
            reference={"segmentation": gt_map, "segments_info": reference},
        )
        direct.update(panoptic["segmentation"].numpy(), segments, gt_map, gt_segments)
    result = metric.compute(categories=categories)
    expected = {k: float(v) for k, v in direct.compute().items() if k != "per_class"}
    _same(result, expected)
    assert 20.0 < result["PQ"] < 100.0 and result["PQ_th"] > 0.0  # the demo model finds things


def test_mask_ap_module_equals_the_evaluator(demo_predictions):
    from m2f_hf.training_metrics_instance import InstanceSegmentationEvaluator

    config, images = demo_predictions
    things = list(config.thing_ids)
    metric = evaluate.load(str(METRICS / "m2f_mask_ap"))
    direct = InstanceSegmentationEvaluator(things)
    for _, instance, gt_map, gt_segments in images:
        keep = [s for s in gt_segments if s["category_id"] in things]
        gt_masks = np.stack([gt_map == s["id"] for s in keep])
        gt_labels = [s["category_id"] for s in keep]
        info = instance["segments_info"]
        masks = instance["segmentation"].numpy()
        scores, labels = [s["score"] for s in info], [s["label_id"] for s in info]
        metric.add(
            prediction={"masks": masks.astype(np.uint8), "scores": scores, "labels": labels},
            reference={"masks": gt_masks.astype(np.uint8), "labels": gt_labels, "iscrowd": [0] * len(keep)},
        )
        direct.update(masks, scores, labels, gt_masks, gt_labels)
    result = metric.compute(category_ids=things)
    _same(result, direct.compute())
    assert 10.0 < result["AP"] <= 100.0
