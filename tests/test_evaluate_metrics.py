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
