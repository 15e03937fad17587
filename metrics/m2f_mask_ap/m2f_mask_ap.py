"""COCO mask AP as an `evaluate` metric module, backed by m2f_hf's `InstanceSegmentationEvaluator`
(training_metrics_instance.py: pycocotools' COCOeval on the collected masks, detectron2's conventions).

    metric = evaluate.load("metrics/m2f_mask_ap")   # a local path: no Hub access
    metric.add_batch(predictions=[pred, ...], references=[gt, ...])
    metric.compute(category_ids=[0, 1, 2])

Each prediction is one image: {"masks": (N, H, W) 0/1, "scores": (N,), "labels": (N,) category ids}; each
reference {"masks": (M, H, W) 0/1, "labels": (M,), "iscrowd": (M,)}. Results are percentages under
detectron2's keys (AP, AP50, AP75, APs, APm, APl and AP-<category>), NaN where COCOeval reports -1.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

from m2f_hf.training_metrics_instance import InstanceSegmentationEvaluator

_DESCRIPTION = "COCO mask AP (pycocotools COCOeval, detectron2's conventions; m2f_hf)."
_KWARGS = """
predictions: {"masks": (N, H, W), "scores": (N,), "labels": (N,)} per image; references: {"masks": (M, H, W),
"labels": (M,), "iscrowd": (M,)} at the same size; category_ids: the dataset's category ids; class_names:
optional names for the AP-<name> keys.
"""
_MASKS = datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("uint8"))))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class M2fMaskAP(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": {
                        "masks": _MASKS,
                        "scores": datasets.Sequence(datasets.Value("float64")),
                        "labels": datasets.Sequence(datasets.Value("int64")),
                    },
                    "references": {
                        "masks": _MASKS,
                        "labels": datasets.Sequence(datasets.Value("int64")),
                        "iscrowd": datasets.Sequence(datasets.Value("int64")),
                    },
                }
            ),
        )

    def _compute(self, predictions, references, category_ids, class_names=None):
        evaluator = InstanceSegmentationEvaluator(category_ids, class_names)
        for pred, ref in zip(predictions, references, strict=True):
            gt = np.asarray(ref["masks"], dtype=bool)
            dt = np.asarray(pred["masks"], dtype=bool)
            if gt.ndim != 3 and dt.ndim != 3:
                continue  # no ground truth and no prediction: the image adds nothing to COCOeval
            size = gt.shape[1:] if gt.ndim == 3 else dt.shape[1:]
            gt = gt if gt.ndim == 3 else np.zeros((0, *size), dtype=bool)
            dt = dt if dt.ndim == 3 else np.zeros((0, *size), dtype=bool)
            crowd = ref["iscrowd"] if len(ref["iscrowd"]) else None
            evaluator.update(dt, pred["scores"], pred["labels"], gt, ref["labels"], crowd)
        return {k: float(v) for k, v in evaluator.compute().items()}
