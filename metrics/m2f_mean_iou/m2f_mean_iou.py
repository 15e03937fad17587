"""mIoU (and fwIoU, mACC, pACC) as an `evaluate` metric module, backed by m2f_hf's detectron2-equal
`SemanticSegmentationEvaluator` (training_metrics_semantic.py).

    metric = evaluate.load("metrics/m2f_mean_iou")   # a local path: no Hub access
    metric.add_batch(predictions=[pred_map, ...], references=[gt_map, ...])
    metric.compute(num_labels=150, ignore_index=255)

Values are fractions in [0, 1] like `evaluate`'s `mean_iou` ("mean_iou", "per_category_iou", ...), plus
detectron2's percentages under their own names ("mIoU", "fwIoU", "mACC", "pACC").
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

from m2f_hf.training_metrics_semantic import SemanticSegmentationEvaluator

_DESCRIPTION = "Mean IoU over the dataset's confusion matrix, with detectron2's conventions (m2f_hf)."
_KWARGS = """
predictions / references: (H, W) integer class maps; num_labels: K; ignore_index: ground-truth value that is
not evaluated (default 255); miou_denominator: "gt_or_pred" (detectron2 0.5/0.6, = evaluate's mean_iou) or
"gt" (detectron2 >= 2022-07).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class M2fMeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                }
            ),
        )

    def _compute(self, predictions, references, num_labels, ignore_index=255, miou_denominator="gt_or_pred"):
        evaluator = SemanticSegmentationEvaluator(
            num_labels, ignore_index=ignore_index, miou_denominator=miou_denominator
        )
        for pred, ref in zip(predictions, references, strict=True):
            evaluator.update(np.asarray(pred, dtype=np.int64), np.asarray(ref, dtype=np.int64))
        res = evaluator.compute()
        return {
            "mean_iou": res["mIoU"] / 100.0,
            "mean_accuracy": res["mACC"] / 100.0,
            "overall_accuracy": res["pACC"] / 100.0,
            "per_category_iou": np.asarray(res["IoU"]) / 100.0,
            "per_category_accuracy": np.asarray(res["ACC"]) / 100.0,
            **{k: res[k] for k in ("mIoU", "fwIoU", "mACC", "pACC")},
        }
